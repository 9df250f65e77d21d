"""What a task is, and the small pieces every task source shares.

A task sequence is a list of :class:`Task`: each a classification problem
with its own classes (labels ``0..num_classes-1``) and its own train,
validation and test sets. The trainer checks its accuracy goal on ``val``
and reports accuracy on ``test``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset


@dataclass(frozen=True)
class Task:
    """One task of a sequence: a name, class names and three splits."""

    name: str
    classes: tuple[str, ...]
    train: Dataset
    val: Dataset
    test: Dataset
    input_shape: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class ImageTensors(Dataset):
    """Images held in memory, normalized per channel, optionally augmented.

    ``images``: ``[N, C, H, W]`` (any real or integer dtype, already on the
    scale ``mean``/``std`` refer to); ``labels``: ``[N]`` int64. ``augment``
    applies the usual CIFAR augmentation (random crop after 4-pixel zero
    padding, horizontal flip) from torch's global generator, so a seeded run
    draws the same crops.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        augment: bool = False,
    ):
        if images.dim() != 4 or labels.shape != images.shape[:1]:
            raise ValueError(
                f"images [N, C, H, W] and labels [N] expected, got "
                f"{tuple(images.shape)} and {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels.long()
        self.mean = mean.float().view(-1, 1, 1)
        self.std = std.float().view(-1, 1, 1)
        self.augment = augment

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = (self.images[i].float() - self.mean) / self.std
        if self.augment:
            x = random_crop_flip(x)
        return x, self.labels[i]


def random_crop_flip(x: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """A random ``H x W`` crop of ``x`` zero-padded by ``padding``, flipped half the time."""
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    top, left = torch.randint(0, 2 * padding + 1, (2,)).tolist()
    x = padded[..., top : top + h, left : left + w]
    return x.flip(-1) if torch.rand(()) < 0.5 else x


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of ``[N, C, H, W]`` images (std floored to avoid 0)."""
    flat = images.float().transpose(0, 1).reshape(images.shape[1], -1)
    return flat.mean(1), flat.std(1).clamp_min(1e-6)


def stratified_split(
    labels: torch.Tensor, fractions: tuple[float, ...], seed: int
) -> list[torch.Tensor]:
    """Indices of ``labels`` split into parts of the given ``fractions``, class by class.

    Each class is shuffled (seeded) and cut in the same proportions, so every
    part keeps the class balance; the last part takes the remainder.
    """
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in fractions]
    for c in labels.unique(sorted=True):
        members = (labels == c).nonzero().squeeze(1)
        members = members[torch.randperm(len(members), generator=generator)]
        start = 0
        for p, fraction in enumerate(fractions):
            last = p == len(fractions) - 1
            end = len(members) if last else start + round(fraction * len(members))
            parts[p].append(members[start:end])
            start = end
    return [torch.cat(p).sort().values for p in parts]


def check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
