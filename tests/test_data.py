"""Task sequences: the embedded digits, CIFAR-100 from its files, image folders, synthetic."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
import torch

from cpg_kernels.data import (
    cifar100_tasks,
    digits_tasks,
    folder_tasks,
    load_tasks,
    permuted_digits_tasks,
    synthetic_tasks,
    transformed_digits_tasks,
)
from cpg_kernels.data.tasks import stratified_split


def _labels(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][1] for i in range(len(dataset))])


def _inputs(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


# --------------------------------------------------------------------- digits


def test_digits_are_five_balanced_two_class_tasks():
    tasks = digits_tasks()
    assert [t.classes for t in tasks] == [
        ("0", "1"),
        ("2", "3"),
        ("4", "5"),
        ("6", "7"),
        ("8", "9"),
    ]
    total = 0
    for task in tasks:
        assert task.num_classes == 2 and task.input_shape == (1, 8, 8)
        sizes = [len(task.train), len(task.val), len(task.test)]
        total += sum(sizes)
        assert sizes[0] > sizes[2] > sizes[1] > 60
        for split in (task.train, task.val, task.test):
            counts = torch.bincount(_labels(split), minlength=2)
            assert abs(int(counts[0]) - int(counts[1])) <= 0.05 * int(counts.sum())
        x = _inputs(task.train)
        assert x.shape[1:] == (1, 8, 8)
        assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-2  # own statistics
    assert total == 1797  # every image used once


def test_digits_splits_are_seeded_and_can_validate_on_test():
    first, again, other = digits_tasks(seed=0), digits_tasks(seed=0), digits_tasks(seed=1)
    assert torch.equal(_inputs(first[0].val), _inputs(again[0].val))
    assert not torch.equal(_inputs(first[0].val), _inputs(other[0].val))
    paper = digits_tasks(val_fraction=0.0)
    assert paper[0].val is paper[0].test
    with pytest.raises(ValueError, match="val_fraction"):
        digits_tasks(val_fraction=1.0)


def test_permuted_digits_are_ten_ten_class_tasks_each_in_its_own_pixel_order():
    tasks = permuted_digits_tasks(seed=0)
    assert len(tasks) == 10 and all(t.num_classes == 10 for t in tasks)
    assert tasks[0].name == "digits unpermuted" and tasks[1].name == "digits permutation 1"
    # The same images in every task, their pixels reordered: the sorted pixels agree.
    first, second = tasks[0].test.images, tasks[1].test.images
    assert first.shape == second.shape == (len(tasks[0].test), 1, 8, 8)
    assert not torch.equal(first, second)
    assert torch.equal(first.flatten(1).sort(1).values, second.flatten(1).sort(1).values)
    assert torch.equal(tasks[0].test.labels, tasks[9].test.labels)
    # The permutations belong to the sequence; the seed draws the split.
    again, other = permuted_digits_tasks(seed=0), permuted_digits_tasks(seed=1)
    assert torch.equal(again[3].test.images, tasks[3].test.images)
    assert not torch.equal(other[0].test.labels, tasks[0].test.labels)
    with pytest.raises(ValueError, match="num_tasks"):
        permuted_digits_tasks(num_tasks=0)


def test_transformed_digits_are_six_ten_class_tasks_under_their_transforms():
    tasks = transformed_digits_tasks(seed=0)
    assert [t.name for t in tasks] == [
        "digits upright",
        "digits rotated 90",
        "digits upside down",
        "digits inverted",
        "digits blurred",
        "digits noisy",
    ]
    upright = tasks[0].test.images
    assert torch.equal(tasks[1].test.images, torch.rot90(upright, 1, (2, 3)))
    assert torch.equal(tasks[2].test.images, upright.flip(2))
    assert torch.allclose(tasks[3].test.images, 1 - upright)
    for task in tasks:
        x = _inputs(task.train)
        assert task.num_classes == 10 and x.shape[1:] == (1, 8, 8)
        assert abs(float(x.mean())) < 1e-4  # normalized with its own statistics
    assert len(tasks[0].train) + len(tasks[0].val) + len(tasks[0].test) == 1797


def test_stratified_split_keeps_every_class_in_proportion():
    labels = torch.tensor([0] * 10 + [1] * 20)
    train, val = stratified_split(labels, (0.7, 0.3), seed=0)
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert len(train) + len(val) == 30
    assert torch.bincount(labels[val]).tolist() == [3, 6]


# ------------------------------------------------------------------- CIFAR-100


def _fake_cifar(root, per_class_train: int = 2, per_class_test: int = 1) -> None:
    """The cifar-100-python files with a few random images per class.

    Superclass c holds fine classes 5c..5c+4 here, named so that their
    alphabetical order is the reverse of their ids.
    """
    folder = root / "cifar-100-python"
    folder.mkdir()
    fine_names = [f"class_{99 - i:02d}" for i in range(100)]
    coarse_names = [f"super_{c:02d}" for c in range(20)]
    rng = np.random.default_rng(0)
    for part, count in (("train", per_class_train), ("test", per_class_test)):
        fine = np.repeat(np.arange(100), count)
        data = {
            b"data": rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8),
            b"fine_labels": fine.tolist(),
            b"coarse_labels": (fine // 5).tolist(),
        }
        with open(folder / part, "wb") as f:
            pickle.dump(data, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump(
            {
                b"fine_label_names": [n.encode() for n in fine_names],
                b"coarse_label_names": [n.encode() for n in coarse_names],
            },
            f,
        )


def test_cifar100_gives_the_papers_twenty_superclass_tasks(tmp_path):
    _fake_cifar(tmp_path, per_class_train=10)
    tasks = cifar100_tasks(tmp_path, val_fraction=0.2)
    assert [t.name for t in tasks] == [f"super_{c:02d}" for c in range(20)]
    first = tasks[0]
    # Classes in the order of their fine label ids, which CIFAR assigns alphabetically.
    assert first.classes == ("class_99", "class_98", "class_97", "class_96", "class_95")
    assert (len(first.train), len(first.val), len(first.test)) == (40, 10, 5)
    assert sorted(_labels(first.test).tolist()) == [0, 1, 2, 3, 4]
    assert first.input_shape == (3, 32, 32) and first.train[0][0].shape == (3, 32, 32)
    assert first.train.augment and not first.val.augment and not first.test.augment
    # The same folder, given as the cifar-100-python folder itself; validation on test.
    paper = cifar100_tasks(tmp_path / "cifar-100-python", val_fraction=0.0)
    assert paper[3].val is paper[3].test and len(paper[3].train) == 50


def test_cifar100_missing_says_what_to_fetch(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-100-python.tar.gz"):
        cifar100_tasks(tmp_path)


# ---------------------------------------------------------------- image folder


def test_folder_tasks_need_pillow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now fails
    with pytest.raises(RuntimeError, match="pip install pillow"):
        folder_tasks(tmp_path)


def test_folder_tasks_read_the_papers_layout(tmp_path):
    image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for split, count in (("train", 5), ("test", 2)):
        for task, classes in (("b_second", ("x", "y", "z")), ("a_first", ("cat", "dog"))):
            for name in classes:
                folder = tmp_path / split / task / name
                folder.mkdir(parents=True)
                for i in range(count):
                    size = (12, 10) if i else (10, 10)  # one odd size: resized
                    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                    image.fromarray(pixels).save(folder / f"{i}.png")
    tasks = folder_tasks(tmp_path, val_fraction=0.2, image_size=8)
    assert [(t.name, t.classes) for t in tasks] == [
        ("a_first", ("cat", "dog")),
        ("b_second", ("x", "y", "z")),
    ]
    first = tasks[0]
    assert (len(first.train), len(first.val), len(first.test)) == (8, 2, 4)
    assert first.input_shape == (3, 8, 8) and first.test[0][0].shape == (3, 8, 8)
    assert sorted(_labels(first.test).tolist()) == [0, 0, 1, 1]
    native = folder_tasks(tmp_path, val_fraction=0.0)  # the first image's size: 10x10
    assert native[1].test[0][0].shape == (3, 10, 10) and native[1].val is native[1].test


def test_folder_tasks_explain_a_wrong_layout(tmp_path):
    pytest.importorskip("PIL.Image")
    with pytest.raises(FileNotFoundError, match="ROOT/train/<task>/<class>"):
        folder_tasks(tmp_path)
    (tmp_path / "train" / "t" / "c").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        folder_tasks(tmp_path)


# ------------------------------------------------------------------ synthetic


def test_synthetic_tasks_are_seeded_and_sized():
    tasks = synthetic_tasks(num_tasks=2, classes=3, shape=(4,), train=30, val=9, test=6, seed=1)
    assert [len(t.train) for t in tasks] == [30, 30] and tasks[0].num_classes == 3
    assert tasks[0].train[0][0].shape == (4,)
    again = synthetic_tasks(num_tasks=2, classes=3, shape=(4,), train=30, val=9, test=6, seed=1)
    assert torch.equal(tasks[1].test.tensors[0], again[1].test.tensors[0])
    noisy = synthetic_tasks(num_tasks=1, train=400, label_noise=1.0)
    clean = synthetic_tasks(num_tasks=1, train=400)
    assert (noisy[0].train.tensors[1] != clean[0].train.tensors[1]).float().mean() > 0.3


# ------------------------------------------------------------------ load_tasks


def test_load_tasks_by_name(tmp_path):
    assert len(load_tasks("digits", num_tasks=2)) == 2
    assert len(load_tasks("permuted")) == 10 and len(load_tasks("transformed", num_tasks=3)) == 3
    assert len(load_tasks("synthetic")) == 3
    with pytest.raises(ValueError, match="unknown data set"):
        load_tasks("mnist")
    with pytest.raises(ValueError, match="--data-dir"):
        load_tasks("cifar100")
    with pytest.raises(ValueError, match="cannot take 6"):
        load_tasks("digits", num_tasks=6)
    _fake_cifar(tmp_path)
    assert load_tasks("cifar100", str(tmp_path), val_fraction=0.5)[0].name == "super_00"
