"""Checkpoints: exact round trips, atomic writes, clear errors, size reports."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cpg_kernels import checkpoint, models
from cpg_kernels import lifecycle as L
from cpg_kernels.convert import convert


def _network(width: float = 1 / 16) -> nn.Module:
    return convert(models.resnet18(10, width=width))


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 3, (4,), generator=g)


def _train(model: nn.Module, t: int, steps: int = 2) -> None:
    x, y = _batch(t)
    model.train()
    optimizer = L.make_optimizer(model, lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def _history(model: nn.Module) -> nn.Module:
    """Task 1, growth, task 2 finished, task 3 in the middle of training."""
    for t in (1, 2):
        L.begin_task(model, t, num_classes=3)
        _train(model, t)
        L.prune(model, 0.5)
        L.finalize_task(model)
        if t == 1:
            L.grow(model, 1.5)
    L.begin_task(model, 3, num_classes=3)
    _train(model, 3)
    return model


def _logits(model: nn.Module, tasks) -> dict[int, torch.Tensor]:
    x, _ = _batch(99)
    model.eval()
    out = {}
    with torch.no_grad():
        for t in tasks:
            with L.task(model, t):
                out[t] = model(x)
    return out


def _state_hash(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            digest.update(value.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint of a model with history, its logits per task and its fingerprints."""
    model = _history(_network())
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    checkpoint.save_checkpoint(model, path, metadata={"epoch": 7, "note": "test"})
    return path, _logits(model, (1, 2, 3)), {t: L.fingerprint(model, t) for t in (1, 2)}


# ------------------------------------------------------------------- round trip


def test_round_trip_into_a_fresh_model_is_exact(saved):
    path, logits, prints = saved
    model = _network()
    assert checkpoint.load_checkpoint(model, path) == {"epoch": 7, "note": "test"}
    assert L.task_state(model) == ([1, 2], 3)
    assert model.conv1.out_channels == 6  # the fresh model grew to the stored width
    for t, expected in _logits(model, (1, 2, 3)).items():
        assert torch.equal(expected, logits[t]), f"task {t}"
    assert {t: L.fingerprint(model, t) for t in (1, 2)} == prints
    again = _network()
    checkpoint.load_checkpoint(again, path)
    assert _state_hash(again) == _state_hash(model)


def test_training_resumes_after_loading(saved):
    path, logits, _ = saved
    model = _network()
    checkpoint.load_checkpoint(model, path)
    _train(model, 3)
    L.finalize_task(model)
    now = _logits(model, (1, 2))
    assert all(torch.equal(now[t], logits[t]) for t in (1, 2))


# -------------------------------------------------------------------- atomicity


def test_save_replaces_atomically_and_leaves_no_temporaries(tmp_path, monkeypatch):
    model = _network()
    path = tmp_path / "model.pt"
    L.begin_task(model, 1, num_classes=3)
    checkpoint.save_checkpoint(model, path)
    checkpoint.save_checkpoint(model, path)
    assert os.listdir(tmp_path) == ["model.pt"]
    good = path.read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_checkpoint(model, path)
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["model.pt"]


# ----------------------------------------------------------------------- errors


def _rewrite(saved_path, tmp_path, edit) -> str:
    """A copy of the saved checkpoint with ``edit`` applied to its payload."""
    payload = torch.load(saved_path, weights_only=True)
    edit(payload)
    path = tmp_path / "edited.pt"
    torch.save(payload, path)
    return path


def _set(key, value):
    def edit(payload):
        payload["state_dict"][key] = value

    return edit


def _tamper_owner(payload):
    payload["state_dict"]["layer1.0.conv1.owner"][0, 0, 0, 0] = 9


def _tamper_bits(payload):
    payload["state_dict"]["conv1.bits_1"] = torch.zeros(4, 7, dtype=torch.int32)


def _tamper_tasks(payload):
    payload["state_dict"]["layer1.0.bn1._extra_state"]["training_task"] = None


def _tamper_state_version(payload):
    payload["state_dict"]["conv1._extra_state"]["version"] = 2


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda p: p.update(version=2), "format version 2"),
        (lambda p: p.update(format="other"), "not a cpg-kernels checkpoint"),
        (lambda p: p.pop("state_dict"), "lacks its state_dict"),
        (_tamper_owner, "layer1.0.conv1: owner values go up to 9 but the highest stored task is 3"),
        (_tamper_bits, "conv1: task 1: packed mask"),
        (_tamper_tasks, "disagree about tasks"),
        (_tamper_state_version, "CPG state version 2"),
        (_set("fc.template.bias", torch.zeros(4)), "size mismatch"),
        (lambda p: p["state_dict"].pop("layer2.0.conv1.owner"), "Missing key"),
    ],
    ids=[
        "version",
        "format",
        "no-state",
        "owner",
        "bits",
        "tasks",
        "module-version",
        "shape",
        "missing-key",
    ],
)
def test_load_rejects_bad_checkpoints_and_leaves_the_model_alone(saved, tmp_path, edit, message):
    path = _rewrite(saved[0], tmp_path, edit)
    model = _network()
    before = _state_hash(model)
    with pytest.raises(ValueError, match=message):
        checkpoint.load_checkpoint(model, path)
    assert _state_hash(model) == before


def test_load_rejects_damaged_files(saved, tmp_path):
    data = saved[0].read_bytes()
    truncated, garbage = tmp_path / "truncated.pt", tmp_path / "garbage.pt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage.write_bytes(b"not a checkpoint at all")
    for path in (truncated, garbage):
        with pytest.raises(ValueError, match="truncated or corrupt"):
            checkpoint.load_checkpoint(_network(), path)
    with pytest.raises(FileNotFoundError):
        checkpoint.load_checkpoint(_network(), tmp_path / "missing.pt")


def test_load_rejects_a_different_architecture(saved):
    with pytest.raises(ValueError, match="does not fit"):
        checkpoint.load_checkpoint(_network(width=1 / 8), saved[0])
    with pytest.raises(ValueError, match="does not fit"):
        checkpoint.load_checkpoint(convert(models.resnet50(10, width=1 / 16)), saved[0])


# ------------------------------------------------------------------ size report


def test_size_report():
    model = _network()
    for t in (1, 2, 3):
        L.begin_task(model, t, num_classes=3)
        L.prune(model, 0.6)
        L.finalize_task(model)
    report = checkpoint.size_report(model)
    layers = [layer for _, layer in L.masked_layers(model)]
    assert report.weights == sum(4 * layer.weight.numel() for layer in layers)
    assert report.owners == sum(layer.owner.numel() for layer in layers)
    assert report.masks == sum(
        4 * getattr(layer, f"bits_{t}").numel() for layer in layers for t in (1, 2, 3)
    )
    assert set(report.per_task) == {1, 2, 3} and report.masks < sum(report.per_task.values())
    assert report.total == sum(
        v.numel() * v.element_size() for v in model.state_dict().values() if torch.is_tensor(v)
    )
    exported = sum(
        v.numel() * v.element_size() for v in L.export_task(model, 1).state_dict().values()
    )
    assert report.independent == 3 * exported
    assert report.independent > report.total  # three tasks in one model beat three models
    assert "independent models" in str(report)
