"""What every trainer shares: config, device, seeding, callbacks, training phases."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from ..data import Task
from . import distributed
from .callbacks import Callback
from .config import TrainConfig
from .loops import accuracy, copy_state, lr_scheduler, run_epochs, train_loader
from .results import TaskResult

EVAL_BATCH = 256


class Trainer(ABC):
    """Learns a sequence of tasks; ``fit`` is the whole run, ``learn`` one task."""

    def __init__(self, config: TrainConfig, callbacks: Iterable[Callback] = ()):
        self.config = config
        self.device = torch.device(config.device)
        self.callbacks = list(callbacks)
        self.results: list[TaskResult] = []
        # Tasks after the one being learned, when fit knows the sequence (None otherwise).
        self.remaining: int | None = None

    def fit(
        self, tasks: Sequence[Task], after_task: Callable[[Trainer], None] | None = None
    ) -> list[TaskResult]:
        """Learn the sequence ``tasks`` in order; after each task, measure every learned task.

        ``tasks`` is the whole sequence: tasks that ``results`` already holds
        (restored from a checkpoint, say) count as learned and are skipped,
        so a resumed run continues where it stopped. After each task every
        learned task is tested again, giving its row of the accuracy matrix
        (``TaskResult.history``); ``after_task(self)`` runs then (to save a
        checkpoint, say). Returns ``results``, whose ``accuracy`` is measured
        after the last task: comparing it with ``learned_accuracy`` shows any
        forgetting.
        """
        if not tasks:
            raise ValueError("no tasks to learn: the task sequence is empty")
        if len(self.results) > len(tasks):
            raise ValueError(
                f"{len(self.results)} tasks are already learned but the sequence "
                f"has only {len(tasks)}"
            )
        for result in self.results:  # learned outside fit: the history starts now
            result.history = result.history or [result.learned_accuracy]
        for position in range(len(self.results), len(tasks)):
            self.remaining = len(tasks) - position - 1
            try:
                result = self.learn(tasks[position])
            finally:
                self.remaining = None
            result.history = result.history or [result.learned_accuracy]
            for older, seen in zip(self.results[:-1], tasks, strict=False):
                older.history.append(self.evaluate(older.task_id, seen.test))
            if after_task is not None:
                after_task(self)
        for result in self.results:
            result.accuracy = result.history[-1] if result.history else result.learned_accuracy
        return self.results

    @abstractmethod
    def learn(self, task: Task) -> TaskResult:
        """Learn ``task`` as the next task, append its result to ``results`` and return it."""

    @abstractmethod
    def evaluate(self, task_id: int, dataset) -> float:
        """Accuracy of learned task ``task_id`` on ``dataset``."""

    # ------------------------------------------------------------ helpers

    def _seed(self, task_id: int) -> None:
        """Seed torch for one task: a task's run depends on the seed and the model alone."""
        torch.manual_seed(self.config.seed * 1_000_003 + task_id)

    def _emit(self, hook: str, *args) -> None:
        if distributed.is_main():
            for callback in self.callbacks:
                getattr(callback, hook)(*args)

    def _train(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | list[torch.optim.Optimizer],
        task: Task,
        epochs: int,
        task_id: int,
        phase: str,
    ) -> float:
        """Up to ``epochs`` of training on ``task.train``; returns the validation accuracy.

        The learning rates follow ``config.lr_schedule`` (the picking masks
        ``config.mask_schedule``) over the phase, step by step. With
        ``config.select_best`` the model ends in the state of its best epoch
        on validation (the last of equals); with ``config.patience`` the
        phase stops after that many epochs without one as good.
        """
        config = self.config
        optimizers = [optimizer] if isinstance(optimizer, torch.optim.Optimizer) else optimizer
        loader = train_loader(task.train, config.batch_size, seed=int(torch.randint(2**31, ())))
        total = epochs * len(loader)
        schedulers = [
            lr_scheduler(o, total, config.lr_schedule, config.mask_schedule) for o in optimizers
        ]
        self._emit("on_phase_begin", task_id, phase, total)
        wrapped = distributed.wrap(model, self.device)
        watch = config.select_best or config.patience is not None
        best, best_state, stale = -1.0, None, 0
        for epoch in range(epochs):
            run_epochs(
                wrapped,
                optimizers,
                loader,
                1,
                self.device,
                first_epoch=epoch,
                on_step=lambda loss: self._emit("on_step", task_id, phase, loss),
                after_step=lambda: [s.step() for s in schedulers],
            )
            distributed.average_batch_norm(model)
            if not watch:
                continue
            result = self._accuracy(model, task.val)
            # Ties go to the later epoch: on a small validation set many epochs reach
            # 100%, and the earliest of them is the least trained.
            if result >= best:
                best, stale = result, 0
                if config.select_best and epoch < epochs - 1:
                    best_state = copy_state(model)
                elif config.select_best:
                    best_state = None  # the model is in its best state already
            else:
                stale += 1
                if config.patience is not None and stale >= config.patience:
                    break
        if best_state is not None:
            model.load_state_dict(best_state)
        result = best if config.select_best else self._accuracy(model, task.val)
        self._emit("on_phase_end", task_id, phase, result)
        return result

    def _accuracy(self, model: nn.Module, dataset) -> float:
        return accuracy(model, dataset, EVAL_BATCH, self.device)

    def _optimizer(
        self, lr: float, name: str | None = None
    ) -> tuple[type[torch.optim.Optimizer], dict]:
        """Optimizer ``name`` (default: the configured one): its class and its
        options at learning rate ``lr``."""
        if (name or self.config.optimizer) == "adam":
            # fused: one kernel for all parameters, several times faster on small CPU models
            return torch.optim.Adam, {"lr": lr, "fused": True}
        momentum = self.config.momentum
        return torch.optim.SGD, {"lr": lr, "momentum": momentum, "nesterov": momentum > 0}


def classifier_name(model: nn.Module) -> str:
    """The name of ``model``'s last ``nn.Linear``: its classifier (``convert``'s rule)."""
    names = [name for name, m in model.named_modules() if type(m) is nn.Linear]
    if not names:
        raise ValueError("the network has no nn.Linear classifier to give each task its own")
    return names[-1]


def replace_classifier(model: nn.Module, name: str, in_features: int, num_classes: int) -> None:
    """Put a fresh ``nn.Linear(in_features, num_classes)`` at ``name`` in ``model``."""
    weight = next(model.parameters())
    model.set_submodule(
        name, nn.Linear(in_features, num_classes, device=weight.device, dtype=weight.dtype)
    )
