"""The independent baselines: one network per task, so nothing is shared or forgotten.

``independent`` (the CPG paper's "scratch") trains each task's network from
a fresh initialization; ``finetune`` starts each task's network from a copy
of the previous task's.
Their cost is the size: one whole network per task.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

from torch import nn

from ..data import Task
from .base import Trainer, classifier_name, replace_classifier
from .callbacks import Callback
from .config import TrainConfig
from .results import TaskResult


class IndependentTrainer(Trainer):
    """Trains a network per task; ``build()`` makes a fresh (plain, unconverted) network."""

    def __init__(
        self,
        build: Callable[[], nn.Module],
        config: TrainConfig,
        callbacks: Iterable[Callback] = (),
    ):
        if config.method not in ("independent", "finetune"):
            raise ValueError(
                f"method {config.method!r} shares one network: use CPGTrainer or SequentialTrainer"
            )
        super().__init__(config, callbacks)
        self.build = build
        self.networks: list[nn.Module] = []
        # The first task trains this one: the same initial network the other methods get.
        self._first = build()
        self.head_name = classifier_name(self._first)
        self.base_weights = backbone_weights(self._first, self.head_name)

    def learn(self, task: Task) -> TaskResult:
        """Train the next task's own network and return its results."""
        t = len(self.networks) + 1
        self._seed(t)
        self._emit("on_task_begin", t, task.name)
        if self.config.method == "finetune" and self.networks:
            net = copy.deepcopy(self.networks[-1])
        elif self._first is not None:
            net, self._first = self._first, None
        else:
            net = self.build()
        head = net.get_submodule(self.head_name)
        replace_classifier(net, self.head_name, head.in_features, task.num_classes)
        net.to(self.device)
        optimizer_class, options = self._optimizer(self.config.lr)
        optimizer = optimizer_class(
            net.parameters(), weight_decay=self.config.weight_decay, **options
        )
        val = self._train(net, optimizer, task, self.config.epochs, t, "train")
        self.networks.append(net.eval())
        weights = backbone_weights(net, self.head_name)
        result = TaskResult(
            task_id=t,
            name=task.name,
            learned_accuracy=self._accuracy(net, task.test),
            own_weights=weights,
            used_weights=weights,
            model_size=len(self.networks),
            val_accuracy=val,
        )
        self.results.append(result)
        self._emit("on_task_end", result)
        return result

    def evaluate(self, task_id: int, dataset) -> float:
        """Accuracy of task ``task_id``'s network on ``dataset``."""
        if not 1 <= task_id <= len(self.networks):
            raise ValueError(f"task {task_id} is not learned; tasks: 1..{len(self.networks)}")
        return self._accuracy(self.networks[task_id - 1], dataset)


def backbone_weights(network: nn.Module, head_name: str) -> int:
    """Weights of the network's conv/linear layers, its classifier excluded."""
    head = network.get_submodule(head_name)
    return sum(
        m.weight.numel()
        for m in network.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not head
    )
