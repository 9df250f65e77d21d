"""The tensor-core conv tiles of csrc/cuda/conv_window.cuh (3x3 kernels: every tap of 16-byte
channel blocks per stage, W loaded by 16-byte runs and masked in registers) against the float64
oracle, and the dispatch around them: which convs take them, which keep the one-tap-per-stage
tiles (conv_views.cuh ConvMmaView). Under the emulator the launch log names the tap-window
launch ("gemm_mma.cuh:tap_window") apart from the other tensor-core launches."""
from __future__ import annotations

import pytest
import torch

from cpg_kernels import _C, backends, functional, masks
from cpg_kernels.testing import TOLERANCE, rel_error

EMULATOR_SMS = 4  # cpgdev::sm_count() of the emulator

# (batch, C_in, H, W, C_out, stride, padding, dilation, groups) of 3x3 convs with more than
# the 64 output pixels of the unfolded path, and whether the input gradient takes the
# tap-window tiles too (stride 1: one phase with all 9 taps).
CASES = {
    "one stage, partial column tile, two row tiles": ((2, 16, 9, 9, 24, 1, 1, 1, 1), True),
    "24 channels: the second stage half empty": ((2, 24, 6, 7, 20, 1, 1, 1, 1), True),
    "136 output channels: two column tiles": ((3, 16, 5, 5, 136, 1, 1, 1, 1), True),
    "groups 2": ((2, 32, 5, 5, 32, 1, 1, 1, 2), True),
    "stride 2 (the input gradient runs by phases of 1 to 4 taps)":
        ((2, 16, 13, 13, 16, 2, 1, 1, 1), False),
    "stride 2, dilation 2: one input-gradient phase takes all 9 taps":
        ((2, 16, 13, 13, 16, 2, 2, 2, 1), True),
    "unpadded, 8 input channels": ((3, 8, 8, 7, 16, 1, 0, 1, 1), True),
}
# (dtype, tf32)
PRECISIONS = [(torch.bfloat16, False), (torch.float16, False), (torch.float32, True)]


def operands(case, dtype, channels_last, seed=0, density=0.6):
    b, c, h, w_, n, stride, pad, dil, groups = case
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, c // groups, 3, 3, generator=g).to(dtype)
    bits = masks.pack(torch.rand(w.shape, generator=g) < density)
    bias = torch.randn(n, generator=g).to(dtype)
    x = torch.randn(b, c, h, w_, generator=g).to(dtype)
    ho, wo = ((size + 2 * pad - dil * 2 - 1) // stride + 1 for size in (h, w_))
    gy = torch.randn(b, n, ho, wo, generator=g).to(dtype)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x, gy = (t.contiguous(memory_format=fmt) for t in (x, gy))
    conv = {"stride": stride, "padding": pad, "dilation": dil, "groups": groups}
    return x, w, bits, bias, gy, conv


def grad_input(gy, w, bits, x_shape, conv):
    s, p, d = ([conv[k]] * 2 for k in ("stride", "padding", "dilation"))
    return torch.ops.cpg.masked_conv2d_grad_input(gy, w, bits, list(x_shape), s, p, d,
                                                  conv["groups"])


def oracle(x, w, bits, bias, gy, conv):
    w_eff = torch.where(masks.unpack(bits, w.shape), w.double(), 0.0)
    y = torch.nn.functional.conv2d(x.double(), w_eff, bias.double(), **conv)
    dx = torch.nn.grad.conv2d_input(x.shape, w_eff, gy.double(), **conv)
    return y, dx


def planned_views(case, dtype, channels_last, grad, tf32):
    b, c, h, w_, n, stride, pad, dil, groups = case
    name = {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(dtype, "float32")
    plan = _C.plan_masked_conv2d(name, 1, [b, c, h, w_], n, [3, 3], [stride] * 2, [pad] * 2,
                                 [dil] * 2, groups, channels_last, grad, tf32, EMULATOR_SMS)
    return [launch["kernel"] for launch in plan]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype,tf32", PRECISIONS,
                         ids=[f"{str(d)[6:]}{'-tf32' if t else ''}" for d, t in PRECISIONS])
@pytest.mark.parametrize("name", list(CASES))
def test_tap_window_tiles_match_the_oracle(name, dtype, tf32, channels_last):
    case, grad_window = CASES[name]
    x, w, bits, bias, gy, conv = operands(case, dtype, channels_last)
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        with backends.emulated(), backends.emulator_launches() as forward_log:
            y = functional.masked_conv2d(x, w, bits, bias, **conv)
        with backends.emulated(), backends.emulator_launches() as grad_log:
            dx = grad_input(gy, w, bits, x.shape, conv)
    finally:
        torch.backends.cudnn.allow_tf32 = old
    ref_y, ref_dx = oracle(x, w, bits, bias, gy, conv)
    tol = 2e-3 if tf32 else TOLERANCE[dtype]
    assert rel_error(y, ref_y) < tol
    assert rel_error(dx, ref_dx) < tol
    assert y.is_contiguous(memory_format=x.suggest_memory_format())
    assert "gemm_mma.cuh:tap_window" in forward_log, forward_log
    assert set(forward_log) <= {"gemm_mma.cuh:tap_window", "gemm_split_k.cuh:reduce"}
    assert ("gemm_mma.cuh:tap_window" in grad_log) == grad_window, grad_log
    # The plan query (what the performance model reads) names the same tiles.
    for grad, log in ((False, forward_log), (True, grad_log)):
        views = planned_views(case, dtype, channels_last, grad, tf32)
        window = [v for v in views if "ConvWindowView" in v]
        assert len(window) == log.count("gemm_mma.cuh:tap_window"), (views, log)


def test_split_reduction_of_a_deep_layer():
    """128 input channels are 8 stages in one output tile: split-K on the emulator's 4
    multiprocessors, the fp32 partial sums added in split order."""
    case = (1, 128, 7, 7, 16, 1, 1, 1, 1)
    x, w, bits, bias, gy, conv = operands(case, torch.bfloat16, True, seed=1)
    with backends.emulated(), backends.emulator_launches() as log:
        y = functional.masked_conv2d(x, w, bits, bias, **conv)
    assert log == ["gemm_mma.cuh:tap_window", "gemm_split_k.cuh:reduce"], log
    ref_y, _ = oracle(x, w, bits, bias, gy, conv)
    assert rel_error(y, ref_y) < TOLERANCE[torch.bfloat16]
    views = planned_views(case, torch.bfloat16, True, False, False)
    assert "StageSplit<conv::ConvWindowView" in views[0].replace("cpg::emu_kernels::", "")


def test_a_clear_bit_hides_nan_and_inf_weights():
    """The mask selects raw bits: a NaN or Inf behind a clear bit never reaches the sum."""
    case = (2, 16, 5, 5, 16, 1, 1, 1, 1)
    x, w, bits, bias, gy, conv = operands(case, torch.bfloat16, False, seed=2, density=0.5)
    hidden = ~masks.unpack(bits, w.shape)
    w = w.clone()
    w[hidden] = torch.tensor([float("nan"), float("inf")]).to(w.dtype).repeat(
        int(hidden.sum()) // 2 + 1)[: int(hidden.sum())]
    with backends.emulated():
        y = functional.masked_conv2d(x, w, bits, bias, **conv)
        dx = grad_input(gy, w, bits, x.shape, conv)
    ref_y, ref_dx = oracle(x, w, bits, bias, gy, conv)
    assert torch.isfinite(y).all() and torch.isfinite(dx).all()
    assert rel_error(y, ref_y) < TOLERANCE[torch.bfloat16]
    assert rel_error(dx, ref_dx) < TOLERANCE[torch.bfloat16]


# Convs that keep the one-tap-per-stage tiles: not 3x3, or the input gradient's input channels
# not in whole 16-byte vectors (its W runs would cross rows).
OTHER = [((2, 16, 7, 7, 16), 5, 2, "kernel"), ((2, 12, 6, 6, 16), 3, 1, None)]


@pytest.mark.parametrize("shape,k,pad,forward", OTHER, ids=["5x5", "12 input channels"])
def test_other_convs_keep_the_one_tap_tiles(shape, k, pad, forward):
    b, c, h, w_, n = shape
    g = torch.Generator().manual_seed(3)
    w = torch.randn(n, c, k, k, generator=g).bfloat16()
    bits = masks.pack(torch.rand(w.shape, generator=g) < 0.6)
    x = torch.randn(b, c, h, w_, generator=g).bfloat16()
    with backends.emulated(), backends.emulator_launches() as forward_log:
        y = functional.masked_conv2d(x, w, bits, padding=pad)
    gy = torch.randn(y.shape, generator=g).bfloat16()
    with backends.emulated(), backends.emulator_launches() as grad_log:
        torch.ops.cpg.masked_conv2d_grad_input(gy, w, bits, list(x.shape), [1, 1], [pad, pad],
                                               [1, 1], 1)
    if forward is not None:  # 12 input channels: the forward has no 16-byte vectors (simt)
        assert forward_log == ["gemm_mma.cuh:" + forward], forward_log
    assert grad_log == ["gemm_mma.cuh:kernel"], grad_log


def test_the_same_call_gives_the_same_bits():
    case = (2, 24, 6, 7, 20, 1, 1, 1, 1)
    x, w, bits, bias, gy, conv = operands(case, torch.bfloat16, True, seed=4)
    with backends.emulated(seed=5):
        first = functional.masked_conv2d(x, w, bits, bias, **conv)
        again = functional.masked_conv2d(x, w, bits, bias, **conv)
    assert torch.equal(first, again)
