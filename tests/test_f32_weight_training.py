"""The training step's fp32-weight form (16-bit activations against an fp32 master weight, as
autocast leaves them) under the emulator: the input-gradient stream reading fp32 W and
rounding it in registers (csrc/cuda/gemm_stream_grad.cuh), the weight gradient written as
fp32 (csrc/cuda/gemm_weight_grad.cuh's mixed view) and by the two-pass path, the casts the
ops make where those kernels do not take the problem, and the autograd step that keeps the
fp32 weight (no weight-sized cast) where the forward's stream takes x.

The 16-bit form on W cast to the activations' dtype is the reference: the mixed kernels
read the same rounded operands, so where their plans match they give its bits exactly."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from cpg_kernels import _C, backends, functional, masks, reference
from cpg_kernels.testing import assert_within_bound, oracle, random_owner

sys.path.insert(0, os.path.dirname(__file__))  # the tests' own helper modules (importlib mode)
from recorded_step import emulated_recording  # noqa: E402

EMULATOR_SMS = 4
GRAD_STREAM = "gemm_stream_grad.cuh"
GRAD_KERNEL = "weight_stream_grad::masked_linear_grad_input_f32_weight_stream_kernel"
CAST_GRAD_KERNEL = "weight_stream_grad::masked_linear_grad_input_stream_kernel"
MIXED_WEIGHT_GRAD = "gemm_mma.cuh:f32_weight_grad"
WEIGHT_GRAD = "gemm_mma.cuh:weight_grad"
DTYPE_NAME = {torch.float16: "float16", torch.bfloat16: "bfloat16"}
SIXTEEN = [torch.bfloat16, torch.float16]
TASK = 3


def weight(n, k, seed=0):
    """An fp32 weight with values that 16 bits do not hold (the rounding is visible)."""
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


def random_bits(n, k, seed=1):
    g = torch.Generator().manual_seed(seed)
    return masks.pack(torch.rand(n, k, generator=g) < 0.5)


def grad_input(dy, w, bits):
    with backends.emulated(), backends.emulator_launches() as log:
        dx = torch.ops.cpg.masked_linear_grad_input(dy, w, bits)
    return dx, log


def planned_grad_input(dtype, m, n, k):
    return _C.plan_masked_linear_f32_weight(
        DTYPE_NAME[dtype], 1, m, n, k, EMULATOR_SMS, grad_input=True
    )


def log_names(launches):
    names = {
        GRAD_KERNEL: "f32_weight_kernel",
        "weight_stream_grad::sum_splits_kernel": "sum_kernel",
    }
    return [f"{GRAD_STREAM}:{names[d['kernel'].split('<')[0]]}" for d in launches]


# ---------------------------------------------------------------- input gradient

# (M, N, K): 1 to 64 rows of dy (n8 tiles 1, 2, 4, 8, partly filled), N inside one 32-row
# chunk, past it and past a warp's share; K inside one 64-column strip, past it, with tails;
# then a long N that the planner splits across blocks.
DX_SHAPES = [
    (1, 8, 8),
    (2, 40, 72),
    (5, 16, 136),
    (9, 136, 64),
    (16, 24, 200),
    (33, 72, 128),
    (64, 8, 40),
    (1, 2048, 64),
]


@pytest.mark.parametrize("dtype", SIXTEEN)
@pytest.mark.parametrize("m,n,k", DX_SHAPES, ids=[str(s) for s in DX_SHAPES])
def test_input_gradient_reads_the_fp32_weight_and_gives_the_cast_forms_bits(dtype, m, n, k):
    w, bits = weight(n, k), random_bits(n, k)
    dy = torch.randn(m, n).to(dtype)
    dx, log = grad_input(dy, w, bits)
    launches = planned_grad_input(dtype, m, n, k)
    assert launches and launches[0]["kernel"].startswith(GRAD_KERNEL + "<"), launches
    assert launches[0]["params"]["weight_bytes"] == 4
    assert log == log_names(launches), log
    assert dx.dtype == dtype and dx.shape == (m, k)
    active = masks.unpack(bits, (n, k))
    ref, _ = oracle(lambda dy_, w_: dy_ @ (w_ * active.to(w_.dtype)), [dy, w.to(dtype)])
    assert_within_bound(dx, ref, (m, n, k))
    # The 16-bit stream on the cast weight: the same operands in the same order where the
    # two plans divide the work alike.
    cast_dx, cast_log = grad_input(dy, w.to(dtype), bits)
    [cast] = [
        d
        for d in _C.plan_masked_linear(DTYPE_NAME[dtype], 1, m, n, k, True, False, EMULATOR_SMS)
        if d["kernel"].startswith(CAST_GRAD_KERNEL)
    ]
    same = ("splits", "strip_blocks", "chunks_per_split")
    if all(cast["params"][p] == launches[0]["params"][p] for p in same):
        assert torch.equal(dx, cast_dx), (m, n, k)


def test_the_input_gradient_plan_streams_four_bytes_a_weight():
    [launch] = planned_grad_input(torch.bfloat16, 4, 64, 512)
    [same] = _C.plan_masked_linear("bfloat16", 1, 4, 64, 512, True, False, EMULATOR_SMS)
    assert (launch["params"]["weight_bytes"], same["params"]["weight_bytes"]) == (4, 2)
    assert launch["params"]["strips"] == same["params"]["strips"] == 512 // 64
    assert launch["dynamic_smem"] > same["dynamic_smem"]  # the W ring holds fp32
    assert planned_grad_input(torch.bfloat16, 4, 60, 512) == []  # N not a multiple of 8
    assert planned_grad_input(torch.bfloat16, 65, 64, 512) == []  # more than 64 rows
    with pytest.raises(ValueError, match="one task"):
        _C.plan_masked_linear_f32_weight("bfloat16", 2, 4, 64, 512, EMULATOR_SMS, grad_input=True)


def test_split_n_sums_in_split_order():
    m, n, k = 8, 8192, 64
    launches = planned_grad_input(torch.float16, m, n, k)
    assert launches[0]["params"]["splits"] > 1
    w, bits = weight(n, k, seed=2), random_bits(n, k, seed=3)
    dy = torch.randn(m, n).half()
    dx, log = grad_input(dy, w, bits)
    assert log == [f"{GRAD_STREAM}:f32_weight_kernel", f"{GRAD_STREAM}:sum_kernel"], log
    again, _ = grad_input(dy, w, bits)
    assert torch.equal(dx, again)
    active = masks.unpack(bits, (n, k))
    ref, _ = oracle(lambda dy_, w_: dy_ @ (w_ * active.to(w_.dtype)), [dy, w.half()])
    assert_within_bound(dx, ref, "split N")


@pytest.mark.parametrize("m,n,k", [(65, 16, 64), (4, 20, 64)], ids=["65 rows", "N % 8"])
def test_input_gradient_casts_where_the_stream_does_not_take_it(m, n, k):
    """Past 64 rows, or with W rows of a whole vector of 16 bits but not of the dy row, the
    op casts the weight and runs the 16-bit kernels: exactly their result on the cast."""
    w, bits = weight(n, k, seed=4), random_bits(n, k, seed=5)
    dy = torch.randn(m, n).bfloat16()
    dx, log = grad_input(dy, w, bits)
    cast_dx, cast_log = grad_input(dy, w.bfloat16(), bits)
    assert log == cast_log and f"{GRAD_STREAM}:f32_weight_kernel" not in log, log
    assert torch.equal(dx, cast_dx)


def test_input_gradient_on_the_cpu_casts():
    w, bits = weight(24, 40, seed=6), random_bits(24, 40, seed=7)
    dy = torch.randn(3, 24).half()
    dx = torch.ops.cpg.masked_linear_grad_input(dy, w, bits)
    assert dx.dtype == torch.float16
    assert torch.equal(dx, torch.ops.cpg.masked_linear_grad_input(dy, w.half(), bits))


def test_a_nan_behind_a_clear_bit_is_gone_from_the_input_gradient():
    n, k = 16, 64
    w, bits = weight(n, k, seed=8), random_bits(n, k, seed=9)
    w[~masks.unpack(bits, (n, k))] = float("nan")
    dy = torch.randn(2, n).bfloat16()
    dx, _ = grad_input(dy, w, bits)
    assert torch.isfinite(dx).all()
    assert torch.equal(dx, grad_input(dy, w.bfloat16(), bits)[0])


# ---------------------------------------------------------------- weight gradient

WG_SHAPES = [(1, 8, 8), (5, 24, 40), (70, 136, 200)]


def weight_grad(dy, x, w, bits, owner=None, mask_grad=False, path="auto"):
    with (
        backends.emulated(),
        backends.gemm_path(path),
        backends.emulator_launches() as log,
    ):
        out = torch.ops.cpg.masked_linear_weight_grad(dy, x, w, bits, owner, TASK, mask_grad)
    return out, [entry.split("<")[0] for entry in log]


@pytest.mark.parametrize("dtype", SIXTEEN)
@pytest.mark.parametrize("m,n,k", WG_SHAPES, ids=[str(s) for s in WG_SHAPES])
@pytest.mark.parametrize("form", ["training", "inference"])
def test_weight_gradient_is_fp32_with_the_cast_forms_values(dtype, m, n, k, form):
    """dW comes out fp32 holding exactly the 16-bit form's values on the cast weight (G
    rounded to the dtype, widened), dm exactly the same: W is rounded before the product."""
    g = torch.Generator().manual_seed(m + n)
    dy = torch.randn(m, n, generator=g).to(dtype)
    x = torch.randn(m, k, generator=g).to(dtype)
    w = torch.randn(n, k, generator=g)
    owner = random_owner((n, k), generator=g) if form == "training" else None
    bits = masks.active_bits(owner, TASK) if owner is not None else random_bits(n, k)
    mask_grad = owner is not None
    (gw, gm), log = weight_grad(dy, x, w, bits, owner, mask_grad)
    (cast_w, cast_m), cast_log = weight_grad(dy, x, w.to(dtype), bits, owner, mask_grad)
    assert MIXED_WEIGHT_GRAD in log and WEIGHT_GRAD in cast_log, (log, cast_log)
    assert gw.dtype == torch.float32 and gw.shape == (n, k)
    assert torch.equal(gw, cast_w.float())
    assert torch.equal(gm, cast_m)


@pytest.mark.parametrize("dtype", SIXTEEN)
def test_two_pass_weight_gradient_is_fp32_with_the_cast_forms_values(dtype):
    """The two-pass path (the library GEMM, then the rule chunk by chunk on W's rows cast)
    and the CPU path give the same values as the fused mixed kernel's form."""
    m, n, k = 12, 24, 40
    g = torch.Generator().manual_seed(21)
    dy = torch.randn(m, n, generator=g).to(dtype)
    x = torch.randn(m, k, generator=g).to(dtype)
    w = torch.randn(n, k, generator=g)
    owner = random_owner((n, k), generator=g)
    bits = masks.active_bits(owner, TASK)
    (gw, gm), log = weight_grad(dy, x, w, bits, owner, True, path="library")
    (cast_w, cast_m), _ = weight_grad(dy, x, w.to(dtype), bits, owner, True, path="library")
    assert MIXED_WEIGHT_GRAD not in log
    assert gw.dtype == torch.float32
    assert torch.equal(gw, cast_w.float()) and torch.equal(gm, cast_m)
    cpu_w, cpu_m = torch.ops.cpg.masked_linear_weight_grad(dy, x, w, bits, owner, TASK, True)
    ref_w, ref_m = torch.ops.cpg.masked_linear_weight_grad(
        dy, x, w.to(dtype), bits, owner, TASK, True
    )
    assert cpu_w.dtype == torch.float32
    assert torch.equal(cpu_w, ref_w.float()) and torch.equal(cpu_m, ref_m)


def test_the_weight_gradient_plan_names_the_mixed_view():
    [mixed] = _C.plan_linear_weight_grad("bfloat16", 16, 128, 256, False, 132, f32_weight=True)
    [same] = _C.plan_linear_weight_grad("bfloat16", 16, 128, 256, False, 132)
    assert "weight_grad::F32WeightGradView<" in mixed["kernel"], mixed["kernel"]
    assert "weight_grad::WeightGradView<" in same["kernel"], same["kernel"]
    assert mixed["grid"] == same["grid"] and mixed["params"] == same["params"]
    with pytest.raises(ValueError, match="16-bit"):
        _C.plan_linear_weight_grad("float32", 16, 128, 256, True, 132, f32_weight=True)


def test_weight_gradient_checks_grad_out_against_x():
    w = weight(16, 32)
    x = torch.randn(4, 32).bfloat16()
    with pytest.raises(ValueError, match=r"grad_out: expected dtype .*BFloat16.*dtype of x"):
        torch.ops.cpg.masked_linear_weight_grad(
            torch.randn(4, 16), x, w, random_bits(16, 32), None, 0, False
        )


# ---------------------------------------------------------------- the training step


def training_step(x, w, owner, mask, dy):
    """One cpg_linear forward and backward under the emulator, with every op's outputs
    recorded by the profiler (ops called from C++ included) and the launch log."""
    w = w.detach().clone().requires_grad_()
    mask = mask.detach().clone().requires_grad_()
    x = x.detach().clone().requires_grad_()
    with emulated_recording() as (log, casts):
        y = functional.cpg_linear(x, w, owner, TASK, mask=mask)
        y.backward(dy)
    return y, x.grad, w.grad, mask.grad, log, casts


def same_division(dtype, m, n, k):
    """Whether the mixed and the 16-bit input-gradient streams divide the work alike (then
    they add the same operands in the same order)."""
    [mixed] = planned_grad_input(dtype, m, n, k)[:1]
    [cast] = _C.plan_masked_linear(DTYPE_NAME[dtype], 1, m, n, k, True, False, EMULATOR_SMS)[:1]
    keys = ("splits", "strip_blocks", "chunks_per_split")
    return all(mixed["params"][p] == cast["params"][p] for p in keys)


def cast_step(x, w, owner, mask, dy):
    """The same step with the weight cast differentiably before the op, as autocast alone
    would run it: the 16-bit kernels throughout, the cast's backward widening dW."""
    w = w.detach().clone().requires_grad_()
    mask = mask.detach().clone().requires_grad_()
    x = x.detach().clone().requires_grad_()
    with backends.emulated():
        y = functional.cpg_linear(x, w.to(x.dtype), owner, TASK, mask=mask)
        y.backward(dy)
    return y, x.grad, w.grad, mask.grad


@pytest.mark.parametrize("dtype", SIXTEEN)
@pytest.mark.parametrize("m", [1, 16, 64])
def test_training_keeps_the_fp32_weight_and_makes_no_weight_sized_cast(dtype, m):
    n, k = 48, 128
    g = torch.Generator().manual_seed(m)
    w = torch.randn(n, k, generator=g)
    owner = random_owner((n, k), generator=g)
    mask = torch.rand(n, k, generator=g) * 0.01  # about half above the threshold
    x = torch.randn(m, k, generator=g).to(dtype)
    dy = torch.randn(m, n, generator=g).to(dtype)
    y, dx, dw, dm, log, casts = training_step(x, w, owner, mask, dy)
    names = [entry.split("<")[0] for entry in log]
    assert "gemm_stream.cuh:f32_weight_kernel" in names, log
    assert f"{GRAD_STREAM}:f32_weight_kernel" in names, log
    assert MIXED_WEIGHT_GRAD in names, log
    assert [n, k] not in casts, casts
    assert y.dtype == dx.dtype == dtype and dw.dtype == dm.dtype == torch.float32
    # The gradients of the same dy are the cast step's bits (dx where the two streams divide
    # the work alike); the forward agrees within the rounding of its own summation order.
    cast_y, cast_dx, cast_dw, cast_dm = cast_step(x, w, owner, mask, dy)
    assert torch.equal(dw, cast_dw) and torch.equal(dm, cast_dm)
    if same_division(dtype, m, n, k):
        assert torch.equal(dx, cast_dx)
    ref_y, ref_grads = oracle(
        lambda x_, w_, m_: reference.linear(x_, w_, owner, TASK, m_),
        [x, w.to(dtype)],
        [mask],
        grad_output=dy,
    )
    ref_dx = ref_grads[0]
    assert_within_bound(y, ref_y, ("y", m))
    assert_within_bound(dx, ref_dx, ("dx", m))


def test_training_casts_once_where_the_forward_stream_does_not_take_x():
    """Past 64 rows the weight is cast first, differentiably (the cast, saved for the
    backward, and the cast's backward widening dW): the step autocast alone would run."""
    n, k, m = 16, 64, 80
    g = torch.Generator().manual_seed(5)
    w = torch.randn(n, k, generator=g)
    owner = random_owner((n, k), generator=g)
    mask = torch.rand(n, k, generator=g) * 0.01
    x = torch.randn(m, k, generator=g).bfloat16()
    dy = torch.randn(m, n, generator=g).bfloat16()
    y, dx, dw, dm, log, casts = training_step(x, w, owner, mask, dy)
    assert "gemm_stream.cuh:f32_weight_kernel" not in log, log
    assert casts.count([n, k]) == 2, casts
    cast_y, cast_dx, cast_dw, cast_dm = cast_step(x, w, owner, mask, dy)
    assert torch.equal(y, cast_y) and torch.equal(dx, cast_dx)
    assert torch.equal(dw, cast_dw) and torch.equal(dm, cast_dm)
