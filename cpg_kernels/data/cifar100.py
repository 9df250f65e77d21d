"""CIFAR-100 as the paper's 20 tasks: one per superclass, its 5 classes each.

Reads the ``cifar-100-python`` files (``train``, ``test``, ``meta``) from
disk; nothing is downloaded. As in the paper's code, the tasks follow the
superclasses' order (alphabetical: aquatic_mammals, fish, ..., vehicles_2),
each task's classes are its 5 fine classes in alphabetical order, inputs are
normalized with the task's own training mean and std, and training images
are augmented with a random 4-pixel-padded crop and a horizontal flip.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import torch

from .tasks import ImageTensors, Task, channel_stats, check_fraction, stratified_split

ARCHIVE = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"


def cifar100_tasks(root: str | os.PathLike, val_fraction: float = 0.1, seed: int = 0) -> list[Task]:
    """The 20 superclass tasks from ``root`` (the ``cifar-100-python`` folder or its parent).

    ``val_fraction`` of each class's training images is held out for
    validation; ``val_fraction=0`` validates on the test set, as the paper did.
    """
    check_fraction("val_fraction", val_fraction)
    folder = _find_folder(os.fspath(root))
    meta = _unpickle(os.path.join(folder, "meta"))
    train, test = (_unpickle(os.path.join(folder, part)) for part in ("train", "test"))
    fine_names = [n.decode() if isinstance(n, bytes) else n for n in meta["fine_label_names"]]
    coarse_names = [n.decode() if isinstance(n, bytes) else n for n in meta["coarse_label_names"]]
    images = {part: _images(data) for part, data in (("train", train), ("test", test))}
    fine = {
        part: torch.tensor(data["fine_labels"]) for part, data in (("train", train), ("test", test))
    }
    coarse = {
        part: torch.tensor(data["coarse_labels"])
        for part, data in (("train", train), ("test", test))
    }

    tasks = []
    for c, name in enumerate(coarse_names):
        members = sorted(set(fine["train"][coarse["train"] == c].tolist()))
        local = torch.full((len(fine_names),), -1, dtype=torch.long)
        local[members] = torch.arange(len(members))
        pick = {part: (coarse[part] == c).nonzero().squeeze(1) for part in ("train", "test")}
        x_train, y_train = images["train"][pick["train"]], local[fine["train"][pick["train"]]]
        x_test, y_test = images["test"][pick["test"]], local[fine["test"][pick["test"]]]
        mean, std = channel_stats(x_train)
        test_set = ImageTensors(x_test, y_test, mean, std)
        if val_fraction:
            fit, held = stratified_split(y_train, (1 - val_fraction, val_fraction), seed + c)
            train_set = ImageTensors(x_train[fit], y_train[fit], mean, std, augment=True)
            val_set = ImageTensors(x_train[held], y_train[held], mean, std)
        else:
            train_set = ImageTensors(x_train, y_train, mean, std, augment=True)
            val_set = test_set
        tasks.append(
            Task(
                name,
                tuple(fine_names[m] for m in members),
                train_set,
                val_set,
                test_set,
                (3, 32, 32),
            )
        )
    return tasks


def _find_folder(root: str) -> str:
    for folder in (root, os.path.join(root, "cifar-100-python")):
        if all(os.path.isfile(os.path.join(folder, f)) for f in ("train", "test", "meta")):
            return folder
    raise FileNotFoundError(
        f"CIFAR-100 not found in {root!r}: download {ARCHIVE} and extract it there "
        "(it holds a cifar-100-python folder with train, test and meta)"
    )


def _unpickle(path: str) -> dict:
    # The official CIFAR files are Python pickles; latin1 reads their byte strings.
    with open(path, "rb") as f:
        data = pickle.load(f, encoding="latin1")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def _images(data: dict) -> torch.Tensor:
    """uint8 ``[N, 3, 32, 32]`` from the files' rows of 3072 bytes (R, G, B planes)."""
    return torch.from_numpy(np.asarray(data["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
