"""The embedded sequences, all from scikit-learn's bundled handwritten digits.

``sklearn.datasets.load_digits`` ships with scikit-learn (1797 images of 8x8
pixels, 16 grey levels, no download). Three sequences come from it:

* ``digits_tasks``: 5 tasks of 2 classes, task ``k`` tells digit ``2k`` from
  ``2k+1``. Easy: each task needs few features, so it checks the mechanics.
* ``permuted_digits_tasks``: 10 tasks of all 10 digits, task ``k`` sees the
  pixels in an order of its own (task 1 unpermuted). The tasks share no
  spatial structure, so reusing older weights helps little: it tests how
  well capacity is shared out over many tasks.
* ``transformed_digits_tasks``: 6 tasks of all 10 digits, each under a
  transform of its own (upright, rotated, upside down, inverted, blurred,
  noisy). The tasks share strokes and shapes but need different features:
  it tests picking (what to reuse) and growth (when the rest runs out).

Every task of a sequence uses the same class-stratified split of the
images, drawn with ``seed``; the permutations, transforms and noise are part
of the sequence and do not depend on ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .tasks import ImageTensors, Task, channel_stats, check_fraction, stratified_split

CLASSES_PER_TASK = 2
PERMUTED_TASKS = 10
_SEQUENCE_SEED = 12345  # fixes the permutations and the noise: they define the sequence


def digits_tasks(
    val_fraction: float = 0.2, test_fraction: float = 0.3, seed: int = 0
) -> list[Task]:
    """Five 2-class tasks from the digits data set, split class-stratified with ``seed``.

    ``val_fraction`` of each class goes to validation and ``test_fraction`` to
    test; ``val_fraction=0`` validates on the test set (the paper's protocol).
    """
    images, labels, splits = _split_digits(val_fraction, test_fraction, seed)
    tasks = []
    for first in range(0, 10, CLASSES_PER_TASK):
        digits_here = list(range(first, first + CLASSES_PER_TASK))
        split = {}
        for part, index in splits.items():
            keep = index[(labels[index] >= first) & (labels[index] < first + CLASSES_PER_TASK)]
            split[part] = (images[keep], labels[keep] - first)
        tasks.append(
            _task(
                "digits " + " vs ".join(map(str, digits_here)),
                tuple(map(str, digits_here)),
                split,
                val_fraction,
            )
        )
    return tasks


def permuted_digits_tasks(
    num_tasks: int = PERMUTED_TASKS,
    val_fraction: float = 0.2,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> list[Task]:
    """``num_tasks`` 10-class tasks, each with its own fixed pixel order (task 1: none)."""
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"num_tasks must be an int >= 1, got {num_tasks!r}")
    images, labels, splits = _split_digits(val_fraction, test_fraction, seed)
    generator = torch.Generator().manual_seed(_SEQUENCE_SEED)
    pixels = images[0].numel()
    tasks = []
    for k in range(num_tasks):
        order = torch.arange(pixels) if k == 0 else torch.randperm(pixels, generator=generator)
        permuted = images.flatten(1)[:, order].view_as(images)
        name = "digits unpermuted" if k == 0 else f"digits permutation {k}"
        tasks.append(_all_digits(name, permuted, labels, splits, val_fraction))
    return tasks


def _blur(x: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 16).view(1, 1, 3, 3)
    return torch.nn.functional.conv2d(x, kernel, padding=1)


def _noisy(x: torch.Tensor) -> torch.Tensor:
    generator = torch.Generator().manual_seed(_SEQUENCE_SEED + 1)
    return x + 0.35 * torch.randn(x.shape, generator=generator)


TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "upright": lambda x: x,
    "rotated 90": lambda x: torch.rot90(x, 1, (2, 3)),
    "upside down": lambda x: x.flip(2),
    "inverted": lambda x: 1.0 - x,
    "blurred": _blur,
    "noisy": _noisy,
}


def transformed_digits_tasks(
    val_fraction: float = 0.2, test_fraction: float = 0.3, seed: int = 0
) -> list[Task]:
    """Six 10-class tasks: the digits under each transform of ``TRANSFORMS`` in turn."""
    images, labels, splits = _split_digits(val_fraction, test_fraction, seed)
    return [
        _all_digits(f"digits {name}", transform(images), labels, splits, val_fraction)
        for name, transform in TRANSFORMS.items()
    ]


def _all_digits(
    name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    splits: dict[str, torch.Tensor],
    val_fraction: float,
) -> Task:
    split = {part: (images[index], labels[index]) for part, index in splits.items()}
    return _task(name, tuple(map(str, range(10))), split, val_fraction)


def _task(name: str, classes: tuple[str, ...], split: dict, val_fraction: float) -> Task:
    """A task from its ``(images, labels)`` per split, normalized with its training statistics."""
    mean, std = channel_stats(split["train"][0])
    sets = {part: ImageTensors(x, y, mean, std) for part, (x, y) in split.items()}
    return Task(
        name,
        classes,
        sets["train"],
        sets["val"] if val_fraction else sets["test"],
        sets["test"],
        tuple(split["train"][0].shape[1:]),
    )


def _split_digits(val_fraction: float, test_fraction: float, seed: int):
    """All digit images ``[1797, 1, 8, 8]`` in [0, 1], labels, and the split's indices."""
    check_fraction("val_fraction", val_fraction)
    check_fraction("test_fraction", test_fraction)
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise RuntimeError(
            "the digits data set comes with scikit-learn: pip install scikit-learn"
        ) from None
    digits = load_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0
    labels = torch.from_numpy(digits.target).long()
    train_fraction = 1.0 - val_fraction - test_fraction
    if train_fraction <= 0:
        raise ValueError("val_fraction + test_fraction leave no training data")
    parts = stratified_split(labels, (train_fraction, val_fraction, test_fraction), seed)
    return images, labels, dict(zip(("train", "val", "test"), parts, strict=True))
