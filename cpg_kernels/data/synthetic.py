"""Synthetic tasks for tests: Gaussian clusters around random class prototypes."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from .tasks import Task


def synthetic_tasks(
    num_tasks: int = 3,
    classes: int = 2,
    shape: tuple[int, ...] = (1, 8, 8),
    train: int = 64,
    val: int = 32,
    test: int = 32,
    noise: float = 1.0,
    label_noise: float = 0.0,
    seed: int = 0,
) -> list[Task]:
    """``num_tasks`` tasks of ``classes`` classes; sizes are samples per split and task.

    A sample is its class prototype (standard normal) plus ``noise`` times
    standard normal noise; ``label_noise`` is the fraction of labels replaced
    by random ones, which caps the reachable accuracy (useful to make an
    accuracy goal unreachable).
    """
    if num_tasks < 1 or classes < 2:
        raise ValueError(f"need at least 1 task and 2 classes, got {num_tasks} and {classes}")
    generator = torch.Generator().manual_seed(seed)
    tasks = []
    for t in range(num_tasks):
        prototypes = torch.randn(classes, *shape, generator=generator)
        splits = []
        for size in (train, val, test):
            labels = torch.arange(size) % classes
            x = prototypes[labels] + noise * torch.randn(size, *shape, generator=generator)
            flip = torch.rand(size, generator=generator) < label_noise
            labels = torch.where(
                flip, torch.randint(0, classes, (size,), generator=generator), labels
            )
            splits.append(TensorDataset(x, labels))
        tasks.append(
            Task(
                f"synthetic {t + 1}",
                tuple(f"class {c}" for c in range(classes)),
                *splits,
                tuple(shape),
            )
        )
    return tasks
