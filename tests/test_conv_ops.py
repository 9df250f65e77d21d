"""Masked conv2d ops against the float64 dense-masking oracle, on every backend."""
from __future__ import annotations

import pytest
import torch

from cpg_kernels import backends, functional, masks, reference
from cpg_kernels.testing import TOLERANCE, random_mask, random_owner, rel_error

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


# (batch, C_in, H, W, C_out, kernel, stride, padding, dilation, groups)
CASES = [
    (1, 3, 7, 7, 5, 3, 1, 1, 1, 1),
    (2, 4, 9, 8, 6, 3, 2, 0, 1, 2),
    (2, 6, 11, 11, 6, 3, 1, 2, 2, 6),      # depthwise, dilation 2
    (1, 8, 5, 5, 16, 1, 1, 0, 1, 1),       # 1x1
    (2, 3, 15, 13, 4, 7, 2, 3, 1, 1),      # 7x7 stem-like
    (3, 16, 6, 6, 10, 3, 1, 1, 1, 2),
]
SMALL_CASES = CASES[:4]


def cases_for(backend):
    return SMALL_CASES if backend.small else CASES


def make_conv(case, dtype, device, seed=0):
    b, c, h, w_, n, k, stride, pad, dil, groups = case
    g = torch.Generator().manual_seed(seed)
    shape = (n, c // groups, k, k)
    w = torch.randn(shape, generator=g).to(dtype)
    owner = random_owner(shape, tasks=5, generator=g)
    mask = random_mask(shape, generator=g)
    bias = torch.randn(n, generator=g).to(dtype)
    x = torch.randn(b, c, h, w_, generator=g).to(dtype)
    conv = dict(stride=stride, padding=pad, dilation=dil, groups=groups)
    return [t.to(device) for t in (x, w, owner, mask, bias)] + [conv]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_inference_forward(backend, dtype, channels_last):
    for case in cases_for(backend):
        x, w, owner, mask, bias, conv = make_conv(case, dtype, backend.device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        bits = masks.active_bits(owner, 4, mask=mask)
        y = backend.run(functional.masked_conv2d, x, w, bits, bias, **conv)
        active = masks.unpack(bits.cpu(), w.shape)
        ref = reference.masked_conv2d(x.cpu().double(), w.cpu().double(), active,
                                      bias.cpu().double(), **conv)
        assert y.shape == ref.shape and y.dtype == dtype
        assert rel_error(y, ref) < TOLERANCE[dtype], case


@pytest.mark.parametrize("dtype", DTYPES)
def test_training_forward_and_backward(backend, dtype):
    task = 4
    for case in cases_for(backend):
        x, w, owner, mask, bias, conv = make_conv(case, dtype, backend.device)
        leaves = [t.detach().clone().requires_grad_() for t in (x, w, mask, bias)]
        y = backend.run(functional.cpg_conv2d, leaves[0], leaves[1], owner, task, mask=leaves[2],
                        bias=leaves[3], **conv)
        gy = torch.randn(y.shape).to(dtype).to(backend.device)
        backend.run(y.backward, gy)

        ref_leaves = [t.detach().cpu().double().requires_grad_() for t in (x, w, mask, bias)]
        ref_y = reference.conv2d(ref_leaves[0], ref_leaves[1], owner.cpu(), task,
                                 mask=ref_leaves[2], bias=ref_leaves[3], **conv)
        ref_y.backward(gy.cpu().double())
        tol = TOLERANCE[dtype]
        assert rel_error(y, ref_y) < tol, case
        for name, ours, ref in zip(["x", "weight", "mask", "bias"], leaves, ref_leaves):
            assert rel_error(ours.grad, ref.grad) < 2 * tol, (name, case)
        assert (leaves[1].grad.cpu()[owner.cpu() != task] == 0).all()


def test_gradcheck_float64(backend):
    case = (2, 4, 6, 5, 4, 3, 2, 1, 1, 2)
    x, w, owner, mask, bias, conv = make_conv(case, torch.float64, backend.device)
    # No frozen active weights, so the CPG weight gradient is the true derivative
    # (the frozen rule itself is checked exactly in the training test).
    owner = torch.where((owner > 0) & (owner < 4), torch.full_like(owner, 5), owner)
    for t in (x, w, bias):
        t.requires_grad_()
    bits = masks.active_bits(owner, 4, mask=mask)
    with backend.context():
        assert torch.autograd.gradcheck(
            lambda x_, w_, b_: functional.cpg_conv2d(x_, w_, owner, 4, mask=mask, bias=b_, **conv),
            (x, w, bias))
        assert torch.autograd.gradcheck(
            lambda x_, w_, b_: functional.masked_conv2d(x_, w_, bits, b_, **conv), (x, w, bias))


@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[5]])
def test_multi_tile_decode_path(case):
    """Tiles of a few rows, inside and across groups, give the same result."""
    x, w, owner, mask, bias, conv = make_conv(case, torch.float64, "cpu")
    x.requires_grad_()
    ref = functional.cpg_conv2d(x, w, owner, 4, mask=mask, bias=bias, **conv)
    (ref_dx,) = torch.autograd.grad(ref.sum(), x)
    k = w[0].numel()
    for rows in (1, 3):
        with backends.decode_tile_elements(rows * k):
            y = functional.cpg_conv2d(x, w, owner, 4, mask=mask, bias=bias, **conv)
            (dx,) = torch.autograd.grad(y.sum(), x)
        torch.testing.assert_close(y, ref)
        torch.testing.assert_close(dx, ref_dx)


def test_conv_bad_arguments():
    x, w, owner, mask, bias, conv = make_conv(CASES[0], torch.float32, "cpu")
    bits = masks.active_bits(owner, 3)
    with pytest.raises(ValueError, match="x: expected 3 input channels"):
        functional.masked_conv2d(torch.randn(1, 4, 7, 7), w, bits)
    with pytest.raises(ValueError, match="x: expected a 4-D input"):
        functional.masked_conv2d(torch.randn(3, 7, 7), w, bits)
    with pytest.raises(ValueError, match="stride: expected two positive ints"):
        functional.masked_conv2d(x, w, bits, stride=0)
    with pytest.raises(ValueError, match="padding: expected two non-negative ints"):
        functional.masked_conv2d(x, w, bits, padding=-1)
    with pytest.raises(ValueError, match="divisible by groups"):
        functional.masked_conv2d(torch.randn(1, 6, 7, 7), w, bits, groups=2)
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        functional.masked_conv2d(torch.randn(1, 3, 2, 2), w, bits)
    with pytest.raises(ValueError, match="bits: expected shape"):
        functional.masked_conv2d(x, w, bits[:1])


def test_tf32_switch_is_respected(backend):
    x, w, owner, mask, bias, conv = make_conv(CASES[0], torch.float32, backend.device)
    bits = masks.active_bits(owner, 4, mask=mask)
    ref = reference.masked_conv2d(x.cpu().double(), w.cpu().double(),
                                  masks.unpack(bits.cpu(), w.shape), bias.cpu().double(), **conv)
    torch.backends.cudnn.allow_tf32 = True
    y = backend.run(functional.masked_conv2d, x, w, bits, bias, **conv)
    assert rel_error(y, ref) < 2e-3
