"""Per-task classifier heads over shared features.

``TaskHeads`` replaces a network's final ``nn.Linear``. That layer is kept as
``template``: the forward while no task exists (so conversion changes nothing)
and, when a task asks for no class count of its own, the head it starts from.
Each task gets a plain ``nn.Linear`` in ``heads[str(t)]``; a finished task's
head is frozen and, after growth, reads only the features it was trained on.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .base import CPGModule, enlarged, narrow_channels


def check_num_classes(num_classes) -> None:
    """ValueError unless ``num_classes`` is None or a positive int."""
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")


class TaskHeads(CPGModule):
    """One linear classifier per task, over features shared by all tasks."""

    def __init__(self, template: nn.Linear):
        super().__init__()
        self._init_tasks()
        self.template = template
        self.heads = nn.ModuleDict()

    @property
    def in_features(self) -> int:
        return self.template.in_features

    def head(self, t: int) -> nn.Linear:
        """The classifier of task ``t``."""
        return self.heads[str(t)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self._selected_task()
        if t is None:
            return self.template(x)
        head = self.head(t)
        if t == self.training_task:
            return head(x)
        bias = head.bias.detach() if head.bias is not None else None
        return F.linear(narrow_channels(x, -1, head.in_features), head.weight.detach(), bias)

    # ------------------------------------------------------------ lifecycle

    def begin_task(self, t: int, num_classes: int | None = None) -> None:
        """Give task ``t`` a head: a fresh one with ``num_classes`` outputs, or
        a copy of the template when ``num_classes`` is None."""
        check_num_classes(num_classes)
        self._start_task(t)
        if num_classes is None:
            head = copy.deepcopy(self.template)
        else:
            weight = self.template.weight
            head = nn.Linear(
                self.in_features,
                num_classes,
                self.template.bias is not None,
                device=weight.device,
                dtype=weight.dtype,
            )
        self.heads[str(t)] = head.requires_grad_(True)
        self.template.requires_grad_(False)  # only the pre-CPG forward uses it

    def finalize_task(self) -> int:
        t = self._require_training()
        self.head(t).requires_grad_(False)
        return self._finish_task()

    def forget_task(self, t: int) -> None:
        self._drop_task(t)
        del self.heads[str(t)]

    def export_task(self, t: int) -> nn.Linear:
        """Task ``t``'s head as a standalone ``nn.Linear``."""
        return copy.deepcopy(self.head(t)).requires_grad_(True)

    def task_tensors(self, t: int) -> list[torch.Tensor]:
        return list(self.head(t).parameters())

    def grow(self, in_extra: int) -> None:
        """Widen the template and the training head by ``in_extra`` zero input columns."""
        linears = [self.template]
        if self.training_task is not None:
            linears.append(self.head(self.training_task))
        for linear in linears:
            weight = linear.weight
            shape = (weight.shape[0], weight.shape[1] + in_extra)
            linear.weight = nn.Parameter(
                enlarged(weight.detach(), shape, 0), requires_grad=weight.requires_grad
            )
            linear.in_features = shape[1]

    # ------------------------------------------------------------ checking

    def validate(self) -> None:
        """Raise ValueError unless the CPG state is consistent."""
        self._validate_tasks()
        if sorted(self.heads, key=int) != [str(t) for t in self.known_tasks()]:
            raise ValueError(
                f"heads {sorted(self.heads, key=int)} do not match tasks {self.known_tasks()}"
            )
        for t in self.known_tasks():
            width = self.head(t).in_features
            if width > self.in_features or (t == self.training_task and width != self.in_features):
                raise ValueError(
                    f"task {t}: head reads {width} features, the layer has {self.in_features}"
                )

    def _adopt_state(self, state_dict, prefix: str, extra: dict) -> None:
        stored = state_dict.get(prefix + "template.weight")
        if (
            isinstance(stored, torch.Tensor)
            and stored.dim() == 2
            and stored.shape[0] == self.template.out_features
            and stored.shape[1] > self.in_features
        ):
            self.grow(stored.shape[1] - self.in_features)
        super()._adopt_state(state_dict, prefix, extra)
        self.heads = nn.ModuleDict()
        device = self._device()
        for t in self.known_tasks():
            weight = state_dict.get(f"{prefix}heads.{t}.weight")
            if isinstance(weight, torch.Tensor) and weight.dim() == 2:
                head = nn.Linear(
                    weight.shape[1],
                    weight.shape[0],
                    f"{prefix}heads.{t}.bias" in state_dict,
                    device=device,
                    dtype=weight.dtype,
                )
                self.heads[str(t)] = head.requires_grad_(t == self.training_task)
        if self.known_tasks():
            self.template.requires_grad_(False)

    def extra_repr(self) -> str:
        classes = {int(t): head.out_features for t, head in self.heads.items()}
        return f"in_features={self.in_features}, {self._tasks_repr()}, classes={classes}"
