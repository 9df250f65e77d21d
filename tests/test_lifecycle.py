"""The task lifecycle on whole networks: exact unforgetting through tasks, growth, forgetting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cpg_kernels import lifecycle as L
from cpg_kernels import models
from cpg_kernels.convert import convert
from cpg_kernels.masks import unpack
from cpg_kernels.nn import CPGConv2d, CPGModule

BUILDERS = {
    "vgg16_bn": lambda: models.vgg16_bn(10, width=1 / 16, hidden=16, pool=1),
    "resnet18": lambda: models.resnet18(10, width=1 / 16),
    "resnet50": lambda: models.resnet50(10, width=1 / 16),
}


def _network(name: str = "resnet18") -> nn.Module:
    return convert(BUILDERS[name]())


def _batch(classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, classes, (4,), generator=g)


def _train(model: nn.Module, x, y, steps: int = 2, optimizer=None) -> None:
    model.train()
    optimizer = optimizer or L.make_optimizer(model, lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def _learn(
    model: nn.Module, t: int, classes: int = 4, sparsity: float = 0.5, picking: bool = True
) -> None:
    """Learn task ``t`` by hand: train, prune, retrain, finalize.

    A few steps barely move picking masks, so a third of each mask is pushed
    below the threshold, as longer training would: tasks use some older
    weights and leave others.
    """
    x, y = _batch(classes, seed=t)
    L.begin_task(model, t, num_classes=classes, picking=picking)
    _train(model, x, y)
    with torch.no_grad():
        for _, layer in L.masked_layers(model):
            if layer.mask is not None:
                layer.mask.masked_fill_(torch.rand_like(layer.mask) < 1 / 3, 0.0)
    L.prune(model, sparsity)
    _train(model, x, y, steps=1)
    L.finalize_task(model)


def _record(model: nn.Module, t: int, x) -> tuple[torch.Tensor, str]:
    """Task ``t``'s logits on ``x`` (eval mode) and its fingerprint."""
    model.eval()
    with torch.no_grad(), L.task(model, t):
        return model(x), L.fingerprint(model, t)


def _assert_unchanged(model: nn.Module, records: dict, x) -> None:
    for t, (logits, digest) in records.items():
        now, now_digest = _record(model, t, x)
        assert torch.equal(now, logits), f"task {t} logits changed"
        assert now_digest == digest, f"task {t} weights changed"


# ----------------------------------------------------------------- unforgetting


@pytest.mark.parametrize("name", ["vgg16_bn", "resnet18"])
def test_old_tasks_stay_bit_exact_after_later_tasks(name):
    model = _network(name)
    x, _ = _batch(seed=99)
    records = {}
    for t in (1, 2, 3):
        _learn(model, t)
        records[t] = _record(model, t, x)
        _assert_unchanged(model, records, x)
    assert L.task_state(model) == ([1, 2, 3], None)
    # Task 3 picked some older weights and left others: the test exercises picking.
    conv = model.get_submodule("layer1.0.conv1" if name == "resnet18" else "features.3")
    active = unpack(conv.bits_3, conv.weight.shape)
    for older in (1, 2):
        assert ((conv.owner == older) & active).any() and ((conv.owner == older) & ~active).any()


def test_packnet_picks_every_older_weight():
    model = _network()
    _learn(model, 1)
    _learn(model, 2, picking=False)
    for _, layer in L.masked_layers(model):
        assert torch.equal(unpack(layer.bits_2, layer.weight.shape), layer.owner > 0)


# ----------------------------------------------------------------- optimizer rule


def _second_task():
    """A network that finished task 1 and began task 2, with a snapshot of each layer's
    weight and of the entries task 2 must not move."""
    model = _network()
    _learn(model, 1)
    L.begin_task(model, 2, num_classes=3)
    x, y = _batch(3, seed=2)
    layers = L.masked_layers(model)
    frozen = {name: (layer.weight.detach().clone(), layer.owner != 2) for name, layer in layers}
    return model, x, y, layers, frozen


@pytest.mark.parametrize(
    "optimizer_class,options",
    [
        (torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
        (torch.optim.Adam, dict(lr=1e-3)),
    ],
    ids=["sgd", "adam"],
)
def test_optimizer_moves_only_the_training_tasks_weights(optimizer_class, options):
    model, x, y, layers, frozen = _second_task()
    optimizer = L.make_optimizer(model, optimizer_class, weight_decay=5e-4, **options)
    _train(model, x, y, steps=2, optimizer=optimizer)
    L.prune(model, 0.5)  # momentum from before the prune must not revive pruned weights
    _train(model, x, y, steps=2, optimizer=optimizer)
    for name, layer in layers:
        before, mask = frozen[name]
        assert torch.equal(layer.weight[mask], before[mask]), name
        assert not layer.weight[layer.owner == 0].any(), name
        assert not torch.equal(layer.weight, before), f"{name} did not train"


def test_separate_optimizers_for_weights_and_masks():
    """The paper's pairing: SGD with momentum and decay for weights, Adam for masks."""
    model, x, y, layers, frozen = _second_task()
    masks_before = {name: layer.mask.detach().clone() for name, layer in layers}
    sgd = torch.optim.SGD(
        L.param_groups(model, 5e-4, parts=("weights", "own")), lr=0.05, momentum=0.9
    )
    L.guard_optimizer(sgd, model)
    adam = torch.optim.Adam(L.param_groups(model, parts=("masks",)), lr=1e-3)
    L.guard_optimizer(adam, model)
    assert {g["cpg_part"] for g in sgd.param_groups} == {"weights", "own"}
    model.train()
    for _ in range(2):
        sgd.zero_grad()
        adam.zero_grad()
        F.cross_entropy(model(x), y).backward()
        sgd.step()
        adam.step()
    for name, layer in layers:
        before, mask = frozen[name]
        assert torch.equal(layer.weight[mask], before[mask]), name
        assert not torch.equal(layer.mask, masks_before[name]), f"{name} mask did not train"
    L.grow(model, 1.5)  # both optimizers now hold stale tensors of their own part
    for stale in (sgd, adam):
        with pytest.raises(RuntimeError, match="build a new one"):
            stale.step()
    with pytest.raises(ValueError, match="parts: expected a subset"):
        L.param_groups(model, parts=("bias",))


def test_a_plain_optimizer_would_move_frozen_weights():
    """Why the guard exists: weight decay and momentum reach every entry."""
    model = _network()
    _learn(model, 1)
    L.begin_task(model, 2, num_classes=3)
    conv = model.conv1
    before = conv.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    _train(model, *_batch(3), steps=2, optimizer=optimizer)
    owned_by_1 = conv.owner == 1
    assert not torch.equal(conv.weight[owned_by_1], before[owned_by_1])


def test_guard_refuses_stale_or_decaying_optimizers():
    model = _network()
    L.begin_task(model, 1, num_classes=4)
    stale = L.make_optimizer(model, lr=0.1)
    L.grow(model, 1.5)
    with pytest.raises(RuntimeError, match="build a new one"):
        _train(model, *_batch(), steps=1, optimizer=stale)
    decaying = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4)
    L.guard_optimizer(decaying, model)
    with pytest.raises(RuntimeError, match="weight decay"):
        _train(model, *_batch(), steps=1, optimizer=decaying)


def test_param_groups_refuse_unconverted_parameters():
    model = convert(
        nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4 * 30 * 30, 5)
        )
    )
    L.begin_task(model, 1, num_classes=2)
    with pytest.raises(ValueError, match=r"1\.weight, 1\.bias"):
        L.param_groups(model)
    model[1].requires_grad_(False)
    groups = L.param_groups(model, weight_decay=1e-4)
    assert [(g["cpg_part"], g["weight_decay"]) for g in groups] == [("weights", 0.0), ("own", 1e-4)]
    assert groups[0]["cpg_weight_decay"] == 1e-4


# ------------------------------------------------------------------ lifecycle steps


def test_prune_and_finalize():
    model = _network()
    L.begin_task(model, 1, num_classes=4)
    reached = L.prune(model, 0.75)
    assert set(reached) == {name for name, _ in L.masked_layers(model)}
    assert all(abs(s - 0.75) < 0.01 for s in reached.values())
    for _, layer in L.masked_layers(model):
        assert not layer.weight[layer.owner == 0].any()
    with pytest.raises(ValueError, match="sparsity"):
        L.prune(model, -0.1)
    assert L.finalize_task(model) == 1
    assert not any(name.endswith("mask") for name, _ in model.named_parameters())
    assert not any(p.requires_grad for p in model.fc.head(1).parameters())
    assert "running_mean_1" in dict(model.bn1.named_buffers())
    with pytest.raises(RuntimeError, match="no task is training"):
        L.prune(model, 0.5)
    with pytest.raises(RuntimeError, match="nothing to finalize"):
        L.finalize_task(model)


def test_task_selection():
    model = _network()
    _learn(model, 1)
    _learn(model, 2)
    L.set_task(model, 1)
    with L.task(model, 2):
        assert all(m.task == 2 for _, m in L.cpg_modules(model))
    assert all(m.task == 1 for _, m in L.cpg_modules(model))
    with pytest.raises(ValueError, match="unknown"):
        L.set_task(model, 3)
    L.set_task(model, None)
    with pytest.raises(RuntimeError, match="no task selected"):
        model(_batch()[0])


def test_begin_task_checks_ids_and_model():
    model = _network()
    _learn(model, 2)
    with pytest.raises(ValueError, match="increase"):
        L.begin_task(model, 1)
    with pytest.raises(ValueError, match=r"1\.\.255"):
        L.begin_task(model, 256)
    with pytest.raises(ValueError, match="num_classes"):
        L.begin_task(model, 3, num_classes=0)
    assert L.task_state(model) == ([2], None)  # nothing began
    with pytest.raises(ValueError, match="no TaskHeads"):
        L.begin_task(CPGConv2d(3, 3, 1), 1, num_classes=3)
    with pytest.raises(ValueError, match="convert"):
        L.begin_task(nn.Linear(2, 2), 1)
    L.begin_task(model, 255, num_classes=2)
    with pytest.raises(RuntimeError, match="still training"):
        L.begin_task(model, 255)
    model.conv1.tasks.append(7)  # a hand-edited module no longer agrees with the others
    with pytest.raises(ValueError, match="disagree"):
        L.task_state(model)


# ---------------------------------------------------------------------- growth


@pytest.mark.parametrize("name", ["vgg16_bn", "resnet18", "resnet50"])
def test_growth_keeps_old_tasks_exact(name):
    model = _network(name)
    x, _ = _batch(seed=99)
    records = {}
    for t in (1, 2):
        _learn(model, t)
        records[t] = _record(model, t, x)
    widths = {n: layer.weight.shape[0] for n, layer in L.masked_layers(model)}
    grown = L.grow(model, 1.5)
    assert grown and all(new == -(-widths[n] * 3 // 2) for n, (_, new) in grown.items())
    _assert_unchanged(model, records, x)

    _learn(model, 3)  # the new channels are free: task 3 takes them
    first_name, first = L.masked_layers(model)[0]
    new = first.owner[widths[first_name] :]
    assert bool(((new == 0) | (new == 3)).all()) and bool((new == 3).any())
    records[3] = _record(model, 3, x)
    L.begin_task(model, 4, num_classes=2)  # and growth in the middle of a task
    L.grow(model, 1.25)
    _train(model, *_batch(2, seed=4))
    L.finalize_task(model)
    _assert_unchanged(model, records, x)


def test_residual_widths_stay_consistent():
    model = _network("resnet18")
    L.grow(model, 2.0)
    block = model.layer2[0]
    assert block.conv2.out_channels == block.downsample[0].out_channels == block.bn2.num_features
    assert model.layer2[1].conv1.in_channels == block.conv2.out_channels
    assert model.fc.in_features == model.layer4[1].conv2.out_channels == 64
    L.begin_task(model, 1, num_classes=3)
    assert model(_batch()[0]).shape == (4, 3)


class _Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(torch.cat([self.a(x), self.b(x)], 1).mean((2, 3)))


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:  # data-dependent control flow: fx cannot trace it
            y = -y
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize(
    "build,message",
    [
        (_Concat, "cat"),
        (
            lambda: nn.Sequential(
                nn.Conv2d(3, 4, 1),
                nn.Conv2d(4, 4, 3, groups=2),
                nn.Flatten(),
                nn.Linear(4 * 30 * 30, 2),
            ),
            "grouped convolution 1",
        ),
        (_Branchy, "torch.fx"),
    ],
    ids=["cat", "groups", "untraceable"],
)
def test_growth_names_what_cannot_grow(build, message):
    model = convert(build())
    shapes = [p.shape for p in model.parameters()]
    with pytest.raises(ValueError, match=message):
        L.grow(model, 1.5)
    assert [p.shape for p in model.parameters()] == shapes
    with pytest.raises(ValueError, match="factor"):
        L.grow(model, 1.0)


# -------------------------------------------------------------------- forgetting


def test_forget_releases_only_what_no_other_task_uses():
    model = _network()
    x, _ = _batch(seed=99)
    for t in (1, 2, 3):
        _learn(model, t)
        if t == 1:
            L.grow(model, 1.5)  # tasks of different widths
    records = {t: _record(model, t, x) for t in (1, 3)}
    layers = L.masked_layers(model)
    kept = {
        name: (layer.owner == 2) & unpack(layer.bits_3, layer.weight.shape)
        for name, layer in layers
    }
    released = {name: (layer.owner == 2) & ~kept[name] for name, layer in layers}
    L.forget_task(model, 2)

    assert L.task_state(model) == ([1, 3], None)
    _assert_unchanged(model, records, x)
    for name, layer in layers:
        assert torch.equal(layer.owner == 2, kept[name]), name
        assert not layer.owner[released[name]].any() and not layer.weight[released[name]].any()
        assert "bits_2" not in dict(layer.named_buffers())
    assert any(m.any() for m in released.values()) and any(m.any() for m in kept.values())
    assert "2" not in model.fc.heads and "running_mean_2" not in dict(model.bn1.named_buffers())
    with pytest.raises(ValueError, match="unknown"):
        L.set_task(model, 2)
    with pytest.raises(ValueError, match="not a finished task"):
        L.forget_task(model, 2)

    _learn(model, 4)  # the released weights serve a new task; the others stay exact
    _assert_unchanged(model, records, x)
    L.begin_task(model, 5, num_classes=2)
    with pytest.raises(RuntimeError, match="finalize it before forgetting"):
        L.forget_task(model, 1)


# ------------------------------------------------------------------------ export


def test_export_task_is_a_plain_network_computing_the_task():
    model = _network("vgg16_bn")
    x, _ = _batch(seed=99)
    _learn(model, 1)
    L.grow(model, 1.5)
    _learn(model, 2)
    for t in (1, 2):
        logits, _ = _record(model, t, x)
        plain = L.export_task(model, t).eval()
        assert not any(isinstance(m, CPGModule) for m in plain.modules())
        assert type(plain.classifier[6]) is nn.Linear
        assert plain.features[0].out_channels == (4 if t == 1 else 6)
        with torch.no_grad():
            torch.testing.assert_close(plain(x), logits, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="not a finished task"):
        L.export_task(model, 3)
