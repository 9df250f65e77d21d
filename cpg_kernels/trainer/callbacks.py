"""Callbacks: how a trainer reports progress without knowing who listens.

Subclass :class:`Callback` and override what you need. Under
DistributedDataParallel only the main process (rank 0) calls them.
"""

from __future__ import annotations

import logging

from .results import TaskResult


class Callback:
    """No-op hooks, called in this order for each task."""

    def on_task_begin(self, task_id: int, name: str) -> None:
        """Task ``task_id`` (named ``name``) starts."""

    def on_goal(self, task_id: int, goal: float, reference: float | None) -> None:
        """The accuracy goal is set (``reference``: the reference's accuracy, if one trained)."""

    def on_phase_begin(self, task_id: int, phase: str, steps: int) -> None:
        """A training phase of ``steps`` optimizer steps begins (e.g. ``"train"``)."""

    def on_step(self, task_id: int, phase: str, loss: float) -> None:
        """One optimizer step finished with this mini-batch ``loss``."""

    def on_phase_end(self, task_id: int, phase: str, accuracy: float) -> None:
        """A phase ended with this validation accuracy."""

    def on_grow(self, task_id: int, old_size: float, new_size: float) -> None:
        """The network grew from ``old_size`` to ``new_size`` times its original size."""

    def on_prune(self, task_id: int, sparsity: float, accuracy: float, kept: bool) -> None:
        """A pruning step reached ``sparsity``; ``kept``: the step stays (it met the goal,
        or the reserve for later tasks requires it)."""

    def on_task_end(self, result: TaskResult) -> None:
        """The task is finished (frozen) with these results."""


class LoggingCallback(Callback):
    """Reports goals, phases, growth, pruning and results to a ``logging`` logger (INFO)."""

    def __init__(self, logger: logging.Logger | None = None):
        self.logger = logger or logging.getLogger("cpg_kernels.trainer")

    def on_task_begin(self, task_id: int, name: str) -> None:
        self.logger.info("task %d (%s) begins", task_id, name)

    def on_goal(self, task_id: int, goal: float, reference: float | None) -> None:
        self.logger.info(
            "task %d: accuracy goal %.4f (reference %s)",
            task_id,
            goal,
            "none" if reference is None else f"{reference:.4f}",
        )

    def on_phase_end(self, task_id: int, phase: str, accuracy: float) -> None:
        self.logger.info("task %d: %s: validation accuracy %.4f", task_id, phase, accuracy)

    def on_grow(self, task_id: int, old_size: float, new_size: float) -> None:
        self.logger.info("task %d: grew from %.2fx to %.2fx", task_id, old_size, new_size)

    def on_prune(self, task_id: int, sparsity: float, accuracy: float, kept: bool) -> None:
        self.logger.info(
            "task %d: sparsity %.3f, accuracy %.4f, %s",
            task_id,
            sparsity,
            accuracy,
            "kept" if kept else "undone",
        )

    def on_task_end(self, result: TaskResult) -> None:
        self.logger.info(
            "task %d done: test accuracy %.4f, sparsity %.3f, size %.2fx",
            result.task_id,
            result.learned_accuracy,
            result.sparsity,
            result.model_size,
        )
