"""``cpg train``: learn a task sequence, print the results, save checkpoint and plot."""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from ..data import load_tasks
from ..trainer import CPGTrainer, TrainConfig, distributed, make_trainer
from .networks import network_builder
from .plot import plot_capacity
from .progress import Progress
from .stored import Run, load_run, save_run
from .tables import results_table, summary


def run_train(args: argparse.Namespace) -> int:
    device = distributed.init_from_environment(args.device)
    try:
        return _train(args, device)
    finally:
        distributed.close()


def config_from_args(args: argparse.Namespace, device: str, method: str) -> TrainConfig:
    """The training config the protocol and optimization options describe."""
    return TrainConfig(
        method=method,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        mask_optimizer=args.mask_optimizer,
        lr=args.lr,
        mask_lr=args.mask_lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        goal=args.goal,
        goal_drop=args.goal_drop,
        reference_epochs=args.reference_epochs,
        initial_sparsity=args.initial_sparsity,
        final_sparsity=args.final_sparsity,
        prune_steps=args.prune_steps,
        retrain_epochs=args.retrain_epochs,
        prune_lr=args.prune_lr,
        growth_step=args.growth_step,
        max_size=args.max_size,
        growth_restart=args.growth == "restart",
        reserve=args.reserve,
        prune_ratio=args.prune_ratio,
        lr_schedule=args.lr_schedule,
        mask_schedule=args.mask_schedule,
        select_best=args.select == "best",
        patience=args.patience,
        seed=args.seed,
        device=device,
    )


def _train(args: argparse.Namespace, device: str) -> int:
    check_device(device)
    config = config_from_args(args, device, args.method)
    tasks = load_tasks(args.data, args.data_dir, args.tasks, args.val_fraction, seed=args.seed)
    build = network_builder(args.model, tasks[0].input_shape, tasks[0].num_classes, args.width)
    main = distributed.is_main()
    callbacks = [Progress(len(tasks), bars=not args.no_progress)] if main and not args.quiet else []
    shared = config.shared is not None
    output = args.output or (
        os.path.join("runs", f"{args.data}-{config.method}.pt") if shared else None
    )
    if args.resume and not shared:
        raise ValueError(
            f"--resume: {config.method} keeps no checkpoint to resume from; cpg, pae and packnet do"
        )
    torch.manual_seed(config.seed)  # the network's initial weights
    trainer = (
        _resumed(output, args, config, tasks, callbacks)
        if args.resume and os.path.exists(output)
        else None
    )
    trainer = trainer or make_trainer(build, config, callbacks)
    if shared:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)

    def checkpoint(trainer: CPGTrainer) -> None:  # after every task: a crash loses one task
        if main:
            save_run(trainer.model, _run(trainer, args, tasks), output)

    started = time.perf_counter()
    results = trainer.fit(tasks, after_task=checkpoint if shared else None)
    if not main:
        return 0
    print(
        f"\n{config.method} on {args.data} with {args.model}, "
        f"{time.perf_counter() - started:.0f} s\n"
    )
    print(results_table(results, trainer.base_weights))
    print(summary(config.method, results))
    if shared:
        save_run(trainer.model, _run(trainer, args, tasks), output)  # with final accuracies
        print(f"checkpoint: {output}")
        _plot(trainer, args, output)
    elif args.output:
        print(f"note: {config.method} keeps plain networks; no checkpoint written")
    return 0


def _run(trainer: CPGTrainer, args: argparse.Namespace, tasks) -> Run:
    data_dir = os.path.abspath(args.data_dir) if args.data_dir else None  # eval from anywhere
    return Run(
        data=args.data,
        data_dir=data_dir,
        num_tasks=args.tasks,
        val_fraction=args.val_fraction,
        model=args.model,
        width=args.width,
        input_shape=list(tasks[0].input_shape),
        num_classes=tasks[0].num_classes,
        base_weights=trainer.base_weights,
        config=trainer.config.to_dict(),
        results=list(trainer.results),
    )


# What may differ between an interrupted run and its resumption.
_MAY_CHANGE = ("device",)


def _resumed(output: str, args: argparse.Namespace, config, tasks, callbacks) -> CPGTrainer:
    """The trainer of the interrupted run in ``output``, which must have the same set-up."""
    model, run = load_run(output, config.device)
    wanted = {
        "data": args.data,
        "num_tasks": args.tasks,
        "val_fraction": args.val_fraction,
        "model": args.model,
        "width": args.width,
    }
    different = [k for k, v in wanted.items() if getattr(run, k) != v]
    stored = {k: v for k, v in run.config.items() if k not in _MAY_CHANGE}
    now = {k: v for k, v in config.to_dict().items() if k not in _MAY_CHANGE}
    different += [k for k in sorted(set(stored) | set(now)) if stored.get(k) != now.get(k)]
    if different:
        raise ValueError(
            f"--resume: {output} was trained with other options "
            f"({', '.join(different)}); resume with the same ones or use -o"
        )
    if len(run.results) > len(tasks):
        raise ValueError(
            f"--resume: {output} holds {len(run.results)} tasks, the sequence has {len(tasks)}"
        )
    trainer = CPGTrainer(model, config, callbacks, base_weights=run.base_weights)
    trainer.results = list(run.results)
    if callbacks:
        print(
            f"resuming {output}: {len(run.results)} of {len(tasks)} tasks learned", file=sys.stderr
        )
    return trainer


def _plot(trainer: CPGTrainer, args: argparse.Namespace, output: str) -> None:
    if args.no_plot:
        return
    plot = os.path.splitext(output)[0] + ".png"
    title = f"{trainer.config.method} on {args.data}: capacity per layer"
    plot_capacity(trainer.model, plot, title)
    print(f"capacity plot: {plot}")


def check_device(device: str) -> None:
    """ValueError with a clear line when ``device`` cannot be used here."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available here; use --device cpu")
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: only cpu and cuda are supported")
