"""The inner loops: seeded data loaders, training epochs, accuracy.

They know nothing of CPG: the model computes whatever task is selected.
Under DistributedDataParallel each process trains and evaluates on its
shard and the correct counts are summed over processes, so every process
sees the same accuracy and takes the same decisions.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Subset

from . import distributed


def train_loader(dataset: Dataset, batch_size: int, seed: int) -> DataLoader:
    """Shuffled batches, the order drawn from ``seed`` (a shard per process under DDP).

    A last batch of one sample is dropped: batch norm cannot train on it.
    """
    if distributed.active():
        sampler = DistributedSampler(
            dataset, distributed.world_size(), distributed.rank(), shuffle=True, seed=seed
        )
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=len(sampler) % batch_size == 1
    )


def run_epochs(
    model: nn.Module,
    optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
    loader: DataLoader,
    epochs: int,
    device: torch.device,
    on_step: Callable[[float], None] | None = None,
    after_step: Callable[[], object] | None = None,
    first_epoch: int = 0,
) -> None:
    """``epochs`` passes of cross-entropy training over ``loader``; every step
    steps each optimizer (e.g. one for the weights and one for the masks),
    then calls ``after_step`` (to step learning-rate schedules, say).
    ``first_epoch`` numbers the passes (it reshuffles a distributed sampler)."""
    if isinstance(optimizers, torch.optim.Optimizer):
        optimizers = [optimizers]
    model.train()
    for epoch in range(first_epoch, first_epoch + epochs):
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            if after_step is not None:
                after_step()
            if on_step is not None:
                on_step(loss.item())


def schedule_factor(name: str, progress: float) -> float:
    """The learning-rate multiplier of schedule ``name`` at ``progress`` in [0, 1].

    ``constant``: 1. ``step``: x0.1 from half the phase and x0.01 from 80%
    (the paper's code: x0.1 at epochs 50 and 80 of 100). ``cosine``: from 1
    down to 0 along half a cosine. ``paper`` (for picking masks, the paper's
    code): 1, x0.2 from half the phase, 0 from 70% on, so the weights finish
    training on a fixed selection.
    """
    if name == "constant":
        return 1.0
    if name == "step":
        return 1.0 if progress < 0.5 else 0.1 if progress < 0.8 else 0.01
    if name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    if name == "paper":
        return 1.0 if progress < 0.5 else 0.2 if progress < 0.7 else 0.0
    raise ValueError(f"unknown schedule {name!r}")


def lr_scheduler(
    optimizer: torch.optim.Optimizer, steps: int, schedule: str, mask_schedule: str = "same"
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` over ``steps``: ``schedule`` for every parameter group,
    ``mask_schedule`` for the picking masks' (``"same"``: ``schedule`` too)."""
    steps = max(steps, 1)
    mask = schedule if mask_schedule == "same" else mask_schedule
    names = [
        mask if group.get("cpg_part") == "masks" else schedule for group in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [functools.partial(_factor_at, name, steps) for name in names]
    )


def _factor_at(name: str, steps: int, step: int) -> float:
    return schedule_factor(name, step / steps)


def copy_state(model: nn.Module) -> dict:
    """A detached copy of ``model.state_dict()`` (tensors cloned), to restore later."""
    return {
        k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
        for k, v in model.state_dict().items()
    }


@torch.no_grad()
def accuracy(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on ``dataset``, over all processes."""
    shard = dataset
    if distributed.active():
        shard = Subset(dataset, range(distributed.rank(), len(dataset), distributed.world_size()))
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in DataLoader(shard, batch_size=batch_size):
        prediction = model(x.to(device)).argmax(1)
        correct += int((prediction == y.to(device)).sum())
        total += y.shape[0]
    model.train(was_training)
    correct, total = distributed.sum_counts([correct, total], device)
    if total == 0:
        raise ValueError("cannot measure accuracy on an empty data set")
    return correct / total
