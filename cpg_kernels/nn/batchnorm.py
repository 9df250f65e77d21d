"""Per-task batch norm: each task its own affine parameters and running statistics.

The torch parameters and buffers (``weight``, ``bias``, ``running_mean``,
``running_var``, ``num_batches_tracked``) are the training task's and keep
their ``state_dict`` keys; a new task starts from the previous task's values.
Finishing task ``t`` snapshots them into ``weight_<t>``, ``bias_<t>``,
``running_mean_<t>`` and ``running_var_<t>``, which a finished task always
uses in inference form: its statistics never move, even in train mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import CPGModule, enlarged, narrow_channels, pad_channels

# Live tensor -> value of a new channel (what a fresh BatchNorm starts with).
_FRESH = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}


class _PerTaskBatchNorm(CPGModule):
    """Behaviour shared by CPGBatchNorm1d and CPGBatchNorm2d."""

    _plain_type: type[nn.modules.batchnorm._BatchNorm]

    def _init_cpg(self) -> None:
        self._init_tasks()
        self.widths: dict[int, int] = {}  # finished task -> num_features when it finished

    @classmethod
    def from_dense(cls, bn: nn.modules.batchnorm._BatchNorm):
        """A per-task batch norm that takes over ``bn``'s parameters and statistics (no copy)."""
        new = cls(
            bn.num_features,
            bn.eps,
            bn.momentum,
            bn.affine,
            bn.track_running_stats,
            device="meta",
            **cls._init_options(bn),
        )
        new.weight, new.bias = bn.weight, bn.bias
        new.running_mean, new.running_var = bn.running_mean, bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
        return new.train(bn.training)

    @classmethod
    def _init_options(cls, bn) -> dict:
        """Constructor arguments beyond the five every torch batch norm takes."""
        return {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self._selected_task()
        if t is None or t == self.training_task:
            return super().forward(x)
        width = self.widths[t]
        snapshot = {name: self._buffers.get(f"{name}_{t}") for name in _FRESH}
        y = F.batch_norm(
            narrow_channels(x, 1, width),
            snapshot["running_mean"],
            snapshot["running_var"],
            snapshot["weight"],
            snapshot["bias"],
            training=snapshot["running_mean"] is None,
            momentum=0.0,
            eps=self.eps,
        )
        return pad_channels(y, 1, x.shape[1] - width)

    # ------------------------------------------------------------ lifecycle

    def begin_task(self, t: int) -> None:
        """Start task ``t``: the live parameters and statistics become its own."""
        self._start_task(t)

    def finalize_task(self) -> int:
        """Freeze the training task's affine parameters and running statistics."""
        t = self._require_training()
        for name in self._per_task_names():
            self.register_buffer(f"{name}_{t}", getattr(self, name).detach().clone())
        self.widths[t] = self.num_features
        return self._finish_task()

    def forget_task(self, t: int) -> None:
        self._drop_task(t)
        del self.widths[t]

    def export_task(self, t: int) -> nn.Module:
        """Task ``t`` as a plain torch batch norm (in eval mode it uses t's statistics)."""
        plain = self._plain_type(
            self.widths[t],
            self.eps,
            self.momentum,
            self.affine,
            self.track_running_stats,
            device="meta",
            **self._init_options(self),
        )
        for name in self._per_task_names():
            value = self.get_buffer(f"{name}_{t}").clone()
            setattr(plain, name, nn.Parameter(value) if name in ("weight", "bias") else value)
        if self.track_running_stats:
            plain.num_batches_tracked = torch.zeros_like(self.num_batches_tracked)
        return plain.train(self.training)

    def grow(self, extra: int) -> None:
        """Add ``extra`` channels, initialised as a fresh batch norm's."""
        size = self.num_features + extra
        for name in self._per_task_names():
            value = getattr(self, name).detach()
            grown = enlarged(value, (size,), _FRESH[name])
            if isinstance(getattr(self, name), nn.Parameter):
                grown = nn.Parameter(grown, requires_grad=getattr(self, name).requires_grad)
            setattr(self, name, grown)
        self.num_features = size

    def _per_task_names(self) -> tuple[str, ...]:
        return tuple(name for name in _FRESH if getattr(self, name, None) is not None)

    # ------------------------------------------------------------ checking

    def validate(self) -> None:
        """Raise ValueError unless the CPG state is consistent."""
        self._validate_tasks()
        if set(self.widths) != set(self.tasks):
            raise ValueError(f"widths {sorted(self.widths)} do not match tasks {self.tasks}")
        for t in self.tasks:
            width = self.widths[t]
            if not 0 < width <= self.num_features:
                raise ValueError(f"task {t}: width {width} outside 1..{self.num_features}")
            for name in self._per_task_names():
                shape = tuple(self.get_buffer(f"{name}_{t}").shape)
                if shape != (width,):
                    raise ValueError(f"task {t}: {name} of shape {shape}, expected ({width},)")

    def _adopt_state(self, state_dict, prefix: str, extra: dict) -> None:
        name = next(iter(self._per_task_names()), None)
        stored = state_dict.get(prefix + name) if name else None
        if (
            isinstance(stored, torch.Tensor)
            and stored.dim() == 1
            and stored.shape[0] > self.num_features
        ):
            self.grow(stored.shape[0] - self.num_features)
        super()._adopt_state(state_dict, prefix, extra)

    def get_extra_state(self) -> dict:
        return {**super().get_extra_state(), "widths": dict(self.widths)}

    def set_extra_state(self, state: dict) -> None:
        super().set_extra_state(state)
        self.widths = {int(t): int(w) for t, w in state.get("widths", {}).items()}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._tasks_repr()}"


class CPGBatchNorm2d(_PerTaskBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with per-task parameters and statistics (same arguments)."""

    _plain_type = nn.BatchNorm2d

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_cpg()


class CPGBatchNorm1d(_PerTaskBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` with per-task parameters and statistics (same arguments)."""

    _plain_type = nn.BatchNorm1d

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_cpg()


class CPGBatchNorm3d(_PerTaskBatchNorm, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` with per-task parameters and statistics (same arguments)."""

    _plain_type = nn.BatchNorm3d

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_cpg()


class CPGSyncBatchNorm(_PerTaskBatchNorm, nn.SyncBatchNorm):
    """``nn.SyncBatchNorm`` with per-task parameters and statistics (same arguments).

    The training task's statistics are synchronised across processes as
    SyncBatchNorm does; a finished task's are frozen, so it needs no sync.
    """

    _plain_type = nn.SyncBatchNorm

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_cpg()

    @classmethod
    def _init_options(cls, bn) -> dict:
        return {"process_group": bn.process_group}


# Each torch batch norm ``convert`` makes per task, and what it becomes.
PER_TASK_NORMS = {
    nn.BatchNorm1d: CPGBatchNorm1d,
    nn.BatchNorm2d: CPGBatchNorm2d,
    nn.BatchNorm3d: CPGBatchNorm3d,
    nn.SyncBatchNorm: CPGSyncBatchNorm,
}
