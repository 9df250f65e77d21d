"""The conv training step's fp32-weight form (16-bit activations against an fp32 master weight,
as autocast leaves them) under the emulator, for the late layers the weight streams take (one
group, at most 64 output pixels over the batch): the forward and the input gradient read the
fp32 weight and round it in registers (csrc/cuda/conv_unfolded.cuh, gemm_stream_grad.cuh),
the gradient epilogue writes dW in fp32 (elementwise.cu's mixed form), and the autograd step
makes no weight-sized cast. Elsewhere it casts the weight first, as autocast alone would.

The 16-bit form on W cast to the activations' dtype is the reference: the mixed kernels read
the same rounded operands, so dW and dm are its bits, and dx is where the two input-gradient
plans divide the work alike."""

from __future__ import annotations

import contextlib
import os
import sys

import pytest
import torch

from cpg_kernels import _C, backends, functional, masks, reference
from cpg_kernels.testing import assert_within_bound, oracle, random_owner

sys.path.insert(0, os.path.dirname(__file__))  # the tests' own helper modules (importlib mode)
from recorded_step import emulated_recording  # noqa: E402

EMULATOR_SMS = 4
DTYPE_NAME = {torch.float16: "float16", torch.bfloat16: "bfloat16"}
SIXTEEN = [torch.bfloat16, torch.float16]
LAYOUTS = [torch.contiguous_format, torch.channels_last]
TASK = 3
FORWARD = "gemm_stream.cuh:f32_weight_kernel"
DX = "gemm_stream_grad.cuh:f32_weight_kernel"
EPILOGUE = "elementwise.cu:grad_epilogue_pass"

# (batch, C_in, H, W, C_out, kernel, stride, padding): late layers of 1 to 64 output pixels.
CASES = {
    "3x3, 16 pixels": (1, 16, 4, 4, 24, 3, 1, 1),
    "3x3 stride 2, 4 images, 36 pixels": (4, 16, 5, 5, 16, 3, 2, 1),
    "3x3, 64 pixels (the limit)": (4, 24, 4, 4, 32, 3, 1, 1),
    "1x1, 9 pixels (NHWC: the linear streams)": (1, 16, 3, 3, 40, 1, 1, 0),
}


def operands(case, dtype, fmt, seed=0):
    b, c, h, w_, n, k, stride, pad = case
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, c, k, k, generator=g)
    owner = random_owner(tuple(w.shape), generator=g)
    mask = torch.rand(w.shape, generator=g) * 0.01  # about half above the threshold
    x = torch.randn(b, c, h, w_, generator=g).to(dtype).contiguous(memory_format=fmt)
    ho, wo = ((size + 2 * pad - k) // stride + 1 for size in (h, w_))
    dy = torch.randn(b, n, ho, wo, generator=g).to(dtype).contiguous(memory_format=fmt)
    return x, w, owner, mask, dy, {"stride": stride, "padding": pad}


def step(x, w, owner, mask, dy, conv, cast=False):
    """One cpg_conv2d forward and backward under the emulator (with ``cast``, on W cast
    differentiably first, as autocast alone would run it), the launch log, and the shapes of
    every cast the ops made (the profiler sees those called from C++ too)."""
    w = w.detach().clone().requires_grad_()
    mask = mask.detach().clone().requires_grad_()
    x = x.detach().clone().requires_grad_()
    with emulated_recording() as (log, casts):
        y = functional.cpg_conv2d(x, w.to(x.dtype) if cast else w, owner, TASK, mask=mask, **conv)
        y.backward(dy)
    return y, x.grad, w.grad, mask.grad, log, casts


def dx_plans_divide_alike(x, w, conv, channels_last):
    """Whether the mixed and the 16-bit input-gradient streams split the work alike (then
    they add the same operands in the same order)."""

    def stream(f32_weight):
        plan = _C.plan_masked_conv2d(
            DTYPE_NAME[x.dtype], 1, list(x.shape), w.shape[0], list(w.shape[2:]),
            [conv["stride"]] * 2, [conv["padding"]] * 2, [1, 1], 1, channels_last, True, False,
            EMULATOR_SMS, f32_weight=f32_weight,
        )  # fmt: skip
        [launch] = [d for d in plan if d["kernel"].startswith("weight_stream_grad::masked")]
        return launch["params"]

    mixed, cast = stream(True), stream(False)
    return all(mixed[p] == cast[p] for p in ("splits", "strip_blocks", "chunks_per_split"))


@pytest.mark.parametrize("fmt", LAYOUTS, ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", SIXTEEN, ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_training_keeps_the_fp32_weight_and_makes_no_weight_sized_cast(case, dtype, fmt):
    x, w, owner, mask, dy, conv = operands(case, dtype, fmt)
    y, dx, dw, dm, log, casts = step(x, w, owner, mask, dy, conv)
    names = [entry.split("<")[0] for entry in log]
    assert FORWARD in names and DX in names and EPILOGUE in names, log
    assert list(w.shape) not in casts, casts
    assert y.dtype == dx.dtype == dtype and dw.dtype == dm.dtype == torch.float32
    cast_y, cast_dx, cast_dw, cast_dm, _, cast_casts = step(x, w, owner, mask, dy, conv, True)
    assert cast_casts.count(list(w.shape)) == 2, cast_casts  # the cast and its widening
    assert torch.equal(dw, cast_dw) and torch.equal(dm, cast_dm)
    channels_last = fmt is torch.channels_last
    if dx_plans_divide_alike(x, w, conv, channels_last):
        assert torch.equal(dx, cast_dx)
    ref_y, ref_grads = oracle(
        lambda x_, w_, m_: reference.conv2d(x_, w_, owner, TASK, m_, **conv),
        [x, w.to(dtype)],
        [mask],
        grad_output=dy,
    )
    assert_within_bound(y, ref_y, "y")
    assert_within_bound(dx, ref_grads[0], "dx")


def test_training_casts_once_past_64_output_pixels():
    """Past 64 output pixels the weight is cast first, differentiably: the step autocast alone
    would run, bit for bit."""
    x, w, owner, mask, dy, conv = operands((5, 16, 4, 4, 24, 3, 1, 1), torch.bfloat16,
                                           torch.contiguous_format)  # fmt: skip
    y, dx, dw, dm, log, casts = step(x, w, owner, mask, dy, conv)
    assert FORWARD not in log and DX not in log, log
    assert casts.count(list(w.shape)) == 2, casts
    cast_y, cast_dx, cast_dw, cast_dm, _, _ = step(x, w, owner, mask, dy, conv, cast=True)
    assert torch.equal(y, cast_y) and torch.equal(dx, cast_dx)
    assert torch.equal(dw, cast_dw) and torch.equal(dm, cast_dm)


def test_a_layer_without_owners_widens_the_masked_gradient():
    """masked_conv2d's own autograd (bits, no owner): dW is the bits applied to G in 16 bits,
    widened to the fp32 weight's dtype, as the cast form's."""
    x, w, _, _, dy, conv = operands(CASES["3x3, 16 pixels"], torch.bfloat16,
                                    torch.contiguous_format)  # fmt: skip
    bits = masks.pack(torch.rand(w.shape, generator=torch.Generator().manual_seed(4)) < 0.5)
    grads = []
    for weight in (w, w):
        leaf = weight.detach().clone().requires_grad_()
        with backends.emulated():
            use = leaf if not grads else leaf.to(torch.bfloat16)
            functional.masked_conv2d(x, use, bits, **conv).backward(dy)
        grads.append(leaf.grad)
    assert grads[0].dtype == torch.float32 and torch.equal(grads[0], grads[1])


# ---------------------------------------------------------------- the ops' mixed forms


@pytest.mark.parametrize("fmt", LAYOUTS, ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", SIXTEEN, ids=["bf16", "fp16"])
def test_input_gradient_op_reads_the_fp32_weight(dtype, fmt):
    case = CASES["3x3 stride 2, 4 images, 36 pixels"]
    x, w, _, _, dy, conv = operands(case, dtype, fmt)
    bits = masks.pack(torch.rand(w.shape, generator=torch.Generator().manual_seed(2)) < 0.5)

    def grad_input(weight):
        with backends.emulated(), backends.emulator_launches() as log:
            dx = torch.ops.cpg.masked_conv2d_grad_input(
                dy, weight, bits, list(x.shape), [2, 2], [1, 1], [1, 1], 1
            )
        return dx, log

    dx, log = grad_input(w)
    cast_dx, _ = grad_input(w.to(dtype))
    assert dx.dtype == dtype and DX in log, log
    channels_last = fmt is torch.channels_last
    plan = _C.plan_masked_conv2d(
        DTYPE_NAME[dtype], 1, list(x.shape), w.shape[0], [3, 3], [2, 2], [1, 1], [1, 1], 1,
        channels_last, True, False, EMULATOR_SMS, f32_weight=True,
    )  # fmt: skip
    kernels = [d["kernel"].split("<")[0] for d in plan]
    assert "weight_stream_grad::masked_linear_grad_input_f32_weight_stream_kernel" in kernels
    assert kernels[-1] == "conv::unfolded::fold_kernel", kernels
    if dx_plans_divide_alike(x, w, conv, channels_last):
        assert torch.equal(dx, cast_dx)
    active = masks.unpack(bits, tuple(w.shape))
    ref, _ = oracle(
        lambda g_, w_: torch.nn.grad.conv2d_input(x.shape, w_ * active, g_, stride=2, padding=1),
        [dy, w.to(dtype)],
    )
    assert_within_bound(dx, ref, "dx")


def test_input_gradient_op_casts_where_no_stream_takes_it():
    """Past 64 dy pixels, and on the CPU path, the op casts the weight: the cast form's bits."""
    x, w, _, _, dy, conv = operands((5, 16, 4, 4, 24, 3, 1, 1), torch.bfloat16,
                                    torch.contiguous_format)  # fmt: skip
    bits = masks.pack(torch.ones(w.shape, dtype=torch.bool))
    args = (list(x.shape), [1, 1], [1, 1], [1, 1], 1)
    for run in (backends.emulated, contextlib.nullcontext):  # the emulator, the CPU path
        with run(), backends.emulator_launches() as log:
            mixed = torch.ops.cpg.masked_conv2d_grad_input(dy, w, bits, *args)
            cast = torch.ops.cpg.masked_conv2d_grad_input(dy, w.bfloat16(), bits, *args)
        assert DX not in log and torch.equal(mixed, cast)


BACKENDS = {"emu": backends.emulated, "cpu": contextlib.nullcontext}


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("dtype", SIXTEEN, ids=["bf16", "fp16"])
def test_grad_epilogue_mixed_form_gives_the_cast_forms_values(backend, dtype):
    """16-bit G against an fp32 weight: dW in fp32 (the 16-bit rule widened), dm from W
    rounded to 16 bits; 37 elements, so the vector chunks and the element tail both run."""
    g = torch.Generator().manual_seed(9)
    w = torch.randn(37, generator=g)
    grad = torch.randn(37, generator=g).to(dtype)
    owner = random_owner((37,), generator=g)
    with BACKENDS[backend](), backends.emulator_launches() as log:
        gw, gm = torch.ops.cpg.grad_epilogue(grad, w, owner, TASK, True)
        cast_gw, cast_gm = torch.ops.cpg.grad_epilogue(grad, w.to(dtype), owner, TASK, True)
    assert gw.dtype == torch.float32 and gm.dtype == torch.float32
    assert torch.equal(gw, cast_gw.float()) and torch.equal(gm, cast_gm)
    if backend == "emu":
        assert log.count(EPILOGUE) == 2, log
    with pytest.raises(ValueError, match="grad: expected dtype"):
        torch.ops.cpg.grad_epilogue(grad.float().double(), w, owner, TASK, True)
