"""Task sequences for continual learning.

* ``digits``: the embedded default, scikit-learn's bundled digits as five
  2-class tasks (no download);
* ``permuted``: the same digits as ten 10-class tasks, each with its own
  pixel order (embedded);
* ``transformed``: the same digits as six 10-class tasks, each under its own
  transform: rotated, upside down, inverted, blurred, noisy (embedded);
* ``cifar100``: the paper's 20 superclass tasks of 5 classes, from local
  ``cifar-100-python`` files;
* ``folder``: a user's own tasks from image files;
* ``synthetic``: Gaussian clusters, for tests.

``load_tasks(name, ...)`` gives any of them by name.
"""

from __future__ import annotations

from .cifar100 import cifar100_tasks
from .digits import digits_tasks, permuted_digits_tasks, transformed_digits_tasks
from .folder import folder_tasks
from .synthetic import synthetic_tasks
from .tasks import ImageTensors, Task

DATASETS = ("digits", "permuted", "transformed", "cifar100", "folder", "synthetic")
EMBEDDED = ("digits", "permuted", "transformed")
_NEEDS_ROOT = ("cifar100", "folder")


def load_tasks(
    name: str,
    root: str | None = None,
    num_tasks: int | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
) -> list[Task]:
    """The task sequence ``name`` (one of ``DATASETS``), its first ``num_tasks`` tasks.

    ``root`` is the data folder of ``cifar100`` and ``folder``;
    ``val_fraction`` (None: the source's default) the share of training data
    held out for the accuracy goal, 0 to use the test set; ``seed`` fixes
    the splits.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    if name in _NEEDS_ROOT and root is None:
        raise ValueError(f"the {name} data set needs its folder (--data-dir)")
    options = {} if val_fraction is None else {"val_fraction": val_fraction}
    if name == "synthetic" and options:
        raise ValueError("the synthetic tasks have fixed splits: a validation share does not apply")
    if name == "digits":
        tasks = digits_tasks(seed=seed, **options)
    elif name == "permuted":
        tasks = permuted_digits_tasks(seed=seed, **options)
    elif name == "transformed":
        tasks = transformed_digits_tasks(seed=seed, **options)
    elif name == "cifar100":
        tasks = cifar100_tasks(root, seed=seed, **options)
    elif name == "folder":
        tasks = folder_tasks(root, seed=seed, **options)
    else:
        tasks = synthetic_tasks(seed=seed)
    if num_tasks is not None:
        if not 1 <= num_tasks <= len(tasks):
            raise ValueError(f"{name} has {len(tasks)} tasks; cannot take {num_tasks}")
        tasks = tasks[:num_tasks]
    return tasks


__all__ = [
    "DATASETS",
    "EMBEDDED",
    "ImageTensors",
    "Task",
    "cifar100_tasks",
    "digits_tasks",
    "folder_tasks",
    "load_tasks",
    "permuted_digits_tasks",
    "synthetic_tasks",
    "transformed_digits_tasks",
]
