"""The linear forwards' fp32-weight form (a 16-bit x against an fp32 weight, as autocast leaves
them) and its kernel, the weight stream reading fp32 W and rounding it in registers
(csrc/cuda/gemm_stream.cuh), under the emulator: every 16-bit dtype, 1 to 64 rows, K tails,
every pipeline fill, split K, multi-task groups, fixed summation order; the plan; the cast
the op makes where that kernel does not take the problem; autocast, autograd and the fakes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cpg_kernels as C
from cpg_kernels import _C, backends, functional, masks, reference
from cpg_kernels.testing import assert_within_bound, oracle

EMULATOR_SMS = 4
STREAM = "gemm_stream.cuh"
KERNEL = "weight_stream::masked_linear_f32_weight_stream_kernel"
DTYPE_NAME = {torch.float16: "float16", torch.bfloat16: "bfloat16"}
SIXTEEN = [torch.bfloat16, torch.float16]


def layer(n, k, dtype, tasks=1, seed=0):
    """An fp32 weight with values that 16 bits do not hold (the rounding is visible), its
    tasks' bits, and a bias of x's dtype."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    bits = torch.stack([masks.pack(torch.rand(n, k, generator=g) < 0.5) for _ in range(tasks)])
    bias = torch.randn(n, generator=g).to(dtype)
    return w, bits, bias


def check(y, x, w, bits, bias, what):
    """Within the rounding bound of the same op on W cast to x's dtype: the operands are
    those of the cast weight, summed in the stream's own order."""
    active = masks.unpack(bits, tuple(w.shape))
    ref, _ = oracle(
        lambda x_, w_, b_: reference.masked_linear(x_, w_, active, b_),
        [x, w.to(x.dtype), bias],
    )
    assert y.dtype == x.dtype
    assert_within_bound(y, ref, what)


def planned(dtype, tasks, m, n, k):
    return _C.plan_masked_linear_f32_weight(DTYPE_NAME[dtype], tasks, m, n, k, EMULATOR_SMS)


def log_names(launches):
    names = {KERNEL: "f32_weight_kernel", "weight_stream::sum_splits_kernel": "sum_kernel"}
    return [f"{STREAM}:{names[d['kernel'].split('<')[0]]}" for d in launches]


def run(x, w, bits, bias, seed=0):
    with torch.no_grad(), backends.emulated(seed), backends.emulator_launches() as log:
        y = functional.masked_linear(x, w, bits, bias)
    return y, log


# (M, N, K): 1 to 64 rows (n8 tiles 1, 2, 4, 8, partly filled), N past a 16-row tile, K one
# 8-column step, tails inside a 64-column chunk and inside a bit word; then the pipeline's
# fills (several tiles per warp, fewer chunks than stages) and a split K.
SHAPES = [
    (1, 1, 8),
    (1, 17, 136),
    (2, 16, 264),
    (3, 33, 72),
    (9, 20, 128),
    (16, 31, 200),
    (33, 18, 64),
    (64, 7, 40),
    (1, 300, 256),
    (3, 48, 2048),
    (1, 16, 4096),
]


@pytest.mark.parametrize("dtype", SIXTEEN)
@pytest.mark.parametrize("m,n,k", SHAPES, ids=[str(s) for s in SHAPES])
def test_forward_reads_the_fp32_weight_and_matches_the_cast_one(dtype, m, n, k):
    w, bits, bias = layer(n, k, dtype)
    x = torch.randn(m, k).to(dtype)
    y, log = run(x, w, bits[0], bias)
    launches = planned(dtype, 1, m, n, k)
    assert launches and launches[0]["kernel"].startswith(KERNEL + "<"), launches
    assert log == log_names(launches), log
    check(y, x, w, bits[0], bias, (m, n, k))


def test_the_plan_reads_four_bytes_a_weight_in_half_chunks():
    [launch] = planned(torch.bfloat16, 1, 4, 64, 512)
    p = launch["params"]
    assert (p["weight_bytes"], p["quads"], p["chunks"]) == (4, 2, 512 // 64)
    [same] = _C.plan_masked_linear("bfloat16", 1, 4, 64, 512, False, False, EMULATOR_SMS)
    q = same["params"]
    assert (q["weight_bytes"], q["quads"], q["chunks"]) == (2, 4, 512 // 128)
    assert planned(torch.bfloat16, 1, 4, 64, 500) == []  # K not a multiple of 8
    assert planned(torch.bfloat16, 1, 65, 64, 512) == []  # more than 64 rows
    with pytest.raises(ValueError, match="dtype"):
        _C.plan_masked_linear_f32_weight("int8", 1, 4, 64, 512, EMULATOR_SMS)


def test_split_k_sums_in_split_order():
    m, n, k = 16, 30, 8192
    launches = planned(torch.float16, 1, m, n, k)
    assert launches[0]["params"]["splits"] > 1
    w, bits, bias = layer(n, k, torch.float16, seed=2)
    x = torch.randn(m, k).half()
    y, log = run(x, w, bits[0], bias)
    assert log == [f"{STREAM}:f32_weight_kernel", f"{STREAM}:sum_kernel"], log
    check(y, x, w, bits[0], bias, "split K")


@pytest.mark.parametrize("tasks,m", [(2, 3), (8, 1), (11, 1), (3, 17)])
def test_multitask_groups(tasks, m):
    n, k = 21, 264
    w, bits, bias = layer(n, k, torch.bfloat16, tasks=tasks, seed=3)
    x = torch.randn(tasks, m, k).bfloat16()
    with torch.no_grad(), backends.emulated(), backends.emulator_launches() as log:
        y = functional.masked_linear_multitask(x, w, bits, bias)
    assert log == log_names(planned(torch.bfloat16, tasks, m, n, k)), log
    for t in range(tasks):
        check(y[t], x[t], w, bits[t], bias, (tasks, m, t))


def test_a_nan_behind_a_clear_bit_is_gone_and_rounding_is_to_nearest_even():
    """The mask applies to the rounded bits: a clear bit gives 0 whatever the fp32 value (a
    NaN included); a set one gives the cast's value (round to nearest, ties to even)."""
    n, k = 16, 64
    w, bits, _ = layer(n, k, torch.float16)
    active = masks.unpack(bits[0], (n, k))
    w[~active] = float("nan")
    # 65519 rounds down to f16's largest finite, the two ties to even, -1e-8 to -0.
    w[0, :] = torch.tensor([65519.0, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, -1e-8] * 16)
    bits[0, 0] = -1  # row 0 wholly active
    x = torch.zeros(1, k, dtype=torch.float16)
    for j in range(4):
        x.zero_()
        x[0, j] = 1.0
        y, _ = run(x, w, bits[0], None)
        assert torch.equal(y[0, 0], w[0, j].half()), (j, y[0, 0], w[0, j].half())
        assert not y.isnan().any()


def test_same_bits_on_every_run_and_schedule():
    w, bits, bias = layer(33, 520, torch.bfloat16, seed=4)
    x = torch.randn(5, 520).bfloat16()
    first, _ = run(x, w, bits[0], bias, seed=1)
    again, _ = run(x, w, bits[0], bias, seed=1)
    other, _ = run(x, w, bits[0], bias, seed=2)
    assert torch.equal(first, again) and torch.equal(first, other)


def test_where_the_stream_does_not_take_it_the_op_casts_the_weight():
    """K not a multiple of 8, more than 64 rows, an unaligned x, the CPU path: each gives
    exactly the op on the cast weight."""
    w, bits, bias = layer(20, 70, torch.bfloat16)
    cases = [(torch.randn(3, 70).bfloat16(), w, bits[0])]
    w64, bits64, _ = layer(20, 64, torch.bfloat16)
    cases.append((torch.randn(65, 64).bfloat16(), w64, bits64[0]))
    cases.append((torch.randn(3 * 64 + 1).bfloat16()[1:].view(3, 64), w64, bits64[0]))
    b20 = bias
    for x, wt, bt in cases:
        y, log = run(x, wt, bt, b20)
        with torch.no_grad(), backends.emulated(), backends.emulator_launches() as cast_log:
            cast = functional.masked_linear(x, wt.to(x.dtype), bt, b20)
        assert log == cast_log and torch.equal(y, cast), (x.shape, log)
    x = torch.randn(3, 64).half()
    with torch.no_grad():
        assert torch.equal(
            functional.masked_linear(x, w64, bits64[0], None),
            functional.masked_linear(x, w64.half(), bits64[0], None),
        )


def test_checks_of_the_fp32_weight_form():
    w, bits, bias = layer(8, 16, torch.bfloat16)
    x = torch.randn(2, 16).bfloat16()
    with pytest.raises(ValueError, match=r"bias: expected dtype BFloat16 \(the dtype of x\)"):
        functional.masked_linear(x, w, bits[0], bias.float())
    with pytest.raises(ValueError, match="x: expected dtype BFloat16"):
        functional.masked_linear(torch.randn(2, 16), w.bfloat16(), bits[0])  # not the reverse
    with pytest.raises(ValueError, match="x: expected dtype Float"):
        functional.masked_linear(x.double(), w, bits[0])
    # The multi-task conv keeps one dtype (the conv forward's form: test_f32_weight_conv.py).
    with pytest.raises(ValueError, match="x: expected dtype Float"):
        functional.masked_conv2d_multitask(
            torch.randn(2, 1, 2, 4, 4).bfloat16(),
            torch.randn(3, 2, 1, 1),
            torch.stack([masks.pack(torch.ones(3, 2, dtype=torch.bool))] * 2),
        )


def test_fakes_follow_the_fp32_weight_form():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 3, 16, dtype=torch.bfloat16)
        w = torch.empty(8, 16)
        bits = torch.empty(8, 1, dtype=torch.int32)
        y = torch.ops.cpg.masked_linear(x, w, bits, torch.empty(8, dtype=torch.bfloat16))
        assert y.dtype == torch.bfloat16 and y.shape == (2, 3, 8)
        z = torch.ops.cpg.masked_linear_multitask(x, w, bits.expand(2, 8, 1).contiguous())
        assert z.dtype == torch.bfloat16 and z.shape == (2, 3, 8)
        with pytest.raises(ValueError, match="the dtype of x"):
            torch.ops.cpg.masked_linear(x, w, bits, torch.empty(8))


def test_with_grad_the_weight_is_cast_differentiably():
    """The training form casts the weight (its grad reaches the fp32 weight in fp32, as under
    autocast) and matches the op on a weight cast by the caller, bit for bit."""
    w, bits, bias = layer(12, 32, torch.bfloat16)
    owner = torch.randint(0, 3, w.shape, dtype=torch.uint8)
    x = torch.randn(4, 32).bfloat16()
    w1 = w.clone().requires_grad_()
    y1 = functional.cpg_linear(x, w1, owner, 2, bias=bias)
    w2 = w.clone().requires_grad_()
    y2 = functional.cpg_linear(x, w2.to(torch.bfloat16), owner, 2, bias=bias)
    assert torch.equal(y1, y2)
    y1.float().square().sum().backward()
    y2.float().square().sum().backward()
    assert w1.grad.dtype == torch.float32 and torch.equal(w1.grad, w2.grad)


def test_autocast_keeps_the_fp32_weight_for_the_linear_forward():
    """Under autocast the linear forward sees the fp32 weight (its fp32-weight form), so under
    no_grad the stream reads it: the launches are the fp32-weight plan's, and the result is
    what the 16-bit x and bias against the fp32 weight give outside autocast."""
    w, bits, bias = layer(24, 256, torch.bfloat16)
    x = torch.randn(2, 256)
    with backends.emulated(), torch.no_grad(), backends.emulator_launches() as log:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = functional.masked_linear(x, w, bits[0], bias.float())
    assert log == log_names(planned(torch.bfloat16, 1, 2, 24, 256)), log
    direct, _ = run(x.bfloat16(), w, bits[0], bias)
    assert torch.equal(y, direct)


def test_a_converted_model_at_inference_under_autocast_streams_fp32_weights():
    """The user's path: a converted MLP after a task, evaluated under bf16 autocast without
    grad. Its CPG linear layers run the fp32-weight stream (no cast of their weights), the
    logits agree with the CPU path's (which casts) within bf16's rounding, and repeated
    evaluation gives the same bits."""
    torch.manual_seed(0)
    # Two CPG linear layers; the last Linear becomes the per-task head (a plain layer).
    model = C.convert(
        nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16))
    )
    C.begin_task(model, 1, num_classes=4)
    C.prune(model, 0.5)
    C.finalize_task(model)
    model.eval()
    x = torch.randn(3, 64)

    def logits():
        with torch.no_grad(), C.task(model, 1), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x)

    with backends.emulated(), backends.emulator_launches() as log:
        out = logits()
    with backends.emulated():
        again = logits()
    cast = logits()  # the CPU path: the op casts the weight
    assert log.count(f"{STREAM}:f32_weight_kernel") == 2, log
    assert out.dtype == torch.bfloat16 and torch.equal(out, again)
    scale = cast.float().abs().max()
    assert (out.float() - cast.float()).abs().max() <= 2**-6 * scale
