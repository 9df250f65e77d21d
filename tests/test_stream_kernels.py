"""The weight-streaming forward kernel (csrc/cuda/gemm_stream.cuh) under the emulator: every
dtype, 1 to 64 rows, K tails, every fill of its per-warp pipeline, split K, multi-task groups,
the unfolded late-conv path, its dispatch and plan, and fixed summation order (the same bits on
every run and every thread schedule).

The emulator has 4 multiprocessors (cpgdev::sm_count), so small shapes reach the planner's
splits and multi-tile blocks."""

from __future__ import annotations

import math

import pytest
import torch

from cpg_kernels import _C, backends, functional, masks, reference
from cpg_kernels.testing import assert_within_bound, oracle

EMULATOR_SMS = 4
STREAM = "gemm_stream.cuh"
KERNEL = "weight_stream::masked_linear_stream_kernel"
SUM = "weight_stream::sum_splits_kernel"
DTYPE_NAME = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


@pytest.fixture
def tf32():
    """TF32 allowed for the test (conftest turns it off again)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    yield


def layer(n, k, dtype, tasks=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g).to(dtype)
    bits = torch.stack([masks.pack(torch.rand(n, k, generator=g) < 0.5) for _ in range(tasks)])
    bias = torch.randn(n, generator=g).to(dtype)
    return w, bits, bias


def linear_oracle(x, w, bits, bias):
    """float64 dense masking of one task, with its error bound's terms."""
    active = masks.unpack(bits, tuple(w.shape))
    ref, _ = oracle(lambda x_, w_, b_: reference.masked_linear(x_, w_, active, b_), [x, w, bias])
    return ref


def check(y, x, w, bits, bias, what, tf32=None):
    """Every element within its rounding bound; fp32 with TF32 operands unless told otherwise
    (the stream kernel takes fp32 only where TF32 is allowed)."""
    tf32 = y.dtype == torch.float32 if tf32 is None else tf32
    assert_within_bound(y, linear_oracle(x, w, bits, bias), what, tf32=tf32)


def plan(dtype, tasks, m, n, k, tf32=False):
    return _C.plan_masked_linear(DTYPE_NAME[dtype], tasks, m, n, k, False, tf32, EMULATOR_SMS)


def stream_launch(launches):
    [launch] = [d for d in launches if d["kernel"].startswith(KERNEL)]
    return launch["params"]


def warp_positions(params):
    """Each warp's stream positions (chunks over all its tiles) in the planned block 0."""
    warps, cps = params["warps"], min(params["chunks_per_split"], params["chunks"])
    tiles = math.ceil(params["row_tiles"] / params["row_blocks"])
    return [tiles * max(0, math.ceil((cps - w) / warps)) for w in range(warps)]


def run_linear(x, w, bits, bias, seed=0):
    with backends.emulated(seed), backends.emulator_launches() as log:
        y = functional.masked_linear(x, w, bits, bias)
    return y, log


# ------------------------------------------------------------------------ correctness

# (M, N, K): M over 1 to 64 (n8 tiles 1, 2, 4, 8 and their partial fills), N past a 16-row
# tile, K one 16-byte vector, tails inside a chunk and inside a bit word.
SHAPES = [
    (1, 1, 8),
    (1, 17, 136),
    (2, 16, 264),
    (3, 33, 72),
    (8, 9, 520),
    (9, 20, 128),
    (16, 31, 200),
    (17, 5, 96),
    (33, 18, 64),
    (64, 7, 40),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("m,n,k", SHAPES, ids=[str(s) for s in SHAPES])
def test_forward_matches_the_oracle(dtype, m, n, k, tf32):
    w, bits, bias = layer(n, k, dtype)
    x = torch.randn(m, k).to(dtype)
    y, log = run_linear(x, w, bits[0], bias)
    assert log == [f"{STREAM}:kernel"], log
    assert y.dtype == dtype
    check(y, x, w, bits[0], bias, (m, n, k))


def test_without_bias_and_a_nan_behind_a_clear_bit():
    """The mask is applied to W's raw bits in registers: a NaN whose bit is clear is gone."""
    w, bits, _ = layer(20, 96, torch.bfloat16)
    unpacked = masks.unpack(bits[0], (20, 96))
    w[~unpacked] = float("nan")
    x = torch.randn(5, 96).bfloat16()
    y, log = run_linear(x, w, bits[0], None)
    assert log == [f"{STREAM}:kernel"]
    check(y, x, w.nan_to_num(0.0), bits[0], None, "nan behind a clear bit")


# Shapes whose planned blocks give the warps every pipeline fill: no chunk at all, fewer
# chunks than stages, exactly kStages - 1 and kStages, and more, across several tiles.
DEPTH_SHAPES = [
    (1, 16, 128),
    (1, 16, 512),
    (2, 16, 896),
    (1, 40, 1536),
    (3, 48, 2048),
    (1, 200, 384),
    (1, 300, 256),
    (1, 400, 128),
]


def test_the_depth_shapes_cover_every_pipeline_fill():
    stages = None
    seen = set()
    for m, n, k in DEPTH_SHAPES:
        params = stream_launch(plan(torch.bfloat16, 1, m, n, k))
        stages = params["stages"]
        seen.update(warp_positions(params))
    assert set(range(stages + 2)) <= seen and max(seen) > stages + 1, sorted(seen)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("m,n,k", DEPTH_SHAPES, ids=[str(s) for s in DEPTH_SHAPES])
def test_every_pipeline_fill(dtype, m, n, k, tf32):
    w, bits, bias = layer(n, k, dtype, seed=1)
    x = torch.randn(m, k).to(dtype)
    y, log = run_linear(x, w, bits[0], bias)
    assert f"{STREAM}:kernel" in log
    check(y, x, w, bits[0], bias, (m, n, k))


# Split K (one or two row tiles on 4 SMs, a long K): the partial sums' kernel runs after.
SPLIT_SHAPES = [
    (1, 16, 4096, torch.bfloat16),
    (7, 5, 4000, torch.float32),
    (64, 16, 8192, torch.bfloat16),
    (16, 30, 4104, torch.float16),
]


@pytest.mark.parametrize("m,n,k,dtype", SPLIT_SHAPES, ids=[str(s[:3]) for s in SPLIT_SHAPES])
def test_split_k_adds_partials_in_split_order(m, n, k, dtype, tf32):
    params = stream_launch(plan(dtype, 1, m, n, k, tf32=True))
    assert params["splits"] > 1, params
    w, bits, bias = layer(n, k, dtype, seed=2)
    x = torch.randn(m, k).to(dtype)
    y, log = run_linear(x, w, bits[0], bias)
    assert log == [f"{STREAM}:kernel", f"{STREAM}:sum_kernel"], log
    check(y, x, w, bits[0], bias, (m, n, k))


# (tasks, M per task): one group of 2..8 tasks, tasks of 2 n8 tiles, more than 8 tasks (two
# groups, the last one partial), and 3 tiles per task (2 tasks per group).
MULTITASK = [(2, 3), (8, 1), (4, 9), (11, 1), (3, 17)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("tasks,m", MULTITASK, ids=[str(c) for c in MULTITASK])
def test_multitask_groups(dtype, tasks, m, tf32):
    n, k = 21, 264
    w, bits, bias = layer(n, k, dtype, tasks=tasks, seed=3)
    x = torch.randn(tasks, m, k).to(dtype)
    with backends.emulated(), backends.emulator_launches() as log:
        y = functional.masked_linear_multitask(x, w, bits, bias)
    assert f"{STREAM}:kernel" in log, log
    params = stream_launch(
        _C.plan_masked_linear(DTYPE_NAME[dtype], tasks, m, n, k, False, True, EMULATOR_SMS)
    )
    assert params["tasks_per_group"] == min(tasks, 8 // math.ceil(m / 8))
    for t in range(tasks):
        check(y[t], x[t], w, bits[t], bias, (tasks, m, t))


# ---------------------------------------------------------------------- determinism


def test_repeated_calls_and_schedules_give_the_same_bits():
    """Fixed order of every sum: the warps' chains, the warps in a tile, the splits."""
    for m, n, k in [(5, 33, 520), (1, 16, 4096)]:
        w, bits, bias = layer(n, k, torch.bfloat16, seed=4)
        x = torch.randn(m, k).bfloat16()
        first, _ = run_linear(x, w, bits[0], bias, seed=1)
        again, _ = run_linear(x, w, bits[0], bias, seed=1)
        other, _ = run_linear(x, w, bits[0], bias, seed=2)
        assert torch.equal(first, again) and torch.equal(first, other)


# ------------------------------------------------------------------------- dispatch


def test_dispatch_keeps_the_other_kernels_where_the_stream_does_not_apply():
    w, bits, bias = layer(20, 64, torch.float32)
    x = torch.randn(3, 64)
    # fp32 without TF32: exact fp32 FMA accumulation on the small-batch kernel.
    y, log = run_linear(x, w, bits[0], bias)
    assert log == ["gemm_small_batch.cuh:kernel"], log
    check(y, x, w, bits[0], bias, "exact fp32", tf32=False)
    # 16-bit rows that are not whole 16-byte vectors (K = 70), or x not 16-byte aligned.
    w70, bits70, bias70 = layer(20, 70, torch.bfloat16)
    _, log = run_linear(torch.randn(3, 70).bfloat16(), w70, bits70[0], bias70)
    assert [e.split(":")[0] for e in log] == ["gemm_small_batch.cuh"], log
    wb = w.bfloat16()
    offset = torch.randn(3 * 64 + 1).bfloat16()[1:].view(3, 64)
    _, log = run_linear(offset, wb, bits[0], bias.bfloat16())
    assert [e.split(":")[0] for e in log] == ["gemm_small_batch.cuh"], log
    # More than 64 rows: the tiled tensor-core kernel.
    _, log = run_linear(torch.randn(65, 64).bfloat16(), wb, bits[0], bias.bfloat16())
    assert [e.split(":")[0] for e in log] == ["gemm_mma.cuh"], log


@pytest.mark.parametrize(
    "m,n,k,dtype,tf32_on",
    [
        (1, 40, 300 - 300 % 8, torch.bfloat16, False),
        (16, 16, 4096, torch.bfloat16, False),
        (7, 5, 4000, torch.float32, True),
        (64, 9, 64, torch.float16, False),
    ],
)
def test_plan_is_what_the_emulator_launches(m, n, k, dtype, tf32_on):
    torch.backends.cuda.matmul.allow_tf32 = tf32_on
    w, bits, bias = layer(n, k, dtype)
    _, log = run_linear(torch.randn(m, k).to(dtype), w, bits[0], bias)
    planned = plan(dtype, 1, m, n, k, tf32=tf32_on)
    names = {KERNEL: "kernel", SUM: "sum_kernel"}
    assert [f"{STREAM}:{names[d['kernel'].split('<')[0]]}" for d in planned] == log
    params = planned[0]["params"]
    assert planned[0]["grid"] == (params["row_blocks"], params["splits"], 1)
    assert params["row_blocks"] * params["splits"] <= 2 * EMULATOR_SMS  # one wave


def test_plan_of_the_issue_shapes_on_an_h100_is_one_wave():
    """4096 x 4096 and 4096 x 25088 at batch 1 to 64 on 132 SMs: every block resident at once
    (a persistent grid). K is split only where a block's x would not fit shared memory or the
    row tiles cannot fill the SMs; up to 16 rows the partial sums then cost under 2% of W's
    bytes. (At 64 rows a block stages at most 8 chunks of x, so 4096 x 4096 takes 4 splits
    whose partial sums are a quarter of W's bytes: a known cost of staging x whole.)"""
    for k in (4096, 25088):
        for m in (1, 8, 16, 64):
            launches = _C.plan_masked_linear("bfloat16", 1, m, 4096, k, False, False, 132)
            launch, p = launches[0], launches[0]["params"]
            assert launch["kernel"].startswith(KERNEL), launch
            blocks = launch["grid"][0] * launch["grid"][1] * launch["grid"][2]
            assert blocks <= p["blocks_per_sm"] * 132, launch
            if k == 4096 and m <= 16:
                assert p["splits"] == 1 and len(launches) == 1, p
            if p["splits"] > 1:
                assert [d["kernel"].split("<")[0] for d in launches[1:]] == [SUM]
            if m <= 16:  # the partial sums, written once and read once, in fp32
                assert 2 * launch["workspace_bytes"] < 0.02 * 2 * 4096 * k, launch


# ------------------------------------------------------------- the unfolded conv path


def conv_oracle(x, w, bits, bias):
    """float64 dense masking of a stride-1, padding-1 conv."""
    active = masks.unpack(bits, tuple(w.shape))
    ref, _ = oracle(
        lambda x_, w_, b_: reference.masked_conv2d(x_, w_, active, b_, padding=1), [x, w, bias]
    )
    return ref


def test_late_conv_streams_the_weight_on_the_unfolded_path():
    """bf16 conv with 4 output pixels (VGG conv5-like, small): the windows unfold, then the
    stream kernel; fp32 stays on the exact small-batch kernel."""
    g = torch.Generator().manual_seed(5)
    for dtype, kernel in ((torch.bfloat16, STREAM), (torch.float32, "gemm_small_batch.cuh")):
        w = torch.randn(24, 16, 3, 3, generator=g).to(dtype)
        bits = masks.pack(torch.rand(w.shape, generator=g) < 0.5)
        bias = torch.randn(24, generator=g).to(dtype)
        x = torch.randn(1, 16, 2, 2, generator=g).to(dtype)
        for fmt in (torch.contiguous_format, torch.channels_last):
            xf = x.contiguous(memory_format=fmt)
            with backends.emulated(), backends.emulator_launches() as log:
                y = functional.masked_conv2d(xf, w, bits, bias, padding=1)
            assert [e.split(":")[0] for e in log] == ["conv_unfolded.cuh", kernel], log
            assert_within_bound(y, conv_oracle(x, w, bits, bias), (dtype, fmt))


def test_late_conv_multitask_on_the_stream_kernel():
    g = torch.Generator().manual_seed(6)
    w = torch.randn(20, 8, 3, 3, generator=g).bfloat16()
    bits = torch.stack([masks.pack(torch.rand(w.shape, generator=g) < 0.5) for _ in range(3)])
    x = torch.randn(3, 1, 8, 3, 3, generator=g).bfloat16()
    with backends.emulated(), backends.emulator_launches() as log:
        y = functional.masked_conv2d_multitask(x, w, bits, padding=1)
    assert [e.split(":")[0] for e in log] == ["conv_unfolded.cuh", STREAM], log
    for t in range(3):
        assert_within_bound(y[t], conv_oracle(x[t], w, bits[t], None), t)
