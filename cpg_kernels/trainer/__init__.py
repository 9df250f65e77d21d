"""Training tasks in sequence: CPG (Hung et al. 2019) and its baselines.

``CPGTrainer`` runs Algorithm 1 per task on a converted network -- pick and
train, grow while the accuracy goal fails, compact by gradual pruning,
finalize -- and, with another ``TrainConfig.method``, PAE (pick all, growth)
or PackNet (pick all, a fixed one-shot prune). ``SequentialTrainer``
fine-tunes one plain network task after task (the forgetting lower bound);
``IndependentTrainer`` runs the one-network-per-task baselines (independent
models, fine-tuned copies). ``make_trainer`` picks the right one for a
config.
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
from .results import (
    TaskResult,
    accuracy_matrix,
    average_accuracy,
    backward_transfer,
    forgetting,
    forward_transfer,
)
from .schedule import cubic_sparsity, pruning_targets
from .sequential import SequentialTrainer


def make_trainer(
    build: Callable[[], nn.Module], config: TrainConfig, callbacks: Iterable[Callback] = ()
) -> Trainer:
    """The trainer for ``config.method`` over networks from ``build()`` (plain torch)."""
    if config.shared is not None:
        return CPGTrainer(convert(build()), config, callbacks)
    if config.method == "sequential":
        return SequentialTrainer(build, config, callbacks)
    return IndependentTrainer(build, config, callbacks)


__all__ = [
    "METHODS",
    "CPGTrainer",
    "Callback",
    "IndependentTrainer",
    "LoggingCallback",
    "SequentialTrainer",
    "TaskResult",
    "TrainConfig",
    "Trainer",
    "accuracy_matrix",
    "average_accuracy",
    "backward_transfer",
    "cubic_sparsity",
    "forgetting",
    "forward_transfer",
    "make_trainer",
    "pruning_targets",
]
