"""Progress reporting for ``cpg train``: a bar per training phase, a line per event.

Bars are tqdm's, drawn on terminals only (nothing per step elsewhere, so
logs stay short).
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

from ..trainer import Callback, TaskResult


class Progress(Callback):
    """Prints what the trainer does to ``stream`` (stderr by default)."""

    def __init__(self, num_tasks: int, stream: TextIO | None = None, bars: bool = True):
        self.num_tasks = num_tasks
        self.stream = stream or sys.stderr
        self.bars = bars
        self.bar = None

    def on_task_begin(self, task_id: int, name: str) -> None:
        self._print(f"task {task_id}/{self.num_tasks}: {name}")

    def on_goal(self, task_id: int, goal: float, reference: float | None) -> None:
        source = "fixed" if reference is None else f"reference {100 * reference:.1f}%"
        self._print(f"  accuracy goal {100 * goal:.1f}% ({source})")

    def on_phase_begin(self, task_id: int, phase: str, steps: int) -> None:
        if self.bars and steps:
            self.bar = make_bar(steps, f"  {phase}", self.stream)

    def on_step(self, task_id: int, phase: str, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(loss)

    def on_phase_end(self, task_id: int, phase: str, accuracy: float) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self._print(f"  {phase:<22} val {100 * accuracy:5.1f}%")

    def on_grow(self, task_id: int, old_size: float, new_size: float) -> None:
        self._print(f"  goal missed: grew the network from {old_size:.2f}x to {new_size:.2f}x")

    def on_prune(self, task_id: int, sparsity: float, accuracy: float, kept: bool) -> None:
        if not kept:
            self._print(f"  goal missed at {100 * sparsity:.0f}% sparsity: kept the previous step")

    def on_task_end(self, result: TaskResult) -> None:
        self._print(
            f"  done: test {100 * result.learned_accuracy:.1f}%, released "
            f"{100 * result.sparsity:.0f}% of its weights, model "
            f"{result.model_size:.2f}x"
        )

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


def make_bar(total: int, label: str, stream: TextIO):
    """A tqdm bar, drawn only where ``stream`` is a terminal (logs get no per-step lines)."""
    return _TqdmBar(
        tqdm(total=total, desc=label, file=stream, leave=False, dynamic_ncols=True, disable=None)
    )


class _TqdmBar:
    """tqdm with the loss of the last step shown after the bar."""

    def __init__(self, bar):
        self.bar = bar

    def update(self, loss: float) -> None:
        self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
