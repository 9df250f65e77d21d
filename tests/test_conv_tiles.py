"""The tensor-core conv tiles of csrc/cuda/conv_window.cuh (3x3 kernels: every tap of a 16-byte
channel block per stage, W loaded by 16-byte runs and masked in registers, tap-major tiles, a
4-stage ring, 128 x 64 tiles where the columns fit them) against the float64 oracle's element-wise
bound, and the dispatch around them: which convs take them, which tile, which keep the
one-tap-per-stage tiles (conv_views.cuh ConvMmaView). Under the emulator the launch log names the
tap-window launches ("gemm_mma.cuh:tap_window", 128 x 128; "gemm_mma.cuh:tap_window_n64",
128 x 64) apart from the other tensor-core launches."""

from __future__ import annotations

import pytest
import torch

from cpg_kernels import _C, backends, functional, masks
from cpg_kernels.testing import assert_within_bound, oracle

EMULATOR_SMS = 4  # cpgdev::sm_count() of the emulator
WIDE, NARROW = "gemm_mma.cuh:tap_window", "gemm_mma.cuh:tap_window_n64"
SPLIT_REDUCE = "gemm_split_k.cuh:reduce"

# (batch, C_in, H, W, C_out, stride, padding, dilation, groups) of 3x3 convs with more than the
# 64 output pixels of the unfolded path, and the input gradient's tap-window launch (None: none;
# stride 2 runs by phases of 1 to 4 taps, 23 output channels are no 16-byte vectors, 8 input
# channels are few enough for the direct kernel). The forward's tile follows
# from C_out / groups, the input gradient's from C_in / groups (64 or fewer: 128 x 64).
CASES = {
    "23 output channels, two row tiles (dx: simt)": ((2, 16, 9, 9, 23, 1, 1, 1, 1), None),
    "24 input channels: three 16-bit stages": ((2, 24, 6, 7, 24, 1, 1, 1, 1), NARROW),
    "136 output channels: two wide column tiles": ((3, 16, 5, 5, 136, 1, 1, 1, 1), NARROW),
    "72 input channels: a wide input-gradient tile": ((3, 72, 5, 5, 16, 1, 1, 1, 1), WIDE),
    "a 64-channel layer": ((1, 64, 9, 9, 64, 1, 1, 1, 1), NARROW),
    "groups 2": ((2, 32, 5, 5, 32, 1, 1, 1, 2), NARROW),
    "stride 2": ((2, 16, 13, 13, 16, 2, 1, 1, 1), None),
    "stride 2, dilation 2: one input-gradient phase takes all 9 taps": (
        (2, 16, 13, 13, 16, 2, 2, 2, 1),
        NARROW,
    ),
    "unpadded, 8 input channels (dx: direct)": ((3, 8, 8, 7, 16, 1, 0, 1, 1), None),
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
    return torch.ops.cpg.masked_conv2d_grad_input(
        gy, w, bits, list(x_shape), s, p, d, conv["groups"]
    )


def oracles(x, w, bits, bias, gy, conv):
    """The forward's and the input gradient's float64 oracles (value, magnitude, terms)."""
    active = masks.unpack(bits, tuple(w.shape)).double()
    y, _ = oracle(
        lambda x_, w_, b_: torch.nn.functional.conv2d(x_, w_ * active, b_, **conv), [x, w, bias]
    )
    dx, _ = oracle(
        lambda g_, w_: torch.nn.grad.conv2d_input(x.shape, w_ * active, g_, **conv), [gy, w]
    )
    return y, dx


def planned(case, dtype, channels_last, grad, tf32):
    b, c, h, w_, n, stride, pad, dil, groups = case
    name = {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(dtype, "float32")
    return _C.plan_masked_conv2d(
        name,
        1,
        [b, c, h, w_],
        n,
        [3, 3],
        [stride] * 2,
        [pad] * 2,
        [dil] * 2,
        groups,
        channels_last,
        grad,
        tf32,
        EMULATOR_SMS,
    )


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize(
    "dtype,tf32", PRECISIONS, ids=[f"{str(d)[6:]}{'-tf32' if t else ''}" for d, t in PRECISIONS]
)
@pytest.mark.parametrize("name", list(CASES))
def test_tap_window_tiles_match_the_oracle(name, dtype, tf32, channels_last):
    case, grad_launch = CASES[name]
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
    ref_y, ref_dx = oracles(x, w, bits, bias, gy, conv)
    assert_within_bound(y, ref_y, ("y", name), tf32=tf32)
    assert_within_bound(dx, ref_dx, ("dx", name), tf32=tf32)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt) and dx.is_contiguous(memory_format=fmt)
    forward_launch = NARROW if case[4] // case[8] <= 64 else WIDE
    assert set(forward_log) <= {forward_launch, SPLIT_REDUCE} and forward_launch in forward_log, (
        forward_log
    )
    if grad_launch is None:
        assert not {WIDE, NARROW} & set(grad_log), grad_log
    else:
        # A stride phase that no tap reaches is zeros, which the direct kernel writes.
        zeros = {"conv_direct.cuh:kernel"} if case[5] > 1 else set()
        assert set(grad_log) <= {grad_launch, SPLIT_REDUCE} | zeros, grad_log
        assert grad_log.count(grad_launch) == 1, grad_log
    # The plan query (what the performance model reads) names the same tiles.
    for grad, log in ((False, forward_log), (True, grad_log)):
        plan = planned(case, dtype, channels_last, grad, tf32)
        window = [
            p
            for p in plan
            if p["kernel"].startswith("mma::masked_gemm_mma_kernel<")
            and "ConvWindowView" in p["kernel"]
        ]
        assert len(window) == log.count(WIDE) + log.count(NARROW), (plan, log)
        for p in window:
            assert p["params"]["tile_n"] == (64 if NARROW in log else 128), p
            assert p["params"]["ring"] == 4 and p["params"]["k_steps"] == 5, p


# (case, direction, launch) whose stages outnumber the tiles: 128 reduction channels are 16
# 16-bit stages (32 TF32), at most 2 (4) splits of the 8-stage minimum, on 1-2 tiles.
SPLIT = {
    "forward, narrow": ((2, 128, 7, 7, 16, 1, 1, 1, 1), "y", NARROW),
    "forward, wide": ((2, 128, 7, 7, 136, 1, 1, 1, 1), "y", WIDE),
    "input gradient, narrow": ((2, 16, 7, 7, 128, 1, 1, 1, 1), "dx", NARROW),
    "input gradient, wide": ((2, 136, 7, 7, 128, 1, 1, 1, 1), "dx", WIDE),
}


@pytest.mark.parametrize("dtype,tf32", PRECISIONS[::2], ids=["bfloat16", "float32-tf32"])
@pytest.mark.parametrize("name", list(SPLIT))
def test_split_reduction_of_a_deep_layer(name, dtype, tf32):
    """Split-K where the tiles are fewer than the emulator's 4 multiprocessors: the fp32 partial
    sums added in split order."""
    case, direction, launch = SPLIT[name]
    x, w, bits, bias, gy, conv = operands(case, dtype, True, seed=1)
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        with backends.emulated(), backends.emulator_launches() as log:
            if direction == "y":
                out = functional.masked_conv2d(x, w, bits, bias, **conv)
            else:
                out = grad_input(gy, w, bits, x.shape, conv)
    finally:
        torch.backends.cudnn.allow_tf32 = old
    assert log == [launch, SPLIT_REDUCE], log
    ref_y, ref_dx = oracles(x, w, bits, bias, gy, conv)
    assert_within_bound(out, ref_y if direction == "y" else ref_dx, (direction, name), tf32=tf32)
    plan = planned(case, dtype, True, direction == "dx", tf32)
    kernel = plan[0]["kernel"].replace("cpg::emu_kernels::", "")
    assert kernel.startswith(
        "mma::masked_gemm_mma_kernel<split_k::StageSplit<conv::ConvWindowView<"
    ), kernel
    assert plan[0]["params"]["splits"] > 1, plan


def test_a_clear_bit_hides_nan_and_inf_weights():
    """The mask selects raw bits: a NaN or Inf behind a clear bit never reaches the sum."""
    case = (2, 16, 5, 5, 16, 1, 1, 1, 1)
    x, w, bits, bias, gy, conv = operands(case, torch.bfloat16, False, seed=2, density=0.5)
    hidden = ~masks.unpack(bits, w.shape)
    w = w.clone()
    w[hidden] = (
        torch.tensor([float("nan"), float("inf")])
        .to(w.dtype)
        .repeat(int(hidden.sum()) // 2 + 1)[: int(hidden.sum())]
    )
    with backends.emulated():
        y = functional.masked_conv2d(x, w, bits, bias, **conv)
        dx = grad_input(gy, w, bits, x.shape, conv)
    ref_y, ref_dx = oracles(x, torch.where(hidden, 0.0, w), bits, bias, gy, conv)
    assert_within_bound(y, ref_y, "y")
    assert_within_bound(dx, ref_dx, "dx")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_an_old_task_is_bit_exact_after_later_tasks_change_their_weights(channels_last):
    """CPG's promise on the tap-window tiles: task 2's output depends only on the weights that
    tasks 1-2 own, so rewriting every other weight (later tasks', free ones) changes no bit."""
    case = (2, 32, 6, 6, 40, 1, 1, 1, 1)
    x, w, _, bias, _, conv = operands(case, torch.bfloat16, channels_last, seed=6)
    g = torch.Generator().manual_seed(7)
    owner = torch.randint(0, 5, w.shape, generator=g, dtype=torch.uint8)
    bits = masks.active_bits(owner, 2)
    with backends.emulated(), backends.emulator_launches() as log:
        before = functional.masked_conv2d(x, w, bits, bias, **conv)
    later = (owner == 0) | (owner > 2)
    changed = torch.where(later, torch.randn(w.shape, generator=g).to(w.dtype) * 1e4, w)
    changed[later & (torch.rand(w.shape, generator=g) < 0.1)] = float("nan")
    with backends.emulated():
        after = functional.masked_conv2d(x, changed, bits, bias, **conv)
    assert log == [NARROW], log
    assert torch.equal(before, after)


# Convs that keep the one-tap-per-stage tiles: not 3x3, or the input gradient's input channels
# not in whole 16-byte vectors (its W runs would cross rows; the forward of 12 or 17 has no
# 16-byte vectors at all: simt).
OTHER = [
    ((2, 16, 7, 7, 16), 5, 2, "kernel"),
    ((2, 12, 6, 6, 16), 3, 1, None),
    ((2, 17, 6, 6, 16), 3, 1, None),
]


@pytest.mark.parametrize(
    "shape,k,pad,forward", OTHER, ids=["5x5", "12 input channels", "17 input channels"]
)
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
        torch.ops.cpg.masked_conv2d_grad_input(
            gy, w, bits, list(x.shape), [1, 1], [pad, pad], [1, 1], 1
        )
    one_tap = {"gemm_mma.cuh:kernel", SPLIT_REDUCE}
    if forward is not None:
        assert forward_log[0] == "gemm_mma.cuh:" + forward, forward_log
        assert set(forward_log) <= one_tap, forward_log
    else:
        assert forward_log and not {WIDE, NARROW} & set(forward_log), forward_log
    assert grad_log[0] == "gemm_mma.cuh:kernel" and set(grad_log) <= one_tap, grad_log


def test_the_same_call_gives_the_same_bits():
    case = (2, 24, 6, 7, 20, 1, 1, 1, 1)
    x, w, bits, bias, gy, conv = operands(case, torch.bfloat16, True, seed=4)
    with backends.emulated(seed=5):
        first = functional.masked_conv2d(x, w, bits, bias, **conv)
        again = functional.masked_conv2d(x, w, bits, bias, **conv)
    assert torch.equal(first, again)
