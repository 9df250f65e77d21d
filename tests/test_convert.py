"""convert(): swaps layers in place and leaves the network's outputs unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from cpg_kernels import models
from cpg_kernels.convert import convert
from cpg_kernels.nn import CPGBatchNorm1d, CPGBatchNorm2d, CPGConv2d, CPGLinear, TaskHeads


def _user_sequential() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 5),
    )


NETWORKS = [
    pytest.param(
        lambda: models.vgg16_bn(10, width=1 / 16, hidden=32, pool=2), "classifier.6", id="vgg16_bn"
    ),
    pytest.param(lambda: models.resnet18(10, width=1 / 16), "fc", id="resnet18"),
    pytest.param(lambda: models.resnet50(10, width=1 / 16), "fc", id="resnet50"),
    pytest.param(_user_sequential, "8", id="sequential"),
]


@pytest.mark.parametrize("build,head", NETWORKS)
def test_convert_leaves_outputs_unchanged(build, head):
    original = build()
    model = copy.deepcopy(original)
    weights = {name: p for name, p in model.named_parameters()}
    converted = convert(model)
    assert converted is model
    x = torch.randn(3, 3, 32, 32)
    for mode in ("eval", "train"):  # train: batch statistics, dropout from the same seed
        getattr(original, mode)()
        getattr(model, mode)()
        torch.manual_seed(5)
        expected = original(x)
        torch.manual_seed(5)
        assert torch.equal(model(x), expected), mode

    modules = dict(model.named_modules())
    assert isinstance(modules[head], TaskHeads)
    assert modules[head].template is modules[f"{head}.template"]
    plain = [
        name
        for name, m in modules.items()
        if type(m) in (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)
    ]
    assert plain == [f"{head}.template"]
    # The CPG modules took over the parameters themselves; only the head moved.
    for name, p in model.named_parameters():
        assert p is weights[name.replace(".template", "")]


def test_convert_keeps_state_dict_keys_of_converted_layers():
    model = _user_sequential()
    keys = set(model.state_dict())
    convert(model)
    new = set(model.state_dict())
    moved = {k for k in keys if k.startswith("8.")}
    assert keys - moved <= new
    assert {k.replace("8.", "8.template.") for k in moved} <= new
    assert isinstance(model[0], CPGConv2d) and isinstance(model[1], CPGBatchNorm2d)
    assert isinstance(model[5], CPGLinear) and isinstance(model[6], CPGBatchNorm1d)


def test_convert_an_explicit_head_and_a_shared_layer():
    shared = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(
        shared, nn.ReLU(), shared, nn.Flatten(), nn.Linear(64, 8), nn.Linear(8, 3)
    )
    x = torch.randn(2, 4, 4, 4)
    expected = model(x)
    convert(model, head="4")
    assert model[0] is model[2] and isinstance(model[0], CPGConv2d)
    assert isinstance(model[4], TaskHeads) and isinstance(model[5], CPGLinear)
    assert torch.equal(model(x), expected)


def test_convert_keeps_dtype_and_device():
    model = convert(_user_sequential().double())
    conv = model[0]
    assert conv.weight.dtype == torch.float64 and conv.owner.dtype == torch.uint8
    assert conv.owner.device == conv.weight.device and not conv.owner.any()


def test_convert_a_bare_classifier():
    linear = nn.Linear(4, 2)
    heads = convert(linear)
    assert isinstance(heads, TaskHeads) and heads.template is linear


def test_convert_rejects_bad_requests():
    with pytest.raises(ValueError, match="no such module"):
        convert(_user_sequential(), head="classifier")
    with pytest.raises(ValueError, match=r"not an nn\.Linear"):
        convert(_user_sequential(), head="0")
    with pytest.raises(ValueError, match=r"no nn\.Linear"):
        convert(nn.Sequential(nn.Conv2d(3, 3, 1)))
    model = convert(_user_sequential())
    with pytest.raises(ValueError, match="only once"):
        convert(model)
