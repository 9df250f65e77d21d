"""Sequential fine-tuning: one shared network trained on each task in turn.

The forgetting lower bound of task-incremental learning: each task gets a
head of its own, but the shared layers (and their batch-norm statistics)
are trained by every task after it, so older tasks drift. Nothing protects
them: that is what CPG and its baselines are measured against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

from ..data import Task
from .base import Trainer, classifier_name, replace_classifier
from .callbacks import Callback
from .config import TrainConfig
from .independent import backbone_weights
from .results import TaskResult


class SequentialTrainer(Trainer):
    """Fine-tunes one network (``build()``, plain torch) task after task, a head per task."""

    def __init__(
        self,
        build: Callable[[], nn.Module],
        config: TrainConfig,
        callbacks: Iterable[Callback] = (),
    ):
        if config.method != "sequential":
            raise ValueError(f"method {config.method!r} is not sequential fine-tuning")
        super().__init__(config, callbacks)
        self.network = build().to(self.device)
        self.head_name = classifier_name(self.network)
        self.base_weights = backbone_weights(self.network, self.head_name)
        self.heads: list[nn.Module] = []

    def learn(self, task: Task) -> TaskResult:
        """Train the shared layers and a new head on ``task``; return its results."""
        t = len(self.heads) + 1
        self._seed(t)
        self._emit("on_task_begin", t, task.name)
        in_features = self.network.get_submodule(self.head_name).in_features
        replace_classifier(self.network, self.head_name, in_features, task.num_classes)
        optimizer_class, options = self._optimizer(self.config.lr)
        optimizer = optimizer_class(
            self.network.parameters(), weight_decay=self.config.weight_decay, **options
        )
        val = self._train(self.network, optimizer, task, self.config.epochs, t, "train")
        # Out of the network from the next task on, the head is never trained again.
        self.heads.append(self.network.get_submodule(self.head_name))
        result = TaskResult(
            task_id=t,
            name=task.name,
            learned_accuracy=self._accuracy(self.network, task.test),
            own_weights=self.base_weights,
            used_weights=self.base_weights,
            model_size=1.0,
            val_accuracy=val,
        )
        self.results.append(result)
        self._emit("on_task_end", result)
        return result

    def evaluate(self, task_id: int, dataset) -> float:
        """Accuracy of task ``task_id`` (its head on today's shared layers) on ``dataset``."""
        if not 1 <= task_id <= len(self.heads):
            raise ValueError(f"task {task_id} is not learned; tasks: 1..{len(self.heads)}")
        current = self.network.get_submodule(self.head_name)
        self.network.set_submodule(self.head_name, self.heads[task_id - 1])
        try:
            return self._accuracy(self.network, dataset)
        finally:
            self.network.set_submodule(self.head_name, current)
