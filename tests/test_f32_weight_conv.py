"""The conv forward's fp32-weight form (a 16-bit x against an fp32 weight, as autocast leaves
them) under the emulator: pointwise NHWC convs on the linear weight stream and late layers of
at most 64 output pixels on the unfolded path, both reading the fp32 weight and rounding it
in registers (csrc/cuda/masked_conv.cu, conv_unfolded.cuh); the cast the op makes elsewhere,
with grad, and on the CPU path; the plan, autocast and the fake kernel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cpg_kernels import _C, backends, functional, masks
from cpg_kernels.testing import assert_within_bound, oracle, random_owner

STREAM = "gemm_stream.cuh:f32_weight_kernel"
UNFOLD = "conv_unfolded.cuh:unfold"
DTYPE_NAME = {torch.float16: "float16", torch.bfloat16: "bfloat16"}
SIXTEEN = [torch.bfloat16, torch.float16]
NHWC = torch.channels_last


def layer(n, c, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, c, k, k, generator=g)
    bits = masks.pack(torch.rand(n, c, k, k, generator=g) < 0.5)
    return w, bits


def conv(x, w, bits, bias=None, stride=1, padding=0):
    with torch.no_grad(), backends.emulated(), backends.emulator_launches() as log:
        y = functional.masked_conv2d(x, w, bits, bias, stride=stride, padding=padding)
    return y, log


def planned(x, w, stride, padding, channels_last):
    b, c, h, wd = x.shape
    return _C.plan_masked_conv2d(
        DTYPE_NAME[x.dtype],
        1,
        [b, c, h, wd],
        w.shape[0],
        list(w.shape[2:]),
        [stride] * 2,
        [padding] * 2,
        [1, 1],
        1,
        channels_last,
        False,
        False,
        4,
        f32_weight=True,
    )


def check(y, x, w, bits, bias, stride, padding, what):
    """Within the rounding bound of the conv on W cast to x's dtype (the same operands,
    summed in the stream's own order)."""
    active = masks.unpack(bits, tuple(w.shape)).to(torch.float64)
    operands = [x, w.to(x.dtype)] + ([bias] if bias is not None else [])
    ref, _ = oracle(
        lambda x_, w_, *b_: F.conv2d(x_, w_ * active, b_[0] if b_ else None, stride, padding),
        operands,
    )
    assert y.dtype == x.dtype
    assert_within_bound(y, ref, what)


# (N, C, kernel, image, stride, padding): late layers of 9 to 49 output pixels (one or two
# images), N past the direct kernel's 8 columns, K = C * taps a multiple of 8.
LATE = [(16, 8, 3, 3, 1, 1), (24, 16, 3, 7, 1, 1), (40, 32, 3, 5, 2, 1), (12, 64, 1, 4, 1, 0)]


@pytest.mark.parametrize("dtype", SIXTEEN)
@pytest.mark.parametrize("fmt", [torch.contiguous_format, NHWC], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("n,c,k,hw,stride,pad", LATE, ids=[str(s) for s in LATE])
def test_late_layers_read_the_fp32_weight(dtype, fmt, n, c, k, hw, stride, pad):
    w, bits = layer(n, c, k)
    x = torch.randn(1, c, hw, hw).to(dtype).contiguous(memory_format=fmt)
    bias = torch.randn(n).to(dtype)
    y, log = conv(x, w, bits, bias, stride, pad)
    launches = planned(x, w, stride, pad, fmt == NHWC)
    if k == 1 and fmt == NHWC:  # pointwise: the linear weight stream on the pixels' rows
        assert log == [STREAM], log
    else:
        assert log == [UNFOLD, STREAM], log
        assert launches[0]["kernel"].startswith("conv::unfolded::unfold_kernel<"), launches
    assert launches[-1]["params"]["weight_bytes"] == 4, launches
    assert y.is_contiguous(memory_format=fmt)
    check(y, x, w, bits, bias, stride, pad, (n, c, k, hw, fmt))


def test_more_pixels_or_the_cpu_path_cast_the_weight():
    """Past 64 output pixels (the tiled kernels) and on the CPU path the op casts the weight
    and runs the 16-bit form: exactly its result on the cast weight."""
    w, bits = layer(16, 8, 3, seed=1)
    x = torch.randn(1, 8, 10, 10).bfloat16()
    y, log = conv(x, w, bits, padding=1)
    cast_y, cast_log = conv(x, w.bfloat16(), bits, padding=1)
    assert STREAM not in log and log == cast_log, log
    assert torch.equal(y, cast_y)
    assert planned(x, w, 1, 1, False) == []
    cpu = functional.masked_conv2d(x[:, :, :3, :3], w, bits, padding=1)
    assert torch.equal(
        cpu, functional.masked_conv2d(x[:, :, :3, :3], w.bfloat16(), bits, padding=1)
    )


def test_with_grad_the_weight_is_cast_differentiably():
    """Training casts the weight first (the conv backward's kernels take one dtype): the
    gradients are the cast form's, the weight's in fp32."""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(16, 8, 3, 3, generator=g)
    owner = random_owner(w.shape, generator=g)
    x = torch.randn(1, 8, 4, 4, generator=g).bfloat16()
    dy = torch.randn(1, 16, 4, 4, generator=g).bfloat16()

    def step(cast_first):
        leaf = w.detach().clone().requires_grad_()
        xs = x.clone().requires_grad_()
        with backends.emulated():
            weight = leaf.bfloat16() if cast_first else leaf
            functional.cpg_conv2d(xs, weight, owner, 3, padding=1).backward(dy)
        return xs.grad, leaf.grad

    dx, dw = step(cast_first=False)
    cast_dx, cast_dw = step(cast_first=True)
    assert dw.dtype == torch.float32
    assert torch.equal(dx, cast_dx) and torch.equal(dw, cast_dw)


def test_autocast_keeps_the_conv_weight_fp32_at_inference():
    w, bits = layer(32, 16, 3, seed=3)
    x = torch.randn(1, 16, 4, 4)
    with (
        torch.no_grad(),
        torch.autocast("cpu", dtype=torch.bfloat16),
        backends.emulated(),
        backends.emulator_launches() as log,
    ):
        y = functional.masked_conv2d(x, w, bits, padding=1)
    assert y.dtype == torch.bfloat16 and log == [UNFOLD, STREAM], log
    check(y, x.bfloat16(), w, bits, None, 1, 1, "autocast")


def test_the_plan_query_checks_the_form():
    def plan(dtype, grad_input, tasks=1):
        return _C.plan_masked_conv2d(
            dtype, tasks, [1, 8, 4, 4], 16, [3, 3], [1, 1], [1, 1], [1, 1], 1, False, grad_input,
            False, 4, f32_weight=True,
        )  # fmt: skip

    with pytest.raises(ValueError, match="one task's"):
        plan("bfloat16", grad_input=False, tasks=2)
    assert plan("float32", grad_input=False) == []  # fp32 x has no mixed form
    assert plan("float32", grad_input=True) == []


def test_bias_and_dtype_errors_name_x():
    w, bits = layer(16, 8, 3)
    x = torch.randn(1, 8, 4, 4).bfloat16()
    with pytest.raises(ValueError, match=r"bias: expected dtype .*BFloat16.*dtype of x"):
        functional.masked_conv2d(x, w, bits, torch.randn(16), padding=1)
    with pytest.raises(ValueError, match=r"x: expected dtype .*BFloat16"):
        functional.masked_conv2d(x.float(), w.bfloat16(), bits, padding=1)
