"""A learning benchmark: methods x seeds on one task sequence, with the usual metrics.

``compare`` trains every method once per seed, each run from the same
initial network for that seed (``torch.manual_seed(seed)`` before it is
built, as ``cpg train`` does) and on the data split that seed draws.
``summarize`` reduces the runs to mean and standard deviation per method:
average accuracy, forgetting, backward and forward transfer (against the
``independent`` runs of the same seed, when they are part of the
comparison), final size and time, and the mean accuracy matrix.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from ..data import Task
from ..masks import MAX_TASK
from .base import Trainer
from .callbacks import Callback
from .config import ALIASES, METHODS, TrainConfig
from .results import (
    TaskResult,
    accuracy_matrix,
    average_accuracy,
    backward_transfer,
    forgetting,
    forward_transfer,
)

REFERENCE = "independent"  # forward transfer is measured against it


@dataclass
class RunRecord:
    """One method trained with one seed: its per-task results and its wall time."""

    method: str
    seed: int
    seconds: float
    results: list[TaskResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "seed": self.seed,
            "seconds": self.seconds,
            "results": [r.to_dict() for r in self.results],
        }

    @classmethod
    def from_dict(cls, values: dict) -> RunRecord:
        return cls(
            values["method"],
            int(values["seed"]),
            float(values["seconds"]),
            [TaskResult.from_dict(r) for r in values["results"]],
        )


def check_methods(methods: Iterable[str]) -> list[str]:
    """The method names, aliases resolved; ValueError for an unknown or repeated one."""
    names = []
    for method in methods:
        name = ALIASES.get(method, method)
        if name not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        if name in names:
            raise ValueError(f"method {name!r} is listed twice")
        names.append(name)
    if not names:
        raise ValueError("no methods to compare")
    return names


def check_sequence(tasks: Sequence[Task]) -> None:
    """ValueError unless ``tasks`` is a sequence a shared network can learn (1..255 tasks)."""
    if not tasks:
        raise ValueError("the task sequence is empty")
    if len(tasks) > MAX_TASK:
        raise ValueError(
            f"the task sequence has {len(tasks)} tasks; a shared network holds at "
            f"most {MAX_TASK} (owner ids are uint8)"
        )


def compare(
    load: Callable[[int], Sequence[Task]],
    build: Callable[[], nn.Module],
    methods: Iterable[str],
    seeds: Iterable[int],
    config: TrainConfig,
    make: Callable[[Callable[[], nn.Module], TrainConfig, list[Callback]], Trainer] | None = None,
    done: Iterable[RunRecord] = (),
    callbacks: Callable[[str, int], list[Callback]] | None = None,
    on_run_end: Callable[[RunRecord], None] | None = None,
) -> list[RunRecord]:
    """Train each method with each seed on ``load(seed)``; return one record per run.

    ``build()`` makes the plain network; ``config`` holds everything but
    the method and seed. Runs in ``done`` (an earlier, interrupted
    comparison) are kept and not trained again. ``make`` builds a trainer
    (default ``make_trainer``); ``callbacks(method, seed)`` gives each run
    its callbacks; ``on_run_end`` sees each new record (to save progress).
    """
    from . import make_trainer  # the package's factory; imported here to avoid a cycle

    methods, seeds = check_methods(methods), list(seeds)
    if not seeds:
        raise ValueError("no seeds to run")
    make = make or make_trainer
    finished = {(r.method, r.seed): r for r in done}
    records = []
    for seed in seeds:
        tasks = load(seed)
        check_sequence(tasks)
        for method in methods:
            if (method, seed) in finished:
                records.append(finished[(method, seed)])
                continue
            torch.manual_seed(seed)  # the initial network, the same for every method
            run_config = replace(config, method=method, seed=seed)
            trainer = make(build, run_config, callbacks(method, seed) if callbacks else [])
            started = time.perf_counter()
            results = trainer.fit(tasks)
            record = RunRecord(method, seed, time.perf_counter() - started, list(results))
            records.append(record)
            if on_run_end is not None:
                on_run_end(record)
    return records


def _mean_std(values: list[float]) -> list[float]:
    return [statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def summarize(records: Sequence[RunRecord]) -> dict[str, dict]:
    """Per method (in order of first appearance): each metric as ``[mean, std]`` over seeds.

    Keys: ``seeds``, ``average_accuracy``, ``learned_accuracy`` (mean of
    R[i][i]), ``forgetting``, ``backward_transfer``, ``forward_transfer``
    (None without ``independent`` runs of the same seeds), ``final_size``,
    ``seconds``, ``goals_missed`` (tasks whose kept accuracy missed the goal,
    per run), ``task_accuracy`` (final accuracy per task) and ``matrix`` (the
    mean accuracy matrix, None below the diagonal).
    """
    reference = {r.seed: r.results for r in records if r.method == REFERENCE}
    summary: dict[str, dict] = {}
    for method in dict.fromkeys(r.method for r in records):
        runs = [r for r in records if r.method == method]
        lengths = {len(r.results) for r in runs}
        if len(lengths) != 1:
            raise ValueError(f"{method}: runs learned different numbers of tasks {lengths}")
        transfer = (
            [forward_transfer(r.results, reference[r.seed]) for r in runs]
            if all(r.seed in reference for r in runs)
            else None
        )
        matrices = [accuracy_matrix(r.results) for r in runs]
        count = lengths.pop()
        summary[method] = {
            "seeds": [r.seed for r in runs],
            "average_accuracy": _mean_std([average_accuracy(r.results) for r in runs]),
            "learned_accuracy": _mean_std(
                [statistics.fmean(x.learned_accuracy for x in r.results) for r in runs]
            ),
            "forgetting": _mean_std([forgetting(r.results) for r in runs]),
            "backward_transfer": _mean_std([backward_transfer(r.results) for r in runs]),
            "forward_transfer": None if transfer is None else _mean_std(transfer),
            "final_size": _mean_std([r.results[-1].model_size for r in runs]),
            "seconds": _mean_std([r.seconds for r in runs]),
            "goals_missed": _mean_std(
                [float(sum(x.goal_met is False for x in r.results)) for r in runs]
            ),
            "task_accuracy": [
                _mean_std([r.results[i].accuracy for r in runs]) for i in range(count)
            ],
            "matrix": [
                [
                    None
                    if matrices[0][i][j] is None
                    else statistics.fmean(m[i][j] for m in matrices)
                    for j in range(count)
                ]
                for i in range(count)
            ],
        }
    return summary
