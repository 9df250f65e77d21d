"""DistributedDataParallel plumbing: who am I, sharded data, summed counts.

Everything here degrades to the single-process case when no process group
is initialized, so the trainer has one code path.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def active() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` under DDP when distributed (build anew whenever its parameters change).

    Buffers are not broadcast on every forward: a CPG model's buffers include
    the owner map (a byte per weight), identical on every process anyway.
    Batch-norm statistics, the one buffer that differs, are averaged by
    ``average_batch_norm`` after training instead.
    """
    if not active():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def average_batch_norm(model: nn.Module) -> None:
    """Average the running statistics of ``model``'s batch norms over all processes."""
    if not active():
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            for stats in (module.running_mean, module.running_var):
                dist.all_reduce(stats)
                stats /= world_size()


def sum_counts(values: list[int], device: torch.device) -> list[int]:
    """Element-wise sum of ``values`` over all processes."""
    if not active():
        return values
    backend_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=backend_device)
    dist.all_reduce(tensor)
    return [int(v) for v in tensor.tolist()]


def init_from_environment(device: str) -> str:
    """Join the process group ``torchrun`` describes (if any); return this process's device.

    Under torchrun every process gets ``LOCAL_RANK``: a ``cuda`` device
    becomes ``cuda:LOCAL_RANK`` and NCCL is used; CPU processes use gloo.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    cuda = device.startswith("cuda")
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    return device


def close() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
