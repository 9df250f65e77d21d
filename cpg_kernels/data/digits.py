"""The embedded default: scikit-learn's bundled handwritten digits, as 5 tasks.

``sklearn.datasets.load_digits`` ships with scikit-learn (1797 images of 8x8
pixels, 16 grey levels, no download). Task ``k`` tells digit ``2k`` from
digit ``2k+1``: (0, 1), (2, 3), ..., (8, 9).
"""
from __future__ import annotations

import torch

from .tasks import ImageTensors, Task, channel_stats, check_fraction, stratified_split

CLASSES_PER_TASK = 2


def digits_tasks(val_fraction: float = 0.2, test_fraction: float = 0.3,
                 seed: int = 0) -> list[Task]:
    """Five 2-class tasks from the digits data set, split class-stratified with ``seed``.

    ``val_fraction`` of each class goes to validation and ``test_fraction`` to
    test; ``val_fraction=0`` validates on the test set (the paper's protocol).
    """
    check_fraction("val_fraction", val_fraction)
    check_fraction("test_fraction", test_fraction)
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise RuntimeError("the digits data set comes with scikit-learn: "
                           "pip install scikit-learn") from None
    digits = load_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0
    labels = torch.from_numpy(digits.target).long()
    train_fraction = 1.0 - val_fraction - test_fraction
    if train_fraction <= 0:
        raise ValueError("val_fraction + test_fraction leave no training data")
    train, val, test = stratified_split(labels, (train_fraction, val_fraction, test_fraction),
                                        seed)
    tasks = []
    for first in range(0, 10, CLASSES_PER_TASK):
        digits_here = list(range(first, first + CLASSES_PER_TASK))
        task_name = "digits " + " vs ".join(map(str, digits_here))
        split = {}
        for part, index in (("train", train), ("val", val), ("test", test)):
            keep = index[(labels[index] >= first) & (labels[index] < first + CLASSES_PER_TASK)]
            split[part] = (images[keep], labels[keep] - first)
        mean, std = channel_stats(split["train"][0])
        sets = {part: ImageTensors(x, y, mean, std) for part, (x, y) in split.items()}
        tasks.append(Task(task_name, tuple(map(str, digits_here)), sets["train"],
                          sets["val"] if val_fraction else sets["test"], sets["test"],
                          tuple(images.shape[1:])))
    return tasks
