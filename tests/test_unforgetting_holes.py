"""Holes in exact unforgetting that review found: stateful layers convert() left shared,
optimizers the guard cannot protect, checkpoints in another dtype, channels_last growth."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cpg_kernels as C
from cpg_kernels import lifecycle as L
from cpg_kernels import models
from cpg_kernels.nn import CPGBatchNorm3d, CPGSyncBatchNorm


def _x(shape=(4, 3, 8, 8), seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _learn(
    model: nn.Module, t: int, x: torch.Tensor, steps: int = 2, optimizer=None, finalize: bool = True
) -> None:
    C.begin_task(model, t, num_classes=3)
    model.train()
    optimizer = optimizer or C.make_optimizer(model, lr=0.05, momentum=0.9, weight_decay=5e-4)
    y = torch.arange(x.shape[0]) % 3
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    if finalize:
        C.prune(model, 0.5)
        C.finalize_task(model)


def _record(model: nn.Module, t: int, x: torch.Tensor):
    model.eval()
    with torch.no_grad(), C.task(model, t):
        return model(x), C.fingerprint(model, t)


def _assert_same(a, b) -> None:
    assert torch.equal(a[0], b[0]) and a[1] == b[1]


# ------------------------------------------------------------------ stateful layers


def test_sync_batch_norm_becomes_per_task():
    model = C.convert(
        nn.Sequential(
            nn.Conv2d(3, 4, 3),
            nn.SyncBatchNorm(4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 6 * 6, 3),
        )
    )
    assert type(model[1]) is CPGSyncBatchNorm
    x = _x()
    _learn(model, 1, x)
    before = _record(model, 1, x)
    _learn(model, 2, x + 1)  # other data: the live statistics move
    assert not torch.equal(model[1].running_mean, model[1].running_mean_1)
    _assert_same(_record(model, 1, x), before)
    assert type(C.export_task(model, 1)[1]) is nn.SyncBatchNorm


def test_batch_norm_3d_becomes_per_task():
    model = C.convert(
        nn.Sequential(
            nn.Unflatten(1, (1, 3)), nn.BatchNorm3d(1), nn.Flatten(), nn.Linear(3 * 8 * 8, 3)
        )
    )
    assert type(model[1]) is CPGBatchNorm3d
    x = _x()
    _learn(model, 1, x)
    before = _record(model, 1, x)
    _learn(model, 2, x * 3)
    _assert_same(_record(model, 1, x), before)


class _MyBatchNorm(nn.BatchNorm2d):
    pass


@pytest.mark.parametrize(
    "layer,what",
    [
        (_MyBatchNorm(4), "a _MyBatchNorm tracks running statistics"),
        (nn.InstanceNorm2d(4, track_running_stats=True), "track_running_stats=False"),
        (nn.LazyBatchNorm2d(), "a LazyBatchNorm2d"),
    ],
    ids=["subclass", "instance-norm", "lazy"],
)
def test_convert_refuses_statistics_it_would_share(layer, what):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), layer, nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    with pytest.raises(ValueError, match="^1: ") as err:
        C.convert(model)
    assert what in str(err.value)
    assert type(model[0]) is nn.Conv2d  # nothing was swapped


def test_instance_norm_without_statistics_is_accepted():
    model = C.convert(
        nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
        )
    )
    x = _x()
    _learn(model, 1, x)
    before = _record(model, 1, x)
    _learn(model, 2, x)
    _assert_same(_record(model, 1, x), before)


class _RunningMean(nn.Module):
    """A layer convert() does not know, with a buffer that training updates."""

    def __init__(self, features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("scale", torch.ones(features))  # never changes

    def forward(self, x):
        if self.training:
            self.mean.mul_(0.9).add_(x.detach().mean(0), alpha=0.1)
        return (x - self.mean) * self.scale


def test_finalize_refuses_a_task_that_changed_a_shared_buffer():
    model = C.convert(
        nn.Sequential(nn.Flatten(), nn.Linear(48, 8), _RunningMean(8), nn.Linear(8, 3))
    )
    x = _x((6, 3, 4, 4))
    with pytest.raises(RuntimeError, match=r"buffer 2\.mean changed while task 1 trained"):
        _learn(model, 1, x)
    assert C.task_state(model) == ([], 1)  # refused before anything was frozen
    model[2].mean.zero_()  # undone: the task may finish
    assert C.finalize_task(model) == 1
    before = _record(model, 1, x)
    # Trained with that layer in eval mode, as the message says, task 2 finishes and
    # task 1 stays exact.
    C.begin_task(model, 2, num_classes=3)
    model.train()
    model[2].eval()
    optimizer = C.make_optimizer(model, lr=0.05, momentum=0.9)
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(model(x), torch.arange(6) % 3).backward()
        optimizer.step()
    assert C.finalize_task(model) == 2
    _assert_same(_record(model, 1, x), before)


# ------------------------------------------------------------------ optimizers


def _mlp() -> nn.Module:
    return C.convert(nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 3)))


def _frozen_after(make, guarded: bool = True, steps: int = 3):
    """Train task 2 with ``make(model)``; return whether task 1 stayed bit-exact."""
    model, x = _mlp(), _x((6, 3, 4, 4))
    _learn(model, 1, x)
    before = _record(model, 1, x)
    C.begin_task(model, 2, num_classes=3)
    model.train()
    optimizer = make(model)
    if guarded:
        C.guard_optimizer(optimizer, model)
    y = torch.arange(6) % 3

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(steps):
        optimizer.step(closure)
    C.finalize_task(model)
    now = _record(model, 1, x)
    return torch.equal(now[0], before[0]) and now[1] == before[1]


def _groups(model, **kwargs):
    return L.param_groups(model, **kwargs)


# Every torch.optim optimizer that takes dense gradients; options exercise momentum and state.
SAFE = {
    "SGD": lambda m: torch.optim.SGD(
        _groups(m, weight_decay=1e-3), lr=0.1, momentum=0.9, nesterov=True
    ),
    "Adam": lambda m: torch.optim.Adam(_groups(m), lr=0.01, amsgrad=True),
    "AdamW": lambda m: torch.optim.AdamW(_groups(m, weight_decay=1e-2), lr=0.01),
    "Adamax": lambda m: torch.optim.Adamax(_groups(m), lr=0.01),
    "NAdam": lambda m: torch.optim.NAdam(_groups(m), lr=0.01),
    "RAdam": lambda m: torch.optim.RAdam(_groups(m), lr=0.01),
    "Adagrad": lambda m: torch.optim.Adagrad(_groups(m), lr=0.1),
    "Adadelta": lambda m: torch.optim.Adadelta(_groups(m)),
    "RMSprop": lambda m: torch.optim.RMSprop(_groups(m), lr=0.01, momentum=0.9, centered=True),
    "Rprop": lambda m: torch.optim.Rprop(_groups(m), lr=0.01),
    "Adafactor": lambda m: torch.optim.Adafactor(_groups(m), lr=0.01),
    # One group only (LBFGS takes no more), tagged so the guard knows it holds the weights.
    "LBFGS": lambda m: torch.optim.LBFGS(_groups(m, parts=("weights",)), lr=0.1, max_iter=3),
    "ASGD-lambd0": lambda m: torch.optim.ASGD(_groups(m), lr=0.1, lambd=0.0),
}


@pytest.mark.parametrize("name", sorted(SAFE))
def test_guarded_optimizers_keep_old_tasks_exact(name):
    assert _frozen_after(SAFE[name])


UNSAFE = {
    "ASGD": (lambda m: torch.optim.ASGD(_groups(m), lr=0.1), "lambd"),
    "Muon": (lambda m: torch.optim.Muon(_groups(m, parts=("weights",)), lr=0.1), "orthogonalises"),
}


@pytest.mark.parametrize("name", sorted(UNSAFE))
def test_guard_refuses_optimizers_that_move_frozen_weights(name):
    make, message = UNSAFE[name]
    assert not _frozen_after(make, guarded=False)  # the reason for refusing
    with pytest.raises(ValueError, match=message):
        _frozen_after(make)


def test_every_torch_optimizer_is_classified():
    known = {n.split("-")[0] for n in (*SAFE, *UNSAFE)} | {"SparseAdam"}  # sparse grads only
    everything = {
        n
        for n in dir(torch.optim)
        if isinstance(getattr(torch.optim, n), type)
        and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
        and n != "Optimizer"
    }
    assert everything <= known, f"classify {sorted(everything - known)} in this file"


# ------------------------------------------------------------------ checkpoints


def test_checkpoint_in_another_dtype_is_refused(tmp_path):
    model = C.convert(models.resnet18(10, width=1 / 16))
    x = _x((2, 3, 16, 16))
    _learn(model, 1, x, steps=1)
    C.save_checkpoint(model, tmp_path / "fp32.pt")
    other = C.convert(models.resnet18(10, width=1 / 16)).to(torch.bfloat16)
    before = {k: v.clone() for k, v in other.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.raises(
        ValueError,
        match=r"conv1\.weight is torch\.float32 in the checkpoint "
        r"but torch\.bfloat16 in the model",
    ):
        C.load_checkpoint(other, tmp_path / "fp32.pt")
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in before.items())
    C.load_checkpoint(other.float(), tmp_path / "fp32.pt")
    _assert_same(_record(other, 1, x), _record(model, 1, x))


# ------------------------------------------------------------------ channels_last


def test_channels_last_through_growth_stays_bit_exact():
    """A finished task computes on its slice of a grown layer in the layout it finished in
    (a plain copy of a channels_last slice would change the conv's summation order)."""
    model = C.convert(models.resnet18(10, width=1 / 16)).to(memory_format=torch.channels_last)
    x = _x((2, 3, 16, 16)).contiguous(memory_format=torch.channels_last)
    _learn(model, 1, x)
    first = _record(model, 1, x)
    L.grow(model, 1.5)
    assert model.layer2[0].conv2.weight.is_contiguous(memory_format=torch.channels_last)
    _assert_same(_record(model, 1, x), first)
    _learn(model, 2, x)
    second = _record(model, 2, x)
    L.grow(model, 1.25)
    _assert_same(_record(model, 1, x), first)
    _assert_same(_record(model, 2, x), second)
    _learn(model, 3, x)
    _assert_same(_record(model, 1, x), first)
    _assert_same(_record(model, 2, x), second)
