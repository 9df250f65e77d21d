"""One finished task as a plain dense network, and a fingerprint of it."""

from __future__ import annotations

import copy
import hashlib
import itertools

import torch
from torch import nn

from .tasks import cpg_modules, task_state


def export_task(model: nn.Module, t: int) -> nn.Module:
    """A copy of ``model`` computing finished task ``t`` with plain torch modules.

    CPG layers become ``nn.Conv2d``/``nn.Linear`` with the task's inactive
    weights zeroed, at the width the task was trained with; batch norms carry
    its statistics, the heads become its own ``nn.Linear``. The copy needs
    no extension to run and shares no tensor with ``model``.
    """
    finished, _ = task_state(model)
    if t not in finished:
        raise ValueError(f"task {t} is not a finished task; finished: {finished}")
    # deepcopy consults the memo first: each CPG module is replaced by its
    # export instead of being copied with every task's data.
    memo = {id(m): m.export_task(t) for _, m in cpg_modules(model)}
    return copy.deepcopy(model, memo)


def fingerprint(model: nn.Module, t: int) -> str:
    """SHA-256 of everything finished task ``t`` computes with.

    Equal fingerprints mean bit-identical effective weights, biases,
    batch-norm statistics and head: a check of exact unforgetting.
    """
    digest = hashlib.sha256()
    for name, tensor in export_task(model, t).state_dict().items():
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{data.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose tensors live on the meta device: a free dry run
    (of a checkpoint load, of growth) that allocates no memory."""
    memo = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)
