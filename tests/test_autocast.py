"""Mixed precision: every cpg op under torch.autocast, converted models against plain ones,
and training with GradScaler that keeps old tasks bit-exact."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cpg_kernels as C
from cpg_kernels import functional as CF
from cpg_kernels import lifecycle as L
from cpg_kernels import models
from cpg_kernels.masks import active_bits, unpack
from cpg_kernels.testing import random_mask, random_owner

DTYPES = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]
# Relative to the output's largest magnitude: a few 16-bit roundings through a small net.
TOLERANCE = {torch.bfloat16: 2**-4, torch.float16: 2**-7}


def _device(name: str) -> str:
    if name == "cuda" and not (C.backends.cuda_built() and torch.cuda.is_available()):
        pytest.skip("no CUDA device or the CUDA kernels were not built")
    return name


def _small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, 5),
    )


def _assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    scale = ref.detach().float().abs().max().clamp_min(1e-6)
    err = (out.detach().float() - ref.detach().float()).abs().max()
    assert err <= TOLERANCE[dtype] * scale, f"{what}: max error {err:.3g} of scale {scale:.3g}"


# ------------------------------------------------------------------ the two failures


def test_resnet18_forward_under_bf16_autocast():
    """Issue 16: a 16-bit activation from an unconverted layer met an fp32 CPG weight."""
    model = C.convert(models.resnet18(10, width=1 / 16))
    C.begin_task(model, 1, num_classes=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(torch.randn(2, 3, 32, 32))
    assert y.dtype == torch.bfloat16 and y.shape == (2, 4) and torch.isfinite(y).all()


def test_small_cnn_backward_under_bf16_autocast():
    """Issue 16: the forward passed, the backward raised oneDNN's "could not create a
    primitive descriptor" (an fp32 conv input met a bf16 gradient from the head)."""
    model = C.convert(
        nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 5))
    )
    C.begin_task(model, 1, num_classes=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    conv = model[0]
    assert conv.weight.grad.dtype == torch.float32 and conv.weight.grad.abs().sum() > 0


def test_cnn_with_batch_norm_under_bf16_autocast():
    """Issue 16: a batch norm's bf16 output met the next CPG conv's fp32 weight."""
    model = C.convert(_small_cnn())
    C.begin_task(model, 1, num_classes=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for _, layer in L.masked_layers(model):
        assert layer.weight.grad is not None and layer.weight.grad.dtype == torch.float32


# ------------------------------------------------------------------ each op


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_ops_compute_in_the_autocast_dtype(device, dtype):
    device = _device(device)
    w = torch.randn(6, 5, 3, 3, device=device, requires_grad=True)
    owner = random_owner(w.shape, tasks=2)
    owner = owner.masked_fill_(owner == 0, 3).to(device)  # free weights: the training task's
    mask = random_mask(w.shape).to(device).requires_grad_()
    x = torch.randn(2, 5, 8, 8, device=device)
    bias = torch.randn(6, device=device, requires_grad=True)
    with torch.autocast(device, dtype=dtype):
        y = CF.cpg_conv2d(x, w, owner, 3, mask=mask, bias=bias, padding=1)
    assert y.dtype == dtype
    # The reference: what autocast does for aten's conv2d with the effective weight.
    active = unpack(active_bits(owner, 3, mask=mask), w.shape)
    w_ref = w.detach().clone().requires_grad_()
    with torch.autocast(device, dtype=dtype):
        ref = F.conv2d(x, w_ref * active, bias.detach(), padding=1)
    _assert_close(y, ref, dtype, "forward")
    y.float().square().sum().backward()
    ref.float().square().sum().backward()
    assert w.grad.dtype == torch.float32 and mask.grad.dtype == torch.float32
    assert bias.grad.dtype == torch.float32
    own = owner == 3
    assert torch.equal(w.grad[~own], torch.zeros_like(w.grad[~own]))  # old tasks stay frozen
    _assert_close(w.grad * own, w_ref.grad * own, dtype, "weight gradient")

    lw = torch.randn(7, 40, device=device, requires_grad=True)
    lowner = random_owner(lw.shape, tasks=2).to(device)
    with torch.autocast(device, dtype=dtype):
        z = CF.cpg_linear(torch.randn(3, 40, device=device), lw, lowner, 3)
        bits = active_bits(lowner, 3)
        multi = CF.masked_linear_multitask(
            torch.randn(2, 3, 40, device=device), lw, torch.stack([bits, bits])
        )
        conv_multi = CF.masked_conv2d_multitask(
            torch.randn(2, 1, 5, 6, 6, device=device), w, torch.stack([active_bits(owner, 3)] * 2)
        )
    assert z.dtype == multi.dtype == conv_multi.dtype == dtype
    z.float().sum().backward()
    assert lw.grad.dtype == torch.float32


def test_ops_outside_autocast_keep_their_dtype_rules():
    """One dtype per op, but for the fp32-weight form of the linear ops and the conv forward
    (16-bit activations against an fp32 weight; tests/test_f32_weight_stream.py,
    test_f32_weight_training.py, test_f32_weight_conv.py), which gives what the cast weight
    gives. The reverse mix is refused."""
    w = torch.randn(4, 8)
    bits = active_bits(torch.ones_like(w, dtype=torch.uint8), 1)
    x16 = torch.randn(2, 8, dtype=torch.bfloat16)
    assert torch.equal(CF.masked_linear(x16, w, bits), CF.masked_linear(x16, w.bfloat16(), bits))
    dy16 = x16[:, :4].contiguous()
    assert torch.equal(
        torch.ops.cpg.masked_linear_grad_input(dy16, w, bits),
        torch.ops.cpg.masked_linear_grad_input(dy16, w.bfloat16(), bits),
    )
    with pytest.raises(ValueError, match="x: expected dtype BFloat16"):
        CF.masked_linear(torch.randn(2, 8), w.bfloat16(), bits)
    with pytest.raises(ValueError, match="grad_out: expected dtype BFloat16"):
        torch.ops.cpg.masked_linear_grad_input(torch.randn(2, 4), w.bfloat16(), bits)
    cw = torch.randn(3, 2, 1, 1)
    cbits = active_bits(torch.ones_like(cw, dtype=torch.uint8), 1)
    cx16 = torch.randn(1, 2, 4, 4, dtype=torch.bfloat16)
    assert torch.equal(
        CF.masked_conv2d(cx16, cw, cbits), CF.masked_conv2d(cx16, cw.bfloat16(), cbits)
    )
    with pytest.raises(ValueError, match="x: expected dtype BFloat16"):
        CF.masked_conv2d(torch.randn(1, 2, 4, 4), cw.bfloat16(), cbits)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # float64 is never cast by autocast: the op's own check still speaks.
        assert (
            CF.masked_linear(torch.randn(2, 8, dtype=torch.float64), w.double(), bits).dtype
            == torch.float64
        )


# ------------------------------------------------------------------ whole models


def _effective_plain(plain: nn.Module, converted: nn.Module, t: int) -> nn.Module:
    """``plain`` with the converted model's effective weights and task ``t``'s head."""
    ref = copy.deepcopy(plain)
    layers = dict(L.masked_layers(converted))
    with torch.no_grad():
        for name, module in ref.named_modules():
            if name in layers:
                layer = layers[name]
                active = unpack(active_bits(layer.owner, t, mask=layer.mask), layer.weight.shape)
                module.weight.copy_(layer.weight * active)
    ref[-1] = copy.deepcopy(converted[-1].head(t))
    return ref


@pytest.mark.parametrize("dtype", DTYPES)
def test_converted_model_matches_the_plain_one_under_autocast(dtype):
    plain = _small_cnn()
    model = C.convert(copy.deepcopy(plain))
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    C.begin_task(model, 1, num_classes=5)
    C.prune(model, 0.5)
    C.finalize_task(model)
    C.begin_task(model, 2, num_classes=5)  # a picking mask over task 1's weights
    with torch.no_grad():
        for _, layer in L.masked_layers(model):
            layer.mask.masked_fill_(torch.rand_like(layer.mask) < 0.5, 0.0)
    ref = _effective_plain(plain, model, 2)
    for net in (model, ref):
        net.train()
    with torch.autocast("cpu", dtype=dtype):
        out, expected = model(x), ref(x)
    assert out.dtype == expected.dtype == dtype
    _assert_close(out, expected, dtype, "logits")
    F.cross_entropy(out.float(), y).backward()
    F.cross_entropy(expected.float(), y).backward()
    for name, layer in L.masked_layers(model):
        own = layer.owner == 2
        _assert_close(
            layer.weight.grad * own,
            ref.get_submodule(name).weight.grad * own,
            dtype,
            f"{name} weight gradient",
        )


def _train_steps(model, x, y, dtype, steps: int = 3) -> list[float]:
    optimizer = L.make_optimizer(model, lr=0.05, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cpu")
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("dtype", DTYPES)
def test_training_with_grad_scaler_keeps_old_tasks_bit_exact(dtype):
    model = C.convert(_small_cnn())
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
    C.begin_task(model, 1, num_classes=5)
    losses = _train_steps(model, x, y, dtype)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    C.prune(model, 0.5)
    C.finalize_task(model)
    model.eval()
    with torch.no_grad(), C.task(model, 1):
        before, digest = model(x), C.fingerprint(model, 1)
    model.train()
    C.begin_task(model, 2, num_classes=5)
    _train_steps(model, x, (y + 1) % 5, dtype)
    model.eval()
    with torch.no_grad(), C.task(model, 1):
        assert torch.equal(model(x), before) and C.fingerprint(model, 1) == digest


def test_autocast_under_torch_compile():
    model = C.convert(_small_cnn())
    C.begin_task(model, 1, num_classes=5)
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager, traced = model(x), compiled(x)
    assert traced.dtype == torch.bfloat16
    _assert_close(traced, eager, torch.bfloat16, "compiled logits")
