"""CPGTrainer: Algorithm 1 of Hung et al. (2019) per task, and PackNet and PAE.

For task t: pick older weights and train the free ones; grow while the
accuracy goal fails (up to a size cap); compact the task's weights by
gradual pruning, keeping the sparsest state that still meets the goal;
finalize (freeze). PackNet picks every older weight and never grows; PAE
picks every older weight and grows.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from .. import lifecycle as L
from ..data import Task
from ..masks import count_bits
from ..nn import TaskHeads
from .base import Trainer, replace_classifier
from .callbacks import Callback
from .capacity import growth_factor, shared_weights
from .config import TrainConfig
from .results import TaskResult
from .schedule import pruning_targets


class CPGTrainer(Trainer):
    """Learns tasks one after another in one converted network (``cpg_kernels.convert``).

    Every finished task stays exactly as it was: its outputs are bit-identical
    after any number of later tasks. Sizes (the growth cap, ``model_size``)
    are relative to the network as it is handed over.
    """

    def __init__(self, model: nn.Module, config: TrainConfig | None = None,
                 callbacks: Iterable[Callback] = ()):
        config = config or TrainConfig()
        if config.shared is None:
            raise ValueError(f"method {config.method!r} trains one network per task: "
                             "use IndependentTrainer")
        finished, training = L.task_state(model)
        if training is not None:
            raise ValueError(f"task {training} is still training: finalize it first")
        heads = [name for name, m in L.cpg_modules(model) if isinstance(m, TaskHeads)]
        if len(heads) != 1:
            raise ValueError(f"the network needs exactly one TaskHeads classifier, has "
                             f"{len(heads)}")
        super().__init__(config, callbacks)
        self.method = config.shared
        self.model = model.to(self.device)
        self.head_name = heads[0]
        self.base_weights = shared_weights(model)
        if self.method.growth:
            growth_factor(model, self.base_weights)  # raises now if the network cannot grow
        # A relative goal's first reference starts from the untrained network.
        self._initial = copy.deepcopy(model) if config.goal is None and not finished else None

    # ---------------------------------------------------------------- tasks

    def learn(self, task: Task) -> TaskResult:
        """Learn ``task`` as the next task id, freeze it, and return its results."""
        finished, _ = L.task_state(self.model)
        t = (finished[-1] if finished else 0) + 1
        self._seed(t)
        self._emit("on_task_begin", t, task.name)
        goal = self._goal(t, task)
        L.begin_task(self.model, t, num_classes=task.num_classes, picking=self.method.picking)
        val = self._train_task(t, task, "train", self.config.epochs, self.config.lr)
        growths = 0
        while self.method.growth and val < goal and self._grow(t):
            growths += 1
            val = self._train_task(t, task, f"train after growth {growths}", self.config.epochs,
                                   self.config.lr)
        if val >= goal:
            val = self._compact(t, task, goal, val)
        L.finalize_task(self.model)
        self._initial = None
        result = self._result(t, task, goal, val, growths)
        self.results.append(result)
        self._emit("on_task_end", result)
        return result

    def evaluate(self, task_id: int, dataset) -> float:
        """Accuracy of finished task ``task_id`` on ``dataset``."""
        with L.task(self.model, task_id):
            return self._accuracy(self.model, dataset)

    # -------------------------------------------------------------- phases

    def _goal(self, t: int, task: Task) -> float:
        """The absolute goal, or a fine-tuned reference's accuracy minus the allowed drop."""
        reference = None
        if self.config.goal is not None:
            goal = self.config.goal
        else:
            reference = self._reference_accuracy(t, task)
            goal = max(reference - self.config.goal_drop, 0.0)
        self._emit("on_goal", t, goal, reference)
        return goal

    def _reference_accuracy(self, t: int, task: Task) -> float:
        """Validation accuracy of a dense copy of the network fine-tuned on ``task`` alone.

        The copy starts from the latest finished task (all the weights it
        computes with) or, before any task, from the untrained network.
        """
        finished, _ = L.task_state(self.model)
        net = (L.export_task(self.model, finished[-1]) if finished
               else copy.deepcopy(self._initial))
        in_features = net.get_submodule(self.head_name).in_features
        replace_classifier(net, self.head_name, in_features, task.num_classes)
        net.requires_grad_(True)
        optimizer_class, options = self._optimizer(self.config.lr)
        optimizer = optimizer_class(net.parameters(), weight_decay=self.config.weight_decay,
                                    **options)
        epochs = self.config.reference_epochs or self.config.epochs
        return self._train(net, optimizer, task, epochs, t, "reference")

    def _train_task(self, t: int, task: Task, phase: str, epochs: int, lr: float) -> float:
        return self._train(self.model, self._task_optimizers(lr), task, epochs, t, phase)

    def _task_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        """Guarded optimizers for the training task: one for everything, or
        with ``mask_optimizer`` one for the weights and the task's own
        parameters at ``lr`` and one for the picking masks at ``mask_lr``."""
        config = self.config
        optimizer_class, options = self._optimizer(lr)
        if config.mask_optimizer is None:
            return [L.make_optimizer(self.model, optimizer_class, weight_decay=config.weight_decay,
                                     mask_lr=config.mask_lr, **options)]
        mask_class, mask_options = self._optimizer(config.mask_lr, config.mask_optimizer)
        weight_groups = L.param_groups(self.model, config.weight_decay, parts=("weights", "own"))
        mask_groups = L.param_groups(self.model, parts=("masks",))
        optimizers = [optimizer_class(weight_groups, **options)]
        if mask_groups:  # the first task has no masks: nothing older to pick
            optimizers.append(mask_class(mask_groups, **mask_options))
        for optimizer in optimizers:
            L.guard_optimizer(optimizer, self.model)
        return optimizers

    def _grow(self, t: int) -> bool:
        """Grow by up to ``growth_step`` of the original size within ``max_size``; False if full."""
        current = shared_weights(self.model)
        target = min(current + self.config.growth_step * self.base_weights,
                     self.config.max_size * self.base_weights)
        factor = growth_factor(self.model, int(target)) if target > current else None
        if factor is None:
            return False
        L.grow(self.model, factor)
        self._emit("on_grow", t, current / self.base_weights,
                   shared_weights(self.model) / self.base_weights)
        return True

    def _compact(self, t: int, task: Task, goal: float, val: float) -> float:
        """Gradual pruning of task ``t``'s weights; returns the validation accuracy kept.

        The picking masks stay fixed (as in the paper). After each step the
        task retrains; the first step that misses the goal is undone and
        pruning stops there.
        """
        for _, layer in L.masked_layers(self.model):
            if layer.mask is not None:
                layer.mask.requires_grad_(False)
        best = copy.deepcopy(self.model.state_dict())
        for target in pruning_targets(self.config.initial_sparsity, self.config.final_sparsity,
                                      self.config.prune_steps):
            L.prune(self.model, target)
            accuracy = self._train_task(t, task, f"prune to {target:.0%}",
                                        self.config.retrain_epochs, self.config.prune_lr)
            kept = accuracy >= goal
            self._emit("on_prune", t, target, accuracy, kept)
            if not kept:
                self.model.load_state_dict(best)
                break
            best, val = copy.deepcopy(self.model.state_dict()), accuracy
        return val

    def _result(self, t: int, task: Task, goal: float, val: float, growths: int) -> TaskResult:
        own = used = free = 0
        for _, layer in L.masked_layers(self.model):
            own += int((layer.owner == t).sum())
            free += int((layer.owner == 0).sum())
            used += count_bits(layer.get_buffer(f"bits_{t}"))
        return TaskResult(
            task_id=t, name=task.name, learned_accuracy=self.evaluate(t, task.test),
            own_weights=own, used_weights=used,
            model_size=shared_weights(self.model) / self.base_weights, goal=goal,
            val_accuracy=val, sparsity=free / (own + free) if own + free else 0.0,
            growths=growths)
