"""Buffers outside every CPG module: all tasks share them, so training must leave them alone.

``convert`` makes the stateful layers it knows per task and refuses the norm
layers it cannot; a buffer of any other module (a running average, a counter)
would still be shared by every task, and training one would change the others'
outputs. ``begin_task`` remembers those buffers and ``finalize_task`` refuses
to finish a task that changed one, naming it, before anything is frozen.
"""

from __future__ import annotations

import torch
from torch import nn

from ..nn import CPGModule

_SNAPSHOT = "_cpg_shared_buffers"


def shared_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """``name -> buffer`` of every buffer that belongs to no CPG module."""
    inside = {id(b) for m in model.modules() if isinstance(m, CPGModule) for b in m.buffers()}
    return {name: b for name, b in model.named_buffers() if id(b) not in inside}


def remember(model: nn.Module) -> None:
    """Snapshot the shared buffers as the training task begins."""
    setattr(model, _SNAPSHOT, {n: b.detach().clone() for n, b in shared_buffers(model).items()})


def check_unchanged(model: nn.Module, t: int) -> None:
    """RuntimeError naming the first shared buffer that changed since task ``t`` began."""
    before = getattr(model, _SNAPSHOT, None) or {}
    now = shared_buffers(model)
    for name, old in before.items():
        new = now.get(name)
        if new is None or (
            new.shape == old.shape and new.dtype == old.dtype and torch.equal(new, old)
        ):
            continue
        module = name.rpartition(".")[0] or "<root>"
        raise RuntimeError(
            f"buffer {name} changed while task {t} trained: {module} is no CPG module, so "
            f"every task shares it and training one changes the others' outputs; keep "
            f"{module} in eval mode (or frozen) while training, or replace it with a layer "
            f"convert() makes per task"
        )
