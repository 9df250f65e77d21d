"""The input gradient of late conv layers (one group, at most 64 output pixels) on the weight
stream under the emulator: dcols = dy W' by weight_stream_grad on dy's pixels as rows (NHWC dy
as it is, NCHW or unaligned dy gathered by dy_rows_kernel), left as fp32 partial sums that
fold_kernel adds tap by tap (csrc/cuda/conv_unfolded.cuh). Shapes the stream does not take,
and fp32, stay on small_batch_grad."""

from __future__ import annotations

import pytest
import torch

from cpg_kernels import _C, backends, masks
from cpg_kernels.testing import assert_within_bound, oracle

STREAM = "gemm_stream_grad.cuh:kernel"
GATHER = "conv_unfolded.cuh:dy_rows"
FOLD = "conv_unfolded.cuh:fold"
SMALL_BATCH = "gemm_small_batch_grad.cuh"
DTYPE_NAME = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}
SIXTEEN = [torch.bfloat16, torch.float16]
LAYOUTS = [torch.contiguous_format, torch.channels_last]
LAYOUT_IDS = ["nchw", "nhwc"]

# (batch, C_in, H, W, C_out, kernel, stride, padding): the GEMM is dcols[pixels, C_in taps]
# = dy[pixels, C_out] W'. C_out and C_in * taps in whole 16-byte vectors of the 16-bit types,
# C_in past the direct kernel's 8 columns.
CASES = {
    "one pixel": (1, 16, 3, 3, 24, 3, 1, 0),
    "12 pixels over 3 images: 2 n8 tiles": (3, 16, 2, 2, 16, 3, 1, 1),
    "9 pixels, K = 216: a partial strip": (1, 24, 5, 5, 32, 3, 2, 1),
    "16 pixels, 1x1 (NHWC takes the linear path)": (1, 32, 4, 4, 40, 1, 1, 0),
    "49 pixels, stride 2: 7 n8 tiles": (1, 16, 13, 13, 16, 3, 2, 1),
    "64 pixels (the limit), 8 tiles": (4, 16, 4, 4, 24, 3, 1, 1),
    "1024 output channels": (1, 16, 3, 3, 1024, 3, 1, 1),
    # One strip of W columns for 4 multiprocessors (the emulator's): N split across blocks.
    "1x1, 1024 output channels, one strip: N split": (1, 16, 3, 3, 1024, 1, 1, 0),
}


def operands(case, dtype, fmt, seed=0):
    b, c, h, w_, n, k, stride, pad = case
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, c, k, k, generator=g).to(dtype)
    bits = masks.pack(torch.rand(w.shape, generator=g) < 0.6)
    ho, wo = ((size + 2 * pad - k) // stride + 1 for size in (h, w_))
    dy = torch.randn(b, n, ho, wo, generator=g).to(dtype).contiguous(memory_format=fmt)
    conv = {"stride": [stride] * 2, "padding": [pad] * 2, "dilation": [1, 1], "groups": 1}
    return dy, w, bits, [b, c, h, w_], conv


def grad_input(dy, w, bits, x_shape, conv):
    with backends.emulated(), backends.emulator_launches() as log:
        dx = torch.ops.cpg.masked_conv2d_grad_input(
            dy, w, bits, x_shape, conv["stride"], conv["padding"], conv["dilation"], 1
        )
    return dx, log


def reference(dy, w, bits, x_shape, conv):
    active = masks.unpack(bits, tuple(w.shape))
    ref, _ = oracle(
        lambda g_, w_: torch.nn.grad.conv2d_input(x_shape, w_ * active, g_, **conv), [dy, w]
    )
    return ref


def planned(dy, w, x_shape, conv, channels_last):
    return _C.plan_masked_conv2d(
        DTYPE_NAME[dy.dtype],
        1,
        x_shape,
        w.shape[0],
        list(w.shape[2:]),
        conv["stride"],
        conv["padding"],
        conv["dilation"],
        1,
        channels_last,
        True,
        False,
        4,
    )


@pytest.mark.parametrize("fmt", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("dtype", SIXTEEN, ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_late_layer_input_gradient_streams_the_weight(case, dtype, fmt):
    dy, w, bits, x_shape, conv = operands(case, dtype, fmt)
    dx, log = grad_input(dy, w, bits, x_shape, conv)
    assert_within_bound(dx, reference(dy, w, bits, x_shape, conv), "dx")
    channels_last = fmt is torch.channels_last
    assert dx.is_contiguous(memory_format=fmt) or dx.is_contiguous()
    pointwise_nhwc = channels_last and case[5] == 1
    if pointwise_nhwc:  # the linear layer's own stream (and its split sum), no fold
        assert log[0] == STREAM and all(e.startswith("gemm_stream_grad.cuh") for e in log), log
        return
    # dy's pixels are rows of NHWC dy as it is (and of NCHW dy of one pixel an image); other
    # NCHW dy is gathered first.
    gathered = not channels_last and dy.shape[2] * dy.shape[3] > 1
    assert log == ([GATHER] if gathered else []) + [STREAM, FOLD], log
    plan = planned(dy, w, x_shape, conv, channels_last)
    kernels = [d["kernel"].split("<")[0] for d in plan]
    assert kernels == (["conv::unfolded::dy_rows_kernel"] if gathered else []) + [
        "weight_stream_grad::masked_linear_grad_input_stream_kernel",
        "conv::unfolded::fold_kernel",
    ], plan
    stream, fold = plan[-2], plan[-1]
    splits = stream["params"]["splits"]
    dy_pixels = dy.shape[0] * dy.shape[2] * dy.shape[3]
    # The partial sums are the fold's input even without a split: every launch has them.
    assert stream["workspace_bytes"] == 4 * splits * dy_pixels * w[0].numel()
    assert fold["params"]["splits"] == splits
    assert fold["params"]["partial_sums"] == splits * dy_pixels * w[0].numel()
    assert stream["params"]["M"] == dy_pixels and stream["params"]["N"] == w.shape[0]


def test_the_split_case_splits_on_the_emulators_multiprocessors():
    """The one-strip case's plan (4 multiprocessors, as the emulator reports) splits N, so the
    fold adds more than one partial sum per tap."""
    dy, w, _, x_shape, conv = operands(
        CASES["1x1, 1024 output channels, one strip: N split"],
        torch.bfloat16,
        torch.contiguous_format,
    )
    stream = planned(dy, w, x_shape, conv, False)[-2]
    assert stream["params"]["splits"] > 1, stream


@pytest.mark.parametrize("dtype", SIXTEEN, ids=["bf16", "fp16"])
def test_unaligned_nhwc_dy_is_gathered_into_the_same_bits(dtype):
    """NHWC dy that starts mid-storage (not 16-byte aligned) is gathered as rows: the same plan
    and operands, so dx is bit-equal to the aligned dy's."""
    dy, w, bits, x_shape, conv = operands(
        CASES["49 pixels, stride 2: 7 n8 tiles"], dtype, torch.channels_last
    )
    storage = torch.empty(dy.numel() + 1, dtype=dtype)[1:]
    dy_off = storage.as_strided(dy.shape, dy.stride()).copy_(dy)
    assert dy_off.data_ptr() % 16 != 0
    aligned, _ = grad_input(dy, w, bits, x_shape, conv)
    shifted, log = grad_input(dy_off, w, bits, x_shape, conv)
    assert log == [GATHER, STREAM, FOLD], log
    assert torch.equal(aligned, shifted)


@pytest.mark.parametrize("dtype", SIXTEEN, ids=["bf16", "fp16"])
def test_both_layouts_give_the_same_bits(dtype):
    """NCHW dy gathered and NHWC dy read as it is are the same rows under one plan: dx agrees
    bit for bit (in its own layout)."""
    case = CASES["64 pixels (the limit), 8 tiles"]
    dy, w, bits, x_shape, conv = operands(case, dtype, torch.contiguous_format)
    nchw, _ = grad_input(dy, w, bits, x_shape, conv)
    nhwc, _ = grad_input(dy.contiguous(memory_format=torch.channels_last), w, bits, x_shape, conv)
    assert torch.equal(nchw, nhwc)


# Shapes the stream does not take: output channels (the stream's dy rows) or the reduction's
# K = C_in * taps not in whole 16-byte vectors, and fp32 (exact, no TF32 on this path).
FALLBACK = {
    "C_out = 20": ((1, 16, 4, 4, 20, 3, 1, 1), torch.bfloat16),
    "K = 108 (C_in = 12)": ((1, 12, 4, 4, 16, 3, 1, 1), torch.float16),
    "fp32": ((1, 16, 4, 4, 24, 3, 1, 1), torch.float32),
}


@pytest.mark.parametrize("fmt", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("case,dtype", list(FALLBACK.values()), ids=list(FALLBACK))
def test_other_late_layers_stay_on_the_small_batch_kernel(case, dtype, fmt):
    dy, w, bits, x_shape, conv = operands(case, dtype, fmt)
    dx, log = grad_input(dy, w, bits, x_shape, conv)
    assert_within_bound(dx, reference(dy, w, bits, x_shape, conv), "dx")
    assert [e.split(":")[0] for e in log] == [SMALL_BATCH, "conv_unfolded.cuh"], log
    kernels = [d["kernel"] for d in planned(dy, w, x_shape, conv, fmt is torch.channels_last)]
    assert kernels[0].startswith("small_batch_grad::"), kernels
