"""Training tasks in sequence: CPG (Hung et al. 2019) and its baselines.

``CPGTrainer`` runs Algorithm 1 per task on a converted network -- pick and
train, grow while the accuracy goal fails, compact by gradual pruning,
finalize -- and, with another ``TrainConfig.method``, PackNet (pick all, no
growth) or PAE (pick all, growth). ``IndependentTrainer`` runs the
one-network-per-task baselines (fine-tune, scratch). ``make_trainer`` picks
the right one for a config.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

from ..convert import convert
from .base import Trainer
from .callbacks import Callback, LoggingCallback
from .config import METHODS, TrainConfig
from .cpg import CPGTrainer
from .independent import IndependentTrainer
from .results import TaskResult, average_accuracy
from .schedule import cubic_sparsity, pruning_targets


def make_trainer(build: Callable[[], nn.Module], config: TrainConfig,
                 callbacks: Iterable[Callback] = ()) -> Trainer:
    """The trainer for ``config.method`` over networks from ``build()`` (plain torch)."""
    if config.shared is None:
        return IndependentTrainer(build, config, callbacks)
    return CPGTrainer(convert(build()), config, callbacks)


__all__ = ["METHODS", "CPGTrainer", "Callback", "IndependentTrainer", "LoggingCallback",
           "TaskResult", "TrainConfig", "Trainer", "average_accuracy", "cubic_sparsity",
           "make_trainer", "pruning_targets"]
