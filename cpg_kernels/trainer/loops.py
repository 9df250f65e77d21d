"""The inner loops: seeded data loaders, training epochs, accuracy.

They know nothing of CPG: the model computes whatever task is selected.
Under DistributedDataParallel each process trains and evaluates on its
shard and the correct counts are summed over processes, so every process
sees the same accuracy and takes the same decisions.
"""
from __future__ import annotations

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
        sampler = DistributedSampler(dataset, distributed.world_size(), distributed.rank(),
                                     shuffle=True, seed=seed)
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                      drop_last=len(sampler) % batch_size == 1)


def run_epochs(model: nn.Module,
               optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
               loader: DataLoader, epochs: int, device: torch.device,
               on_step: Callable[[float], None] | None = None) -> None:
    """``epochs`` passes of cross-entropy training over ``loader``; every step
    steps each optimizer (e.g. one for the weights and one for the masks)."""
    if isinstance(optimizers, torch.optim.Optimizer):
        optimizers = [optimizers]
    model.train()
    for epoch in range(epochs):
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
            if on_step is not None:
                on_step(loss.item())


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
