"""What every CPG module shares: its tasks, the selected task, persisted task state.

A CPG module knows its finished tasks (``tasks``, ascending), the one task being
trained (``training_task``) and the task its forward computes (``task``, chosen
with ``set_task``). Finished tasks are frozen: their data lives in per-task
buffers named ``<name>_<t>`` and their forward never lets a gradient reach a
shared parameter. A module that has no task at all computes exactly what the
torch module it replaces computes, so a freshly converted network is unchanged.

Task bookkeeping travels in ``state_dict`` as ``_extra_state`` (a small dict of
plain Python values); loading a state dict first rebuilds the per-task buffers
it names, so ``load_state_dict`` round-trips any number of tasks.
"""

from __future__ import annotations

import torch
from torch import nn

from ..masks import MAX_TASK

STATE_VERSION = 1


def check_task_id(t) -> int:
    """``t`` as an int task id in 1..255, or a ValueError."""
    if isinstance(t, bool) or not isinstance(t, int):
        raise ValueError(f"task ids are ints in 1..{MAX_TASK}, got {t!r}")
    if not 1 <= t <= MAX_TASK:
        raise ValueError(f"task ids are ints in 1..{MAX_TASK} (owner is uint8), got {t}")
    return t


def _where(prefix: str) -> str:
    return prefix.rstrip(".") or "<root>"


class CPGModule(nn.Module):
    """Base of every CPG module: task bookkeeping, task selection, state persistence.

    Subclasses call ``_init_tasks()`` after torch's ``__init__`` and implement
    the per-task hooks: ``begin_task``, ``finalize_task``, ``forget_task``,
    ``export_task``, ``task_tensors``, ``validate`` and ``_adopt_state``.
    """

    def _init_tasks(self) -> None:
        self.tasks: list[int] = []
        self.training_task: int | None = None
        self.task: int | None = None

    # ------------------------------------------------------------ selection

    def known_tasks(self) -> list[int]:
        """Finished tasks, then the training task if there is one."""
        extra = [self.training_task] if self.training_task is not None else []
        return self.tasks + extra

    def set_task(self, t: int | None) -> None:
        """Select the task the forward computes (``None``: no task)."""
        if t is not None and t not in self.known_tasks():
            raise ValueError(f"task {t} is unknown here; known tasks: {self.known_tasks()}")
        self.task = t

    def _selected_task(self) -> int | None:
        """The selected task; None only while the module has no task at all."""
        if self.task is None and self.known_tasks():
            raise RuntimeError(
                f"no task selected (known tasks: {self.known_tasks()}): call set_task(t) or use "
                "`with cpg_kernels.task(model, t):`"
            )
        return self.task

    # ------------------------------------------------------------ lifecycle

    def _start_task(self, t: int) -> None:
        check_task_id(t)
        if self.training_task is not None:
            raise RuntimeError(f"task {self.training_task} is still training: finalize it first")
        if self.tasks and t <= self.tasks[-1]:
            raise ValueError(f"task ids must increase: task {t} after tasks {self.tasks}")
        self.training_task = t
        self.task = t

    def _require_training(self) -> int:
        if self.training_task is None:
            raise RuntimeError("no task is training: call begin_task first")
        return self.training_task

    def _finish_task(self) -> int:
        t = self._require_training()
        self.tasks.append(t)
        self.training_task = None
        return t

    def _drop_task(self, t: int) -> None:
        if self.training_task is not None:
            raise RuntimeError(
                f"task {self.training_task} is training: finalize it before forgetting another task"
            )
        if t not in self.tasks:
            raise ValueError(f"task {t} is not a finished task here; finished: {self.tasks}")
        self.tasks.remove(t)
        for name in self._per_task_names():
            delattr(self, f"{name}_{t}")
        if self.task == t:
            self.task = None

    def _per_task_names(self) -> tuple[str, ...]:
        """Base names of this module's per-task buffers (``<name>_<t>``)."""
        return ()

    def task_tensors(self, t: int) -> list[torch.Tensor]:
        """The tensors that belong to finished task ``t`` alone (for size reports)."""
        return [self.get_buffer(f"{name}_{t}") for name in self._per_task_names()]

    def _validate_tasks(self) -> None:
        """Raise ValueError unless the task bookkeeping is well formed."""
        for t in self.known_tasks():
            check_task_id(t)
        if self.tasks != sorted(set(self.tasks)):
            raise ValueError(f"finished tasks must be unique and ascending, got {self.tasks}")
        if self.training_task is not None and self.tasks and self.training_task <= self.tasks[-1]:
            raise ValueError(f"training task {self.training_task} must follow tasks {self.tasks}")
        for t in self.tasks:
            for name in self._per_task_names():
                if f"{name}_{t}" not in self._buffers:
                    raise ValueError(f"task {t}: missing buffer {name}_{t}")

    # ---------------------------------------------------------- persistence

    def get_extra_state(self) -> dict:
        return {
            "version": STATE_VERSION,
            "tasks": list(self.tasks),
            "training_task": self.training_task,
        }

    def set_extra_state(self, state: dict) -> None:
        self.tasks = list(state["tasks"])
        self.training_task = state["training_task"]
        self.task = self.training_task

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        extra = state_dict.get(prefix + "_extra_state")
        if extra is not None:
            self._check_extra_state(extra, prefix)
            self._adopt_state(state_dict, prefix, extra)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _check_extra_state(self, extra, prefix: str) -> None:
        where = _where(prefix)
        if not isinstance(extra, dict) or extra.get("version") != STATE_VERSION:
            version = extra.get("version") if isinstance(extra, dict) else extra
            raise ValueError(
                f"{where}: CPG state version {version!r}, this cpg_kernels reads "
                f"version {STATE_VERSION}"
            )
        tasks, training = extra.get("tasks"), extra.get("training_task")
        if (
            not isinstance(tasks, list)
            or not all(isinstance(t, int) for t in tasks)
            or not (training is None or isinstance(training, int))
        ):
            raise ValueError(f"{where}: malformed CPG task state {extra!r}")

    def _adopt_state(self, state_dict, prefix: str, extra: dict) -> None:
        """Reshape this module to hold ``state_dict`` before torch copies it in."""
        for t in self.tasks:
            for name in self._per_task_names():
                delattr(self, f"{name}_{t}")
        self.set_extra_state(extra)
        self._register_placeholders(state_dict, prefix)

    def _register_placeholders(self, state_dict, prefix: str) -> None:
        """Empty per-task buffers shaped like the stored ones, for torch to fill.

        A buffer the state dict lacks gets an empty placeholder, so a strict
        load reports it as a missing key.
        """
        device = self._device()
        for t in self.tasks:
            for name in self._per_task_names():
                stored = state_dict.get(f"{prefix}{name}_{t}")
                placeholder = (
                    torch.empty(stored.shape, dtype=stored.dtype, device=device)
                    if isinstance(stored, torch.Tensor)
                    else torch.empty(0, device=device)
                )
                self.register_buffer(f"{name}_{t}", placeholder)

    def _device(self) -> torch.device:
        tensor = next(iter(self.parameters()), None)
        if tensor is None:
            tensor = next(iter(self.buffers()), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    def _tasks_repr(self) -> str:
        text = f"tasks={self.tasks}"
        if self.training_task is not None:
            text += f", training_task={self.training_task}"
        return text


def memory_format(t: torch.Tensor) -> torch.memory_format:
    """channels_last where the 4-D ``t`` is laid out so (its channels innermost, not also
    plain contiguous), else contiguous_format."""
    if (
        t.dim() == 4
        and t.is_contiguous(memory_format=torch.channels_last)
        and not t.is_contiguous()
    ):
        return torch.channels_last
    return torch.contiguous_format


def enlarged(tensor: torch.Tensor, shape, fill) -> torch.Tensor:
    """A new tensor of ``shape`` filled with ``fill``, ``tensor`` in its leading corner,
    in ``tensor``'s memory format (growth keeps a channels_last weight channels_last)."""
    out = torch.full(tuple(shape), fill, dtype=tensor.dtype, device=tensor.device)
    out = out.contiguous(memory_format=memory_format(tensor))
    out[tuple(slice(0, s) for s in tensor.shape)] = tensor
    return out


def narrow_channels(x: torch.Tensor, dim: int, width: int) -> torch.Tensor:
    """The first ``width`` channels of ``x`` along ``dim``, dense in ``x``'s memory format.

    After growth, a finished task sees only the channels it was trained with;
    a dense copy in the layout ``x`` has (NCHW or channels_last) gives its
    kernels the very input they saw before growth, so its output stays
    bit-identical.
    """
    if x.shape[dim] == width:
        return x
    return x.narrow(dim, 0, width).contiguous(memory_format=memory_format(x))


def pad_channels(y: torch.Tensor, dim: int, extra: int) -> torch.Tensor:
    """``y`` with ``extra`` zero channels appended along ``dim``."""
    if extra == 0:
        return y
    dim = dim % y.dim()
    pad = [0, 0] * (y.dim() - 1 - dim) + [0, extra]
    return torch.nn.functional.pad(y, pad)
