"""``cpg train``: learn a task sequence, print the results, save checkpoint and plot."""
from __future__ import annotations

import argparse
import os
import time

import torch

from ..data import load_tasks
from ..trainer import CPGTrainer, TrainConfig, distributed, make_trainer
from .networks import network_builder
from .plot import plot_capacity
from .progress import Progress
from .stored import Run, save_run
from .tables import results_table, summary


def run_train(args: argparse.Namespace) -> int:
    device = distributed.init_from_environment(args.device)
    try:
        return _train(args, device)
    finally:
        distributed.close()


def _train(args: argparse.Namespace, device: str) -> int:
    check_device(device)
    config = TrainConfig(
        method=args.method, epochs=args.epochs, batch_size=args.batch_size,
        optimizer=args.optimizer, mask_optimizer=args.mask_optimizer, lr=args.lr,
        mask_lr=args.mask_lr, momentum=args.momentum,
        weight_decay=args.weight_decay, goal=args.goal, goal_drop=args.goal_drop,
        reference_epochs=args.reference_epochs, initial_sparsity=args.initial_sparsity,
        final_sparsity=args.final_sparsity, prune_steps=args.prune_steps,
        retrain_epochs=args.retrain_epochs, prune_lr=args.prune_lr,
        growth_step=args.growth_step, max_size=args.max_size, seed=args.seed, device=device)
    tasks = load_tasks(args.data, args.data_dir, args.tasks, args.val_fraction)
    build = network_builder(args.model, tasks[0].input_shape, tasks[0].num_classes, args.width)
    main = distributed.is_main()
    callbacks = [Progress(len(tasks), bars=not args.no_progress)] if main and not args.quiet \
        else []
    torch.manual_seed(config.seed)  # the network's initial weights
    trainer = make_trainer(build, config, callbacks)

    started = time.perf_counter()
    results = trainer.fit(tasks)
    if not main:
        return 0
    print(f"\n{args.method} on {args.data} with {args.model}, "
          f"{time.perf_counter() - started:.0f} s\n")
    print(results_table(results, trainer.base_weights))
    print(summary(args.method, results))
    if isinstance(trainer, CPGTrainer):
        _save(trainer, args, tasks, results)
    elif args.output:
        print(f"note: {args.method} trains one network per task; no checkpoint written")
    return 0


def _save(trainer: CPGTrainer, args: argparse.Namespace, tasks, results) -> None:
    output = args.output or os.path.join("runs", f"{args.data}-{args.method}.pt")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    data_dir = os.path.abspath(args.data_dir) if args.data_dir else None  # eval from anywhere
    run = Run(data=args.data, data_dir=data_dir, num_tasks=args.tasks,
              val_fraction=args.val_fraction, model=args.model, width=args.width,
              input_shape=list(tasks[0].input_shape), num_classes=tasks[0].num_classes,
              base_weights=trainer.base_weights, config=trainer.config.to_dict(),
              results=results)
    save_run(trainer.model, run, output)
    print(f"checkpoint: {output}")
    if args.no_plot:
        return
    plot = os.path.splitext(output)[0] + ".png"
    plot_capacity(trainer.model, plot, f"{args.method} on {args.data}: capacity per layer")
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
