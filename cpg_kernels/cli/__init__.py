"""The ``cpg`` command: train, evaluate, inspect and forget.

    cpg train [options]          learn a task sequence (default: CPG on the digits tasks)
    cpg compare [options]        methods x seeds on one sequence: metrics, matrix, JSON, plot
    cpg eval CHECKPOINT          test accuracy of every task now vs. right after learning
    cpg info CHECKPOINT          capacity per layer and task, sizes vs. independent models
    cpg forget CHECKPOINT --task T   release a task's weights that no other task uses

Bad arguments end with one ``cpg: error: ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from ..data import DATASETS
from ..trainer import METHODS, TrainConfig
from ..trainer.config import ALIASES, MASK_SCHEDULES, OPTIMIZERS, SCHEDULES
from .compare import DEFAULT_METHODS, run_compare
from .inspect import run_eval, run_forget, run_info
from .networks import NETWORKS
from .train import run_train

DEFAULTS = TrainConfig()
USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump)."""

    def error(self, message: str):
        raise _UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


class _UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cpg",
        description="CPG continual learning: compacting, picking and "
        "growing (Hung et al., NeurIPS 2019) on fused masked kernels.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(
        commands.add_parser(
            "train", help="learn a sequence of tasks and print the results per task"
        )
    )
    _add_compare(
        commands.add_parser(
            "compare",
            help="run several methods with several seeds on one sequence and compare them",
        )
    )

    evaluate = commands.add_parser("eval", help="test accuracy of every task in a checkpoint")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--data-dir", help="data folder, if it moved since training")
    evaluate.add_argument("--device", default="cpu")

    info = commands.add_parser("info", help="capacity per layer and task, and sizes")
    info.add_argument("checkpoint")
    info.add_argument("--plot", metavar="PNG", help="also save the capacity plot here")

    forget = commands.add_parser("forget", help="forget a task, releasing its unshared weights")
    forget.add_argument("checkpoint")
    forget.add_argument("--task", type=int, required=True, help="the task id to forget")
    forget.add_argument("-o", "--output", help="where to write the result (default: in place)")
    return parser


def _add_train(p: argparse.ArgumentParser) -> None:
    _add_data(p)
    p.add_argument_group("method").add_argument(
        "--method",
        choices=(*METHODS, *ALIASES),
        default=DEFAULTS.method,
        help="cpg, its baselines pae and packnet, sequential fine-tuning of one network, "
        "independent models (alias scratch), or independent copies fine-tuned from the previous "
        "task's (default: %(default)s)",
    )
    _add_protocol(p)
    run = _add_run(p)
    run.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="checkpoint, written after every task (default: "
        "runs/<data>-<method>.pt); the capacity plot goes next to it as .png",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --output (same options) from its last finished task",
    )
    run.add_argument("--no-plot", action="store_true", help="do not save the capacity plot")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("-q", "--quiet", action="store_true", help="print only the results")


def _add_compare(p: argparse.ArgumentParser) -> None:
    _add_data(p, default="permuted")
    p.add_argument_group("methods").add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        metavar="M,M,...",
        help=f"comma-separated, from {', '.join(METHODS)} (default: %(default)s)",
    )
    _add_protocol(p)
    run = _add_run(p)
    run.add_argument(
        "--seeds",
        type=int,
        default=3,
        metavar="N",
        help="runs per method, with seeds --seed, --seed+1, ... (default: %(default)s)",
    )
    run.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="runs at a time, each in a process of its own with --threads "
        "threads (default: %(default)s)",
    )
    run.add_argument(
        "-o",
        "--output",
        metavar="DIR",
        help="where compare.json and compare.png go (default: runs/compare-<data>)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs an interrupted comparison in --output finished",
    )
    run.add_argument("--no-plot", action="store_true", help="do not save the plot")
    run.add_argument("-q", "--quiet", action="store_true", help="print only the results")


def _add_data(p: argparse.ArgumentParser, default: str = "digits") -> None:
    data = p.add_argument_group("data and model")
    data.add_argument(
        "--data",
        choices=DATASETS,
        default=default,
        help="task sequence: digits, permuted and transformed are embedded, "
        "cifar100 and folder need --data-dir (default: %(default)s)",
    )
    data.add_argument("--data-dir", help="folder holding cifar-100-python, or the image folders")
    data.add_argument("--tasks", type=int, metavar="N", help="learn only the first N tasks")
    data.add_argument(
        "--val-fraction",
        type=float,
        metavar="F",
        help="share of the training data held out for the accuracy goal; 0 "
        "uses the test set, as the paper (default: the data set's own)",
    )
    data.add_argument(
        "--model", choices=NETWORKS, default="cnn", help="network (default: %(default)s)"
    )
    data.add_argument(
        "--width", type=float, default=1.0, help="channel/unit multiplier (default: %(default)s)"
    )


def _add_protocol(p: argparse.ArgumentParser) -> None:
    method = p.add_argument_group("protocol")
    method.add_argument(
        "--goal",
        type=float,
        default=DEFAULTS.goal,
        metavar="ACC",
        help="absolute accuracy goal in (0, 1] (default: a fine-tuned "
        "reference's accuracy minus --goal-drop)",
    )
    method.add_argument(
        "--goal-drop",
        type=float,
        default=DEFAULTS.goal_drop,
        metavar="ACC",
        help="accuracy below the reference that still meets the goal (default: %(default)s)",
    )
    method.add_argument(
        "--reference-epochs",
        type=int,
        default=DEFAULTS.reference_epochs,
        metavar="N",
        help="training of the reference (default: --epochs)",
    )
    method.add_argument(
        "--initial-sparsity",
        type=float,
        default=DEFAULTS.initial_sparsity,
        metavar="S",
        help="(default: %(default)s)",
    )
    method.add_argument(
        "--final-sparsity",
        type=float,
        default=DEFAULTS.final_sparsity,
        metavar="S",
        help="(default: %(default)s)",
    )
    method.add_argument(
        "--prune-steps",
        type=int,
        default=DEFAULTS.prune_steps,
        metavar="N",
        help="steps of the cubic pruning schedule (default: %(default)s)",
    )
    method.add_argument(
        "--retrain-epochs",
        type=int,
        default=DEFAULTS.retrain_epochs,
        metavar="N",
        help="training after each pruning step (default: %(default)s)",
    )
    method.add_argument(
        "--growth-step",
        type=float,
        default=DEFAULTS.growth_step,
        metavar="X",
        help="growth per step, as a share of the original size (default: %(default)s)",
    )
    method.add_argument(
        "--max-size",
        type=float,
        default=DEFAULTS.max_size,
        metavar="X",
        help="cap on the network's size, times the original (default: %(default)s)",
    )
    method.add_argument(
        "--growth",
        choices=("restart", "continue"),
        default="restart" if DEFAULTS.growth_restart else "continue",
        help="after growing, train the task again from its state before it "
        "began, or go on from where it stopped (default: %(default)s)",
    )
    method.add_argument(
        "--reserve",
        type=float,
        default=DEFAULTS.reserve,
        metavar="S",
        help="share of its available weights a task that missed its goal "
        "still releases for later tasks (default: 1 - 1/(tasks after it + 1))",
    )
    method.add_argument(
        "--prune-ratio",
        type=float,
        default=DEFAULTS.prune_ratio,
        metavar="S",
        help="packnet: the fixed share of its available weights each task "
        "prunes (default: as --reserve)",
    )

    optim = p.add_argument_group("optimization")
    optim.add_argument(
        "--epochs",
        type=int,
        default=DEFAULTS.epochs,
        metavar="N",
        help="training per task and after each growth (default: %(default)s)",
    )
    optim.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULTS.batch_size,
        metavar="N",
        help="per process (default: %(default)s)",
    )
    optim.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=DEFAULTS.optimizer,
        help="for the weights, and for the masks unless --mask-optimizer is "
        "given (default: %(default)s)",
    )
    optim.add_argument(
        "--mask-optimizer",
        choices=OPTIMIZERS,
        default=DEFAULTS.mask_optimizer,
        help="the picking masks' own optimizer, at --mask-lr (the paper: "
        "--optimizer sgd --mask-optimizer adam)",
    )
    optim.add_argument("--lr", type=float, default=DEFAULTS.lr, help="(default: %(default)s)")
    optim.add_argument(
        "--mask-lr",
        type=float,
        default=DEFAULTS.mask_lr,
        metavar="LR",
        help="learning rate of the picking masks (default: %(default)s)",
    )
    optim.add_argument(
        "--prune-lr",
        type=float,
        default=DEFAULTS.prune_lr,
        metavar="LR",
        help="learning rate while pruning (default: %(default)s)",
    )
    optim.add_argument(
        "--lr-schedule",
        choices=SCHEDULES,
        default=DEFAULTS.lr_schedule,
        help="within every training phase, step by step (default: %(default)s)",
    )
    optim.add_argument(
        "--mask-schedule",
        choices=MASK_SCHEDULES,
        default=DEFAULTS.mask_schedule,
        help="the picking masks' learning rate: the paper's (x0.2 from half "
        "the phase, 0 from 70%%) or the same as the weights' "
        "(default: %(default)s)",
    )
    optim.add_argument(
        "--select",
        choices=("best", "last"),
        default="best" if DEFAULTS.select_best else "last",
        help="end each phase in its best epoch on validation, or its last (default: %(default)s)",
    )
    optim.add_argument(
        "--patience",
        type=int,
        default=DEFAULTS.patience,
        metavar="N",
        help="stop a phase after N epochs without a better validation accuracy (default: never)",
    )
    optim.add_argument(
        "--momentum",
        type=float,
        default=DEFAULTS.momentum,
        help="SGD's, with Nesterov (default: %(default)s)",
    )
    optim.add_argument(
        "--weight-decay",
        type=float,
        default=DEFAULTS.weight_decay,
        metavar="WD",
        help="(default: %(default)s)",
    )


def _add_run(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    run = p.add_argument_group("run")
    run.add_argument(
        "--seed",
        type=int,
        default=DEFAULTS.seed,
        help="initial weights, data split and training order (default: %(default)s)",
    )
    run.add_argument(
        "--device",
        default=DEFAULTS.device,
        help="cpu, cuda or cuda:N; under torchrun each process takes "
        "cuda:LOCAL_RANK (default: %(default)s)",
    )
    run.add_argument(
        "--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's choice)"
    )
    return run


def main(argv: list[str] | None = None) -> int:
    """Run the ``cpg`` command line; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        if getattr(args, "threads", None) is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        return COMMANDS[args.command](args)
    except _UsageError as err:
        print(f"{err}", file=sys.stderr)
        return USAGE_ERROR
    except (ValueError, FileNotFoundError) as err:
        print(f"cpg: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    except BrokenPipeError:  # the reader left (`cpg info x | head`): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (RuntimeError, OSError) as err:
        print(f"cpg: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cpg: interrupted", file=sys.stderr)
        return 130


COMMANDS = {
    "train": run_train,
    "compare": run_compare,
    "eval": run_eval,
    "info": run_info,
    "forget": run_forget,
}
