"""A user's own task sequence from image files, in the paper's folder layout.

    ROOT/train/<task>/<class>/<image>
    ROOT/test/<task>/<class>/<image>

Tasks are taken in sorted order of their folder names (name them ``01_cats``,
``02_cars``, ... to choose the order); a task's classes are its class folders,
sorted. Images are read with Pillow when they are used, as greyscale if the
task's first training image is greyscale and RGB otherwise, resized to
``image_size`` (default: the size of the task's first training image), and
normalized with the mean and std of the task's training images.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset

from .tasks import Task, check_fraction, random_crop_flip, stratified_split

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def folder_tasks(
    root: str | os.PathLike,
    val_fraction: float = 0.1,
    image_size: int | None = None,
    augment: bool = False,
    seed: int = 0,
) -> list[Task]:
    """The tasks under ``root`` (see the module docstring for the layout).

    ``val_fraction`` of each class's training images is held out for
    validation (0: validate on the test set); ``augment`` adds random
    padded crops and flips to training images.
    """
    check_fraction("val_fraction", val_fraction)
    image_module = _pillow()
    root = os.fspath(root)
    names = _subfolders(os.path.join(root, "train"), "tasks")
    return [
        _task(image_module, root, name, val_fraction, image_size, augment, seed) for name in names
    ]


def _task(
    image_module,
    root: str,
    name: str,
    val_fraction: float,
    image_size: int | None,
    augment: bool,
    seed: int,
) -> Task:
    classes = _subfolders(os.path.join(root, "train", name), f"classes of task {name!r}")
    train_files, train_labels = _files(os.path.join(root, "train", name), classes)
    test_files, test_labels = _files(os.path.join(root, "test", name), classes)
    reader = _Reader(image_module, train_files[0], image_size)
    mean, std = _stats(reader, train_files)
    test_set = ImageFiles(test_files, test_labels, reader, mean, std)
    if val_fraction:
        labels = torch.tensor(train_labels)
        fit, held = stratified_split(labels, (1 - val_fraction, val_fraction), seed)
        train_set = ImageFiles(
            [train_files[i] for i in fit], labels[fit].tolist(), reader, mean, std, augment
        )
        val_set = ImageFiles(
            [train_files[i] for i in held], labels[held].tolist(), reader, mean, std
        )
    else:
        train_set = ImageFiles(train_files, train_labels, reader, mean, std, augment)
        val_set = test_set
    shape = (reader.channels, reader.size[1], reader.size[0])
    return Task(name, tuple(classes), train_set, val_set, test_set, shape)


class ImageFiles(Dataset):
    """Image files read on access, normalized, optionally augmented."""

    def __init__(
        self,
        files: list[str],
        labels: list[int],
        reader: _Reader,
        mean: torch.Tensor,
        std: torch.Tensor,
        augment: bool = False,
    ):
        self.files, self.labels, self.reader = files, labels, reader
        self.mean, self.std = mean.view(-1, 1, 1), std.view(-1, 1, 1)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = (self.reader(self.files[i]) - self.mean) / self.std
        if self.augment:
            x = random_crop_flip(x)
        return x, torch.tensor(self.labels[i])


class _Reader:
    """Reads one image file as a float ``[C, H, W]`` tensor in [0, 1], at one size and mode."""

    def __init__(self, image_module, first_file: str, image_size: int | None):
        self.image = image_module
        with image_module.open(first_file) as first:
            self.mode = "L" if first.mode in ("1", "L", "I", "I;16", "F") else "RGB"
            self.size = (image_size, image_size) if image_size else first.size
        self.channels = 1 if self.mode == "L" else 3

    def __call__(self, path: str) -> torch.Tensor:
        with self.image.open(path) as img:
            img = img.convert(self.mode)
            if img.size != self.size:
                img = img.resize(self.size)
            data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        return data.view(self.size[1], self.size[0], self.channels).permute(2, 0, 1).float() / 255


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise RuntimeError(
            "the image-folder loader reads images with Pillow: pip install pillow"
        ) from None
    return Image


def _subfolders(path: str, what: str) -> list[str]:
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{path!r} is not a folder; expected ROOT/train/<task>/<class>/"
            "<image> and ROOT/test/<task>/<class>/<image>"
        )
    names = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise ValueError(f"no {what} under {path!r}")
    return names


def _files(path: str, classes: list[str]) -> tuple[list[str], list[int]]:
    files, labels = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(path, name)
        found = (
            sorted(
                os.path.join(folder, f)
                for f in os.listdir(folder)
                if f.lower().endswith(EXTENSIONS)
            )
            if os.path.isdir(folder)
            else []
        )
        if not found:
            raise ValueError(f"no images in {folder!r} (extensions: {', '.join(EXTENSIONS)})")
        files += found
        labels += [label] * len(found)
    return files, labels


def _stats(reader: _Reader, files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over ``files``, accumulated one image at a time."""
    total = torch.zeros(reader.channels, dtype=torch.float64)
    square = torch.zeros(reader.channels, dtype=torch.float64)
    count = 0
    for path in files:
        x = reader(path).double().flatten(1)
        total += x.sum(1)
        square += (x * x).sum(1)
        count += x.shape[1]
    mean = total / count
    std = (square / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-6)
    return mean.float(), std.float()
