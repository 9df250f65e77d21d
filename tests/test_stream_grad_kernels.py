"""The weight-streaming input gradient (csrc/cuda/gemm_stream_grad.cuh) under the emulator:
dx = dy W' for every dtype, 1 to 64 rows of dy, K and N tails, every fill of its per-warp
pipeline, N split across blocks, its dispatch and plan, and fixed summation order (the same
bits on every run and every thread schedule).

The emulator has 4 multiprocessors (cpgdev::sm_count), so small shapes reach the planner's
splits of N and blocks that take several strips of columns."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from cpg_kernels import _C, backends, functional, masks
from cpg_kernels.testing import assert_within_bound, oracle

EMULATOR_SMS = 4
FILE = "gemm_stream_grad.cuh"
KERNEL = "weight_stream_grad::masked_linear_grad_input_stream_kernel"
SUM = "weight_stream_grad::sum_splits_kernel"
DTYPE_NAME = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


@pytest.fixture
def tf32():
    """TF32 allowed for the test (conftest turns it off again)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    yield


def layer(n, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g).to(dtype)
    bits = masks.pack(torch.rand(n, k, generator=g) < 0.5)
    return w, bits


def grad_oracle(dy, w, bits):
    """float64 dense masking: dy @ (W * mask), with its error bound's terms."""
    active = masks.unpack(bits, tuple(w.shape))
    ref, _ = oracle(lambda dy_, w_: dy_ @ (w_ * active), [dy, w])
    return ref


def check(dx, dy, w, bits, what, tf32=None):
    """Every element within its rounding bound; fp32 with TF32 operands unless told otherwise
    (the stream kernel takes fp32 only where TF32 is allowed)."""
    tf32 = dx.dtype == torch.float32 if tf32 is None else tf32
    assert dx.shape == (dy.shape[0], w.shape[1]) and dx.dtype == dy.dtype
    assert_within_bound(dx, grad_oracle(dy, w, bits), what, tf32=tf32)


def plan(dtype, m, n, k, tf32=False, sms=EMULATOR_SMS):
    return _C.plan_masked_linear(DTYPE_NAME[dtype], 1, m, n, k, True, tf32, sms)


def stream_params(launches):
    [launch] = [d for d in launches if d["kernel"].startswith(KERNEL)]
    return launch["params"]


def warp_positions(params):
    """Each warp's stream positions (chunks over all its strips) in the planned block 0."""
    warps, cps = params["warps"], min(params["chunks_per_split"], params["chunks"])
    strips = math.ceil(params["strips"] / params["strip_blocks"])
    return [strips * max(0, math.ceil((cps - w) / warps)) for w in range(warps)]


def run_grad_input(dy, w, bits, seed=0):
    with backends.emulated(seed), backends.emulator_launches() as log:
        dx = torch.ops.cpg.masked_linear_grad_input(dy, w, bits)
    return dx, log


def expected_log(dtype, m, n, k, tf32=True):
    names = {KERNEL: "kernel", SUM: "sum_kernel"}
    return [f"{FILE}:{names[d['kernel'].split('<')[0]]}" for d in plan(dtype, m, n, k, tf32)]


# ------------------------------------------------------------------------ correctness

# (M, N, K): M over 1 to 64 (n8 tiles 1, 2, 4, 8 and their partial fills); N (the reduction)
# one 16-byte vector, past a 32-row chunk, not a multiple of 32; K one vector, inside a
# 32-column bit word, past a strip (64 columns of 16-bit, 32 of fp32), not a multiple of it.
SHAPES = [
    (1, 8, 8),
    (1, 40, 136),
    (2, 16, 264),
    (3, 72, 72),
    (8, 200, 520),
    (9, 24, 128),
    (16, 56, 200),
    (17, 8, 96),
    (33, 48, 64),
    (64, 16, 40),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("m,n,k", SHAPES, ids=[str(s) for s in SHAPES])
def test_grad_input_matches_the_oracle(dtype, m, n, k, tf32):
    w, bits = layer(n, k, dtype)
    dy = torch.randn(m, n).to(dtype)
    dx, log = run_grad_input(dy, w, bits)
    assert log and log == expected_log(dtype, m, n, k), log
    check(dx, dy, w, bits, (m, n, k))


def test_a_nan_behind_a_clear_bit_is_gone():
    """The mask is applied to W's raw bits in registers, before the byte permutes."""
    w, bits = layer(72, 96, torch.bfloat16)
    w[~masks.unpack(bits, (72, 96))] = float("nan")
    dy = torch.randn(5, 72).bfloat16()
    dx, log = run_grad_input(dy, w, bits)
    assert log == [f"{FILE}:kernel"], log
    check(dx, dy, w.nan_to_num(0.0), bits, "nan behind a clear bit")


# Shapes whose planned blocks give the warps every pipeline fill: no chunk at all, fewer
# chunks than stages, exactly kStages - 1 and kStages, and more, across several strips.
DEPTH_SHAPES = [
    (1, 32, 64),
    (1, 96, 64),
    (2, 256, 64),
    (1, 480, 128),
    (3, 640, 128),
    (1, 160, 1024),
    (1, 288, 1536),
    (1, 128, 2048),
]


def test_the_depth_shapes_cover_every_pipeline_fill():
    stages = None
    seen = set()
    for m, n, k in DEPTH_SHAPES:
        params = stream_params(plan(torch.bfloat16, m, n, k))
        stages = params["stages"]
        seen.update(warp_positions(params))
    assert set(range(stages + 2)) <= seen and max(seen) > stages + 1, sorted(seen)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("m,n,k", DEPTH_SHAPES, ids=[str(s) for s in DEPTH_SHAPES])
def test_every_pipeline_fill(dtype, m, n, k, tf32):
    w, bits = layer(n, k, dtype, seed=1)
    dy = torch.randn(m, n).to(dtype)
    dx, log = run_grad_input(dy, w, bits)
    assert f"{FILE}:kernel" in log, log
    check(dx, dy, w, bits, (m, n, k))


# Split N (one or two strips on 4 SMs, a long N): the partial sums' kernel runs after.
SPLIT_SHAPES = [
    (1, 4096, 64, torch.bfloat16),
    (7, 1000, 32, torch.float32),
    (64, 2048, 64, torch.bfloat16),
    (16, 1032, 120, torch.float16),
]


@pytest.mark.parametrize("m,n,k,dtype", SPLIT_SHAPES, ids=[str(s[:3]) for s in SPLIT_SHAPES])
def test_split_n_adds_partials_in_split_order(m, n, k, dtype, tf32):
    params = stream_params(plan(dtype, m, n, k, tf32=True))
    assert params["splits"] > 1, params
    w, bits = layer(n, k, dtype, seed=2)
    dy = torch.randn(m, n).to(dtype)
    dx, log = run_grad_input(dy, w, bits)
    assert log == [f"{FILE}:kernel", f"{FILE}:sum_kernel"], log
    check(dx, dy, w, bits, (m, n, k))


def test_training_backward_takes_the_stream():
    """cpg_linear's backward at batch 8 in bf16: the input gradient on this kernel."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(40, 64, generator=g).bfloat16().requires_grad_()
    owner = torch.randint(0, 3, (40, 64), generator=g, dtype=torch.uint8)
    x = torch.randn(8, 64, generator=g).bfloat16().requires_grad_()
    with backends.emulated(), backends.emulator_launches() as log:
        functional.cpg_linear(x, w, owner, 2).sum().backward()
    assert f"{FILE}:kernel" in log, log
    bits = masks.active_bits(owner, 2)
    check(x.grad, torch.ones(8, 40).bfloat16(), w.detach(), bits, "backward")


# ---------------------------------------------------------------------- determinism


def test_repeated_calls_and_schedules_give_the_same_bits():
    """Fixed order of every sum: the warps' chains, the warps of a strip, the splits."""
    for m, n, k in [(5, 264, 520), (1, 4096, 64)]:
        w, bits = layer(n, k, torch.bfloat16, seed=4)
        dy = torch.randn(m, n).bfloat16()
        first, _ = run_grad_input(dy, w, bits, seed=1)
        again, _ = run_grad_input(dy, w, bits, seed=1)
        other, _ = run_grad_input(dy, w, bits, seed=2)
        assert torch.equal(first, again) and torch.equal(first, other)


# ------------------------------------------------------------------------- dispatch


def files(log):
    return [e.split(":")[0] for e in log]


def test_dispatch_keeps_the_other_kernels_where_the_stream_does_not_apply():
    w, bits = layer(24, 64, torch.float32)
    # fp32 without TF32: exact fp32 FMA accumulation, small_batch_grad up to 16 rows, then simt.
    dy = torch.randn(3, 24)
    dx, log = run_grad_input(dy, w, bits)
    assert files(log) == ["gemm_small_batch_grad.cuh"], log
    check(dx, dy, w, bits, "exact fp32", tf32=False)
    _, log = run_grad_input(torch.randn(33, 24), w, bits)
    assert files(log) == ["gemm_simt.cuh"], log
    # dy rows not whole 16-byte vectors (N = 20 in bf16), or dy not 16-byte aligned.
    w20, bits20 = layer(20, 64, torch.bfloat16)
    _, log = run_grad_input(torch.randn(3, 20).bfloat16(), w20, bits20)
    assert files(log) == ["gemm_small_batch_grad.cuh"], log
    wb = w.bfloat16()
    offset = torch.randn(3 * 24 + 1).bfloat16()[1:].view(3, 24)
    _, log = run_grad_input(offset, wb, bits)
    assert files(log) == ["gemm_small_batch_grad.cuh"], log
    # More than 64 rows: the tiled tensor-core kernel.
    _, log = run_grad_input(torch.randn(65, 24).bfloat16(), wb, bits)
    assert files(log) == ["gemm_mma.cuh"], log


@pytest.mark.parametrize(
    "m,n,k,dtype,tf32_on",
    [
        (1, 40, 296, torch.bfloat16, False),
        (16, 4096, 64, torch.bfloat16, False),
        (7, 1000, 32, torch.float32, True),
        (64, 16, 72, torch.float16, False),
    ],
)
def test_plan_is_what_the_emulator_launches(m, n, k, dtype, tf32_on):
    torch.backends.cuda.matmul.allow_tf32 = tf32_on
    w, bits = layer(n, k, dtype)
    _, log = run_grad_input(torch.randn(m, n).to(dtype), w, bits)
    assert expected_log(dtype, m, n, k, tf32_on) == log
    [launch, *_] = plan(dtype, m, n, k, tf32=tf32_on)
    params = launch["params"]
    assert launch["grid"] == (params["strip_blocks"], params["splits"], 1)
    assert params["strip_blocks"] * params["splits"] <= 2 * EMULATOR_SMS  # one wave


def test_plan_of_the_issue_shapes_on_an_h100_is_one_wave():
    """dx of 4096 x 4096 and of 4096 x 25088 (N = 4096 rows of W reduced) at batch 1 to 64 on
    132 SMs: every block resident at once (a persistent grid). K's strips (64 or 392) cannot
    fill 132 SMs alone, so N is split; up to 16 rows the partial sums then cost under 7% of
    W's bytes."""
    for k in (4096, 25088):
        for m in (1, 8, 16, 64):
            launches = plan(torch.bfloat16, m, 4096, k, sms=132)
            launch, p = launches[0], launches[0]["params"]
            assert launch["kernel"].startswith(KERNEL), launch
            blocks = launch["grid"][0] * launch["grid"][1] * launch["grid"][2]
            assert blocks <= p["blocks_per_sm"] * 132, launch
            if p["splits"] > 1:
                assert [d["kernel"].split("<")[0] for d in launches[1:]] == [SUM]
            if m <= 16:  # the partial sums, written once and read once, in fp32
                assert 2 * launch["workspace_bytes"] < 0.07 * 2 * 4096 * k, launch


def test_the_models_plan_of_the_old_grad_input_is_the_cpp_one():
    """benchmarks/perfmodel/stream_targets.py predicts "before" on small_batch_grad as its C++
    plan() lays it out; checked where the dispatcher still picks that kernel (fp32 without
    TF32, and 16-bit dy rows that are not whole 16-byte vectors)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from perfmodel import plan as model_plan  # noqa: PLC0415
    from perfmodel import stream_targets  # noqa: PLC0415

    for dtype, elem, m, n, k in [
        (torch.float32, "f32", 1, 4096, 4096),
        (torch.float32, "f32", 16, 4096, 25088),
        (torch.float32, "f32", 5, 300, 70),
        (torch.bfloat16, "bf16", 8, 4095, 4096),
        (torch.float16, "f16", 16, 1001, 1024),
        (torch.bfloat16, "bf16", 1, 9, 31),
    ]:
        for sms in (EMULATOR_SMS, 132):
            want = [model_plan.Launch.from_query(d) for d in plan(dtype, m, n, k, sms=sms)]
            assert want[0].family.startswith("small_batch_grad::"), want
            assert stream_targets.old_grad_input(elem, m, n, k, sms) == want, (m, n, k, sms)
