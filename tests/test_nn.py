"""CPG modules one at a time: drop-in parity, task forward/backward, state round trips."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cpg_kernels import reference
from cpg_kernels.masks import DEFAULT_THRESHOLD, active_bits, unpack
from cpg_kernels.nn import (
    MASK_INIT,
    CPGBatchNorm1d,
    CPGBatchNorm2d,
    CPGConv2d,
    CPGLinear,
    TaskHeads,
)

CONV_CONFIGS = [
    pytest.param((3, 8, 3), dict(padding=1), id="3x3-pad1"),
    pytest.param(
        (4, 6, (3, 2)),
        dict(stride=2, padding=(1, 0), dilation=(1, 2), bias=False),
        id="strided-dilated-nobias",
    ),
    pytest.param((4, 8, 3), dict(groups=2, padding="same"), id="groups-same"),
    pytest.param((3, 5, 3), dict(padding=1, padding_mode="reflect"), id="reflect"),
]


def _twins(dense_cls, cpg_cls, *args, **kwargs):
    """A torch layer and a CPG layer built from the same random stream."""
    torch.manual_seed(1)
    dense = dense_cls(*args, **kwargs)
    torch.manual_seed(1)
    return dense, cpg_cls(*args, **kwargs)


def _layer_with_history(layer: nn.Module) -> nn.Module:
    """``layer`` after task 1 (half pruned) and with task 2 training, mask spread around
    the threshold so that some older weights are picked and some are not."""
    layer.begin_task(1)
    layer.prune(0.5)
    layer.finalize_task()
    layer.begin_task(2)
    with torch.no_grad():
        layer.mask.copy_(torch.rand_like(layer.mask) * 2 * DEFAULT_THRESHOLD)
    return layer


# ------------------------------------------------------------------ drop-in parity


@pytest.mark.parametrize("args,kwargs", CONV_CONFIGS)
def test_conv_is_a_drop_in_for_nn_conv2d(args, kwargs):
    dense, cpg = _twins(nn.Conv2d, CPGConv2d, *args, **kwargs)
    x = torch.randn(2, args[0], 9, 8)
    assert torch.equal(cpg.weight, dense.weight)
    assert list(cpg.state_dict()) == [*dense.state_dict(), "owner", "_extra_state"]
    assert cpg.owner.dtype == torch.uint8 and cpg.owner.shape == cpg.weight.shape
    assert torch.equal(cpg(x), dense(x))
    # Task 1 owns every weight: it computes the dense layer, through the CPG ops.
    cpg.begin_task(1)
    torch.testing.assert_close(cpg(x), dense(x), rtol=1e-5, atol=1e-6)


def test_linear_is_a_drop_in_for_nn_linear():
    dense, cpg = _twins(nn.Linear, CPGLinear, 20, 7)
    x = torch.randn(3, 5, 20)
    assert list(cpg.state_dict()) == ["weight", "bias", "owner", "_extra_state"]
    assert torch.equal(cpg(x), dense(x))
    cpg.begin_task(1)
    torch.testing.assert_close(cpg(x), dense(x), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------ training and frozen tasks


def test_training_task_matches_the_dense_masking_oracle():
    conv = _layer_with_history(CPGConv2d(3, 8, 3, stride=2, padding=1))
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    ref_x = x.detach().clone().requires_grad_()
    ref_w = conv.weight.detach().clone().requires_grad_()
    ref_m = conv.mask.detach().clone().requires_grad_()
    out = conv(x)
    ref = reference.conv2d(ref_x, ref_w, conv.owner, 2, ref_m, conv.bias, stride=2, padding=1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(conv.weight.grad, ref_w.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(conv.mask.grad, ref_m.grad, rtol=1e-5, atol=1e-6)
    assert not conv.weight.grad[conv.owner != 2].any()
    pickable = (conv.owner > 0) & (conv.owner < 2)
    assert not conv.mask.grad[~pickable].any() and conv.mask.grad[pickable].any()


def test_finalize_stores_the_binarized_active_set_and_freezes_the_task():
    linear = _layer_with_history(CPGLinear(40, 6))
    expected = active_bits(linear.owner, 2, mask=linear.mask, threshold=DEFAULT_THRESHOLD)
    assert linear.finalize_task() == 2
    assert linear.mask is None and "mask" not in dict(linear.named_parameters())
    assert torch.equal(linear.bits_2, expected)
    assert linear.tasks == [1, 2] and linear.training_task is None

    x = torch.randn(5, 40, requires_grad=True)
    linear.train()
    out = linear(x)
    active = unpack(linear.bits_2, linear.weight.shape)
    expected = reference.masked_linear(x, linear.weight, active, linear.bias_2)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert x.grad is not None and linear.weight.grad is None and linear.bias.grad is None


def test_picking_off_uses_every_older_weight():
    conv = CPGConv2d(2, 4, 3)
    conv.begin_task(1)
    conv.prune(0.6)
    conv.finalize_task()
    conv.begin_task(2, picking=False)
    assert conv.mask is None
    conv.finalize_task()
    assert torch.equal(unpack(conv.bits_2, conv.weight.shape), conv.owner > 0)


def test_first_task_has_nothing_to_pick():
    conv = CPGConv2d(2, 4, 3)
    conv.begin_task(1)
    assert conv.mask is None and bool((conv.owner == 1).all())
    conv.prune(0.5)
    conv.finalize_task()
    conv.begin_task(2)
    assert conv.mask.dtype == torch.float32 and bool((conv.mask == MASK_INIT).all())


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_prune_releases_the_smallest_owned_weights(layout):
    conv = CPGConv2d(3, 8, 3).to(memory_format=layout)
    conv.begin_task(1)
    before = conv.weight.detach().clone()
    assert conv.prune(0.5) == 0.5
    pruned = conv.owner == 0
    assert int(pruned.sum()) == conv.weight.numel() // 2
    assert not conv.weight[pruned].any()
    assert before[pruned].abs().max() <= before[~pruned].abs().min()
    assert conv.prune(0.25) == 0.5  # sparsity never goes back
    with pytest.raises(ValueError, match="sparsity"):
        conv.prune(1.0)


# ------------------------------------------------------------------ selection and ids


def test_forward_needs_a_known_selected_task():
    conv = CPGConv2d(2, 4, 3)
    conv.begin_task(1)
    conv.finalize_task()
    conv.set_task(None)
    with pytest.raises(RuntimeError, match="no task selected"):
        conv(torch.randn(1, 2, 5, 5))
    with pytest.raises(ValueError, match="unknown"):
        conv.set_task(2)


@pytest.mark.parametrize("bad", [0, 256, True, 1.0, "1"])
def test_task_ids_are_ints_in_1_to_255(bad):
    with pytest.raises(ValueError, match=r"1\.\.255"):
        CPGLinear(3, 2).begin_task(bad)


def test_task_ids_increase_and_one_task_trains_at_a_time():
    linear = CPGLinear(3, 2)
    linear.begin_task(3)
    with pytest.raises(RuntimeError, match="still training"):
        linear.begin_task(4)
    linear.finalize_task()
    with pytest.raises(ValueError, match=r"increase|owner"):
        linear.begin_task(2)
    with pytest.raises(RuntimeError, match="no task is training"):
        linear.finalize_task()


# ---------------------------------------------------------------------- growth


def test_grow_adds_free_rows_and_zero_columns():
    conv = CPGConv2d(3, 4, 3, padding=1)
    conv.begin_task(1)
    conv.finalize_task()
    old = conv.weight.detach().clone()
    conv.grow(2, 1)
    assert conv.weight.shape == (6, 4, 3, 3) and (conv.out_channels, conv.in_channels) == (6, 4)
    assert torch.equal(conv.weight[:4, :3], old)
    assert not conv.weight[:4, 3:].any() and conv.weight[4:].any()
    assert not conv.owner[4:].any() and not conv.owner[:, 3:].any()
    x = torch.randn(2, 4, 5, 5)
    conv.set_task(1)
    y = conv(x)
    assert y.shape == (2, 6, 5, 5) and not y[:, 4:].any()


def test_grow_during_a_task_gives_it_the_new_weights():
    linear = CPGLinear(5, 3)
    linear.begin_task(1)
    linear.finalize_task()
    linear.begin_task(2)
    linear.grow(2, 4)
    assert linear.weight.shape == linear.owner.shape == linear.mask.shape == (5, 9)
    assert bool((linear.owner[3:] == 2).all()) and bool((linear.owner[:, 5:] == 2).all())
    assert bool((linear.mask[:, 5:] == MASK_INIT).all()) and linear.bias.shape == (5,)


def test_grouped_conv_cannot_grow():
    with pytest.raises(ValueError, match="grouped"):
        CPGConv2d(4, 4, 3, groups=2).grow(2, 2)


# ------------------------------------------------------------------ state dicts


@pytest.mark.parametrize(
    "make",
    [lambda: CPGConv2d(3, 8, 3, padding=1), lambda: CPGLinear(12, 5)],
    ids=["conv", "linear"],
)
def test_state_dict_round_trips_finished_and_training_tasks(make):
    layer = _layer_with_history(make())
    layer.grow(2, 1)
    fresh = make()
    fresh.load_state_dict(layer.state_dict())
    assert fresh.tasks == [1] and fresh.training_task == 2 and fresh.mask is not None
    assert fresh.weight.shape == layer.weight.shape
    x = torch.randn(2, 4, 6, 6) if isinstance(layer, CPGConv2d) else torch.randn(2, 13)
    for t in (1, 2):
        layer.set_task(t)
        fresh.set_task(t)
        assert torch.equal(fresh(x), layer(x))
    for key, value in layer.state_dict().items():
        assert key == "_extra_state" or torch.equal(fresh.state_dict()[key], value)


def test_load_rejects_an_unknown_state_version():
    layer = CPGLinear(4, 2)
    state = layer.state_dict()
    state["_extra_state"] = {**state["_extra_state"], "version": 99}
    with pytest.raises(ValueError, match="version 99"):
        CPGLinear(4, 2).load_state_dict(state)


def test_extra_repr_shows_tasks_and_usage():
    conv = CPGConv2d(2, 4, 3)
    conv.begin_task(1)
    conv.prune(0.25)
    conv.finalize_task()
    conv.begin_task(2)
    text = repr(conv)
    assert "tasks=[1]" in text and "training_task=2" in text
    assert "usage={1: 75%, 2: 25%}" in text


# ----------------------------------------------------------------- batch norm


def test_batch_norm_keeps_each_tasks_statistics():
    dense, bn = _twins(nn.BatchNorm2d, CPGBatchNorm2d, 3)
    x = torch.randn(4, 3, 5, 5)
    assert torch.equal(bn(x), dense(x))  # no task yet: the torch layer, stats updated too
    assert torch.equal(bn.running_mean, dense.running_mean)
    bn.begin_task(1)
    bn(x + 1)
    bn.finalize_task()
    snapshot = {k: v.clone() for k, v in bn.state_dict().items() if k.endswith("_1")}
    bn.eval()
    bn.set_task(1)
    before = bn(x)
    bn.begin_task(2)
    bn.train()
    bn(3 * x - 2)  # moves the live statistics, task 2's
    bn.set_task(1)
    assert torch.equal(bn(x), before)  # train mode, yet task 1 uses its frozen statistics
    assert all(torch.equal(bn.get_buffer(k), v) for k, v in snapshot.items())
    assert not torch.equal(bn.running_mean, bn.running_mean_1)


def test_batch_norm_round_trip_and_growth():
    bn = CPGBatchNorm1d(4)
    bn.begin_task(1)
    bn(torch.randn(8, 4))
    bn.finalize_task()
    bn.grow(2)
    bn.eval()
    fresh = CPGBatchNorm1d(4)
    fresh.load_state_dict(bn.state_dict())
    x = torch.randn(3, 6)
    bn.set_task(1)
    fresh.set_task(1)
    assert fresh.num_features == 6 and torch.equal(fresh(x), bn(x))
    assert not bn(x)[:, 4:].any()


# ---------------------------------------------------------------------- heads


def test_task_heads():
    template = nn.Linear(6, 10)
    heads = TaskHeads(template)
    x = torch.randn(2, 6)
    assert torch.equal(heads(x), template(x))
    heads.begin_task(1, num_classes=3)
    assert heads(x).shape == (2, 3) and not template.weight.requires_grad
    heads.finalize_task()
    heads.begin_task(2)  # no class count: starts as a copy of the original classifier
    assert torch.equal(heads(x), template(x))
    heads.finalize_task()
    heads.set_task(1)
    heads(x.requires_grad_()).sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in heads.head(1).parameters())
    fresh = TaskHeads(nn.Linear(6, 10))
    fresh.load_state_dict(heads.state_dict())
    fresh.set_task(1)
    assert torch.equal(fresh(x), heads(x))
    with pytest.raises(ValueError, match="num_classes"):
        heads.begin_task(3, num_classes=0)
