"""CPGTrainer: Algorithm 1 of Hung et al. (2019) per task, and PAE and PackNet.

For task t: pick older weights and train the free ones; grow while the
accuracy goal fails (up to a size cap), restarting the task each time;
compact the task's weights by gradual pruning, keeping the sparsest state
that still meets the goal but always releasing the reserve later tasks
need; finalize (freeze). PAE picks every older weight and grows; PackNet
picks every older weight, never grows, and prunes each task once to a fixed
ratio (no goal). docs/protocol.md gives the rules and their reasons.
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
from .loops import copy_state
from .results import TaskResult
from .schedule import pruning_targets

DEFAULT_RESERVE = 0.5  # released for later tasks when the sequence's length is unknown


class CPGTrainer(Trainer):
    """Learns tasks one after another in one converted network (``cpg_kernels.convert``).

    Every finished task stays exactly as it was: its outputs are bit-identical
    after any number of later tasks. Sizes (the growth cap, ``model_size``)
    are relative to ``base_weights``: by default the network as it is handed
    over; a resumed run passes the original network's size.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig | None = None,
        callbacks: Iterable[Callback] = (),
        base_weights: int | None = None,
    ):
        config = config or TrainConfig()
        if config.shared is None:
            raise ValueError(
                f"method {config.method!r} trains plain networks: "
                "use SequentialTrainer or IndependentTrainer"
            )
        finished, training = L.task_state(model)
        if training is not None:
            raise ValueError(f"task {training} is still training: finalize it first")
        heads = [name for name, m in L.cpg_modules(model) if isinstance(m, TaskHeads)]
        if len(heads) != 1:
            raise ValueError(
                f"the network needs exactly one TaskHeads classifier, has {len(heads)}"
            )
        super().__init__(config, callbacks)
        self.method = config.shared
        self.model = model.to(self.device)
        self.head_name = heads[0]
        self.base_weights = shared_weights(model) if base_weights is None else base_weights
        if self.method.growth:
            growth_factor(model, self.base_weights)  # raises now if the network cannot grow
        # A relative goal's first reference starts from the untrained network.
        self._initial = (
            copy.deepcopy(model)
            if config.goal is None and self.method.goal and not finished
            else None
        )

    # ---------------------------------------------------------------- tasks

    def learn(self, task: Task) -> TaskResult:
        """Learn ``task`` as the next task id, freeze it, and return its results."""
        finished, _ = L.task_state(self.model)
        t = (finished[-1] if finished else 0) + 1
        self._seed(t)
        self._emit("on_task_begin", t, task.name)
        reserve = self._reserve(t)
        if self.method.goal:
            goal = self._goal(t, task)
            val, growths = self._train_and_grow(t, task, goal, first=not finished)
            val = self._compact(t, task, goal, val, reserve)
        else:
            goal, growths = None, 0
            L.begin_task(self.model, t, num_classes=task.num_classes, picking=False)
            val = self._train_task(t, task, "train", self.config.epochs, self.config.lr)
            val = self._prune_once(
                t,
                task,
                val,
                reserve if self.config.prune_ratio is None else self.config.prune_ratio,
            )
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
        net = L.export_task(self.model, finished[-1]) if finished else copy.deepcopy(self._initial)
        in_features = net.get_submodule(self.head_name).in_features
        replace_classifier(net, self.head_name, in_features, task.num_classes)
        net.requires_grad_(True)
        optimizer_class, options = self._optimizer(self.config.lr)
        optimizer = optimizer_class(
            net.parameters(), weight_decay=self.config.weight_decay, **options
        )
        epochs = self.config.reference_epochs or self.config.epochs
        return self._train(net, optimizer, task, epochs, t, "reference")

    def _reserve(self, t: int) -> float:
        """The share of task ``t``'s available weights it must release for later tasks."""
        if self.config.reserve is not None:
            return self.config.reserve
        remaining = (
            self.config.total_tasks - t if self.config.total_tasks is not None else self.remaining
        )
        if remaining is None:
            return DEFAULT_RESERVE
        return 1.0 - 1.0 / (max(remaining, 0) + 1)

    def _train_and_grow(self, t: int, task: Task, goal: float, first: bool) -> tuple[float, int]:
        """Begin task ``t`` and train it; grow while it misses ``goal`` and the cap allows.

        After growth the task restarts from its state before it began (with
        ``growth_restart``), so what the larger network reaches is credited to
        capacity, not to more epochs. The first task never grows: its goal
        comes from the same network trained the same way, so a miss is noise.
        """
        restart = self.config.growth_restart
        before = copy_state(self.model) if restart and self.method.growth else None
        L.begin_task(self.model, t, num_classes=task.num_classes, picking=self.method.picking)
        val = self._train_task(t, task, "train", self.config.epochs, self.config.lr)
        growths = 0
        while self.method.growth and not first and val < goal:
            factor = self._growth_factor()
            if factor is None:
                break
            if restart:
                self.model.load_state_dict(before)  # as before the task: it is not begun
            self._grow(t, factor)
            if restart:
                before = copy_state(self.model)
                L.begin_task(
                    self.model, t, num_classes=task.num_classes, picking=self.method.picking
                )
            growths += 1
            val = self._train_task(
                t, task, f"train after growth {growths}", self.config.epochs, self.config.lr
            )
        return val, growths

    def _train_task(self, t: int, task: Task, phase: str, epochs: int, lr: float) -> float:
        return self._train(self.model, self._task_optimizers(lr), task, epochs, t, phase)

    def _task_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        """Guarded optimizers for the training task: one for everything, or
        with ``mask_optimizer`` one for the weights and the task's own
        parameters at ``lr`` and one for the picking masks at ``mask_lr``."""
        config = self.config
        optimizer_class, options = self._optimizer(lr)
        if config.mask_optimizer is None:
            return [
                L.make_optimizer(
                    self.model,
                    optimizer_class,
                    weight_decay=config.weight_decay,
                    mask_lr=config.mask_lr,
                    **options,
                )
            ]
        mask_class, mask_options = self._optimizer(config.mask_lr, config.mask_optimizer)
        weight_groups = L.param_groups(self.model, config.weight_decay, parts=("weights", "own"))
        mask_groups = L.param_groups(self.model, parts=("masks",))
        optimizers = [optimizer_class(weight_groups, **options)]
        if mask_groups:  # the first task has no masks: nothing older to pick
            optimizers.append(mask_class(mask_groups, **mask_options))
        for optimizer in optimizers:
            L.guard_optimizer(optimizer, self.model)
        return optimizers

    def _growth_factor(self) -> float | None:
        """The channel factor for up to ``growth_step`` more of the original size within
        ``max_size``; None when the network is full."""
        current = shared_weights(self.model)
        target = min(
            current + self.config.growth_step * self.base_weights,
            self.config.max_size * self.base_weights,
        )
        return growth_factor(self.model, int(target)) if target > current else None

    def _grow(self, t: int, factor: float) -> None:
        current = shared_weights(self.model)
        L.grow(self.model, factor)
        self._emit(
            "on_grow",
            t,
            current / self.base_weights,
            shared_weights(self.model) / self.base_weights,
        )

    def _compact(self, t: int, task: Task, goal: float, val: float, reserve: float) -> float:
        """Gradual pruning of task ``t``'s weights; returns the validation accuracy kept.

        The picking masks stay fixed (as in the paper). After each step the
        task retrains. A task that meets its goal is pruned while the goal
        holds: the first step that misses it is undone and pruning stops
        there. A task that missed its goal (at the size cap) is still pruned
        to ``reserve``, so that the tasks after it find free weights (the
        paper's code does the same).
        """
        for _, layer in L.masked_layers(self.model):
            if layer.mask is not None:
                layer.mask.requires_grad_(False)
        targets = pruning_targets(
            self.config.initial_sparsity, self.config.final_sparsity, self.config.prune_steps
        )
        if val < goal:
            for target in [s for s in targets if s < reserve] + ([reserve] if reserve else []):
                val = self._prune_step(t, task, target)
                self._emit("on_prune", t, target, val, True)
            return val
        best = copy_state(self.model)
        for target in targets:
            accuracy = self._prune_step(t, task, target)
            kept = accuracy >= goal
            self._emit("on_prune", t, target, accuracy, kept)
            if not kept:
                self.model.load_state_dict(best)
                break
            best, val = copy_state(self.model), accuracy
        return val

    def _prune_step(self, t: int, task: Task, target: float) -> float:
        L.prune(self.model, target)
        return self._train_task(
            t, task, f"prune to {target:.0%}", self.config.retrain_epochs, self.config.prune_lr
        )

    def _prune_once(self, t: int, task: Task, val: float, ratio: float) -> float:
        """PackNet: one magnitude prune to ``ratio``, then retraining at ``prune_lr``
        for as many epochs as CPG's gradual pruning takes in all."""
        if ratio <= 0:
            return val
        L.prune(self.model, ratio)
        epochs = self.config.prune_steps * self.config.retrain_epochs
        if epochs:
            val = self._train_task(t, task, f"prune to {ratio:.0%}", epochs, self.config.prune_lr)
        else:
            val = self._accuracy(self.model, task.val)
        self._emit("on_prune", t, ratio, val, True)
        return val

    def _result(
        self, t: int, task: Task, goal: float | None, val: float, growths: int
    ) -> TaskResult:
        own = used = free = 0
        for _, layer in L.masked_layers(self.model):
            own += int((layer.owner == t).sum())
            free += int((layer.owner == 0).sum())
            used += count_bits(layer.get_buffer(f"bits_{t}"))
        return TaskResult(
            task_id=t,
            name=task.name,
            learned_accuracy=self.evaluate(t, task.test),
            own_weights=own,
            used_weights=used,
            model_size=shared_weights(self.model) / self.base_weights,
            goal=goal,
            val_accuracy=val,
            sparsity=free / (own + free) if own + free else 0.0,
            growths=growths,
            goal_met=None if goal is None else val >= goal,
        )
