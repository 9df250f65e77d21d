"""``cpg compare``: methods x seeds on one task sequence; tables, JSON and a plot.

Every run's results are written to ``DIR/compare.json`` as soon as it ends,
so ``--resume`` after a crash keeps the finished runs and trains only the
rest (with the same options: the stored ones must match).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch

from ..data import load_tasks
from ..trainer import Callback, TaskResult, distributed
from ..trainer.compare import REFERENCE, RunRecord, check_methods, compare, summarize
from .networks import network_builder
from .plot import plot_comparison
from .tables import format_table, percent
from .train import check_device, config_from_args

DEFAULT_METHODS = ("cpg", "pae", "packnet", "sequential", "independent")
FORMAT = "cpg-kernels comparison"
VERSION = 1


def run_compare(args: argparse.Namespace) -> int:
    if distributed.active() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("cpg compare runs in one process; use cpg train under torchrun")
    check_device(args.device)
    methods = check_methods(m.strip() for m in args.methods.split(",") if m.strip())
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    seeds = list(range(args.seed, args.seed + args.seeds))
    config = config_from_args(args, args.device, methods[0])
    output = args.output or os.path.join("runs", f"compare-{args.data}")
    path = os.path.join(output, "compare.json")
    setup = {
        "data": args.data,
        "data_dir": args.data_dir,
        "tasks": args.tasks,
        "val_fraction": args.val_fraction,
        "model": args.model,
        "width": args.width,
        "config": {
            k: v for k, v in config.to_dict().items() if k not in ("method", "seed", "device")
        },
    }
    done = _resumed(path, setup) if args.resume else []

    def load(seed: int):
        return load_tasks(args.data, args.data_dir, args.tasks, args.val_fraction, seed=seed)

    first = load(seeds[0])
    build = network_builder(args.model, first[0].input_shape, first[0].num_classes, args.width)
    cache = {seeds[0]: first}
    records: list[RunRecord] = list(done)
    # --resume changes no result: the command recorded is the one that makes the runs.
    command = "cpg " + " ".join(shlex.quote(a) for a in args.argv if a != "--resume")
    os.makedirs(output, exist_ok=True)

    def save(record: RunRecord) -> None:
        records.append(record)
        _write(path, command, setup, methods, seeds, records)
        if not args.quiet:
            print(_run_line(record), file=sys.stderr, flush=True)

    callbacks = None if args.quiet else (lambda m, s: [_TaskLine(m, s, len(first))])
    records = [r for r in records if r.method in methods and r.seed in seeds]
    if args.jobs > 1:
        runs = _in_parallel(args, methods, seeds, records, save)
    else:
        runs = compare(
            lambda seed: cache.pop(seed, None) or load(seed),
            build,
            methods,
            seeds,
            config,
            done=records,
            callbacks=callbacks,
            on_run_end=save,
        )
    _write(path, command, setup, methods, seeds, runs)
    summary = summarize(runs)
    names = [t.name for t in first]
    print(f"\n{command}\n")
    print(comparison_table(summary, len(seeds)))
    for method in methods:
        print(
            f"\n{method}: accuracy on task i (rows) after learning task j (columns), %, "
            f"mean of {len(seeds)} seeds"
        )
        print(matrix_table(summary[method]["matrix"], names))
    print(f"\nresults: {path}")
    if not args.no_plot:
        plot = os.path.join(output, "compare.png")
        title = f"{args.data}, {args.model}: final accuracy per task ({len(seeds)} seeds)"
        plot_comparison(summary, names, plot, title)
        print(f"plot: {plot}")
    return 0


def _in_parallel(
    args: argparse.Namespace, methods: list[str], seeds: list[int], done: list[RunRecord], save
) -> list[RunRecord]:
    """The runs not in ``done``, ``args.jobs`` at a time in processes of their own.

    Each run depends only on its method, its seed and the options, so the
    records are those a serial comparison gives (one CPU thread per run).
    """
    finished = {(r.method, r.seed): r for r in done}
    pending = [(m, s) for s in seeds for m in methods if (m, s) not in finished]
    options = {k: v for k, v in vars(args).items() if k != "func"}
    context = multiprocessing.get_context("spawn")  # no forked thread pools
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        futures = [pool.submit(_one_run, options, m, s) for m, s in pending]
        for future in as_completed(futures):
            record = RunRecord.from_dict(future.result())
            finished[(record.method, record.seed)] = record
            save(record)
    return [finished[(m, s)] for s in seeds for m in methods]


def _one_run(options: dict, method: str, seed: int) -> dict:
    """One run of a parallel comparison, in a worker process."""
    args = argparse.Namespace(**options)
    torch.set_num_threads(args.threads or 1)
    config = config_from_args(args, args.device, method)

    def load(s: int):
        return load_tasks(args.data, args.data_dir, args.tasks, args.val_fraction, seed=s)

    tasks = load(seed)
    build = network_builder(args.model, tasks[0].input_shape, tasks[0].num_classes, args.width)
    callbacks = None if args.quiet else (lambda m, s: [_TaskLine(m, s, len(tasks))])
    return compare(lambda s: tasks, build, [method], [seed], config, callbacks=callbacks)[
        0
    ].to_dict()


def comparison_table(summary: dict[str, dict], seeds: int) -> str:
    """One row per method: the metrics as mean ± std over seeds."""
    headers = [
        "method",
        "avg acc",
        "learned",
        "forgetting",
        "BWT",
        "FWT",
        "size",
        "missed",
        "time s",
    ]
    rows = []
    for method, s in summary.items():
        rows.append(
            [
                method,
                _pm(s["average_accuracy"]),
                _pm(s["learned_accuracy"]),
                _pm(s["forgetting"], 2),
                _pm(s["backward_transfer"]),
                "-" if s["forward_transfer"] is None else _pm(s["forward_transfer"]),
                _pm(s["final_size"], 2, scale=1, unit="x"),
                _pm(s["goals_missed"], 1, scale=1),
                _pm(s["seconds"], 0, scale=1),
            ]
        )
    note = (
        f"(mean ± std over {seeds} seeds; accuracies, forgetting and transfer in % of "
        "test accuracy; learned: right after each task; FWT: learned minus independent "
        f"models' ({REFERENCE}); size: times one network; missed: tasks per run whose "
        "kept accuracy missed the goal)"
    )
    return format_table(headers, rows) + "\n" + note


def matrix_table(matrix: list[list[float | None]], names: list[str]) -> str:
    headers = ["task", *(str(j + 1) for j in range(len(matrix)))]
    rows = [[f"{i + 1} {names[i]}", *(percent(v) for v in row)] for i, row in enumerate(matrix)]
    return format_table(headers, rows)


def _pm(pair: list[float], digits: int = 1, scale: float = 100, unit: str = "") -> str:
    mean, std = (scale * v for v in pair)
    return f"{mean:.{digits}f}{unit}±{std:.{digits}f}"


def _run_line(record: RunRecord) -> str:
    from ..trainer import average_accuracy

    results = record.results
    return (
        f"{record.method} seed {record.seed}: average accuracy "
        f"{100 * average_accuracy(results):.1f}%, size {results[-1].model_size:.2f}x, "
        f"{record.seconds:.0f} s"
    )


class _TaskLine(Callback):
    """One line per finished task, so a long comparison shows it is moving."""

    def __init__(self, method: str, seed: int, tasks: int):
        self.prefix, self.tasks = f"{method} seed {seed}", tasks

    def on_task_end(self, result: TaskResult) -> None:
        goal = "" if result.goal_met is not False else ", goal missed"
        print(
            f"  {self.prefix}: task {result.task_id}/{self.tasks} test "
            f"{100 * result.learned_accuracy:.1f}%, size {result.model_size:.2f}x{goal}",
            file=sys.stderr,
            flush=True,
        )


def _write(path: str, command: str, setup: dict, methods, seeds, records) -> None:
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "command": command,
        **setup,
        "methods": list(methods),
        "seeds": list(seeds),
        "runs": [r.to_dict() for r in records],
    }
    if records:
        try:
            payload["summary"] = summarize(records)
        except ValueError:  # a partial comparison: summarize once every run is in
            pass
    temporary = f"{path}.tmp"
    with open(temporary, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(temporary, path)


def _resumed(path: str, setup: dict) -> list[RunRecord]:
    """The finished runs stored at ``path``, if it was made with the same options."""
    if not os.path.isfile(path):
        return []
    try:
        with open(path) as f:
            stored = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot resume from it: {err}") from None
    if stored.get("format") != FORMAT:
        raise ValueError(f"{path}: not a cpg compare file")
    different = [k for k, v in setup.items() if stored.get(k) != v]
    if different:
        raise ValueError(
            f"{path}: made with other options ({', '.join(different)}); "
            "use another --output or the same options"
        )
    return [RunRecord.from_dict(r) for r in stored.get("runs", [])]
