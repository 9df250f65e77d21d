"""``cpg eval``, ``cpg info`` and ``cpg forget``: look at or change a trained checkpoint."""

from __future__ import annotations

import argparse

import torch

from .. import lifecycle as L
from ..checkpoint import size_report
from ..data import load_tasks
from ..trainer.base import EVAL_BATCH
from ..trainer.capacity import shared_weights
from ..trainer.loops import accuracy
from .plot import plot_capacity
from .stored import load_run, save_run
from .tables import format_table, ownership_table, percent, task_table
from .train import check_device


def run_eval(args: argparse.Namespace) -> int:
    """Test accuracy of every task now, against the accuracy right after it was learned."""
    check_device(args.device)
    model, run = load_run(args.checkpoint, args.device)
    tasks = load_tasks(
        run.data,
        args.data_dir or run.data_dir,
        run.num_tasks,
        run.val_fraction,
        seed=int(run.config.get("seed", 0)),
    )  # the split it was trained on
    finished, _ = L.task_state(model)
    learned = {r.task_id: r.learned_accuracy for r in run.results}
    rows = []
    for t in finished:
        if t > len(tasks):
            raise ValueError(f"the checkpoint has task {t} but {run.data} gives {len(tasks)} tasks")
        with L.task(model, t):
            now = accuracy(model, tasks[t - 1].test, EVAL_BATCH, torch.device(args.device))
        before = learned.get(t)
        rows.append(
            [
                f"{t} {tasks[t - 1].name}",
                percent(before),
                percent(now),
                "-" if before is None else f"{100 * (before - now):.2f}",
            ]
        )
    print(format_table(["task", "learned", "now", "forgetting"], rows))
    return 0


def run_info(args: argparse.Namespace) -> int:
    """Capacity per layer and task, per-task weights, and sizes against independent models."""
    model, run = load_run(args.checkpoint)
    finished, _ = L.task_state(model)
    config = run.config
    print(
        f"{args.checkpoint}: {config.get('method')} on {run.data} with {run.model} "
        f"(width {run.width}), {len(finished)} tasks"
    )
    print("\nshare of each layer's weights owned by each task (%):")
    print(ownership_table(model))
    print("\nweights per task:")
    print(task_table(model, run.names()))
    print("\nsizes:")
    print(size_report(model))
    if args.plot:
        plot_capacity(model, args.plot, f"{args.checkpoint}: capacity per layer")
        print(f"\ncapacity plot: {args.plot}")
    return 0


def run_forget(args: argparse.Namespace) -> int:
    """Selective forgetting: drop a task and release the weights no other task uses."""
    model, run = load_run(args.checkpoint)
    free_before = _free_weights(model)
    L.forget_task(model, args.task)
    run.results = [r for r in run.results if r.task_id != args.task]
    output = args.output or args.checkpoint
    save_run(model, run, output)
    released = _free_weights(model) - free_before
    total = shared_weights(model)
    print(
        f"forgot task {args.task}: released {released:,} weights "
        f"({100 * released / total:.1f}% of the network); wrote {output}"
    )
    return 0


def _free_weights(model) -> int:
    return sum(int((layer.owner == 0).sum()) for _, layer in L.masked_layers(model))
