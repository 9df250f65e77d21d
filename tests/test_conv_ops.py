"""Masked conv2d ops against the float64 dense-masking oracle, on every backend.

Every comparison with the oracle holds each element to the rounding bound of
cpg_kernels.testing, with |x| and |W_eff| through the same conv for the magnitudes.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from cpg_kernels import backends, functional, masks, reference
from cpg_kernels.testing import assert_within_bound, bound_ratio, oracle, random_mask, random_owner

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


# (batch, C_in, H, W, C_out, kernel, stride, padding, dilation, groups)
CASES = [
    (1, 3, 7, 7, 5, 3, 1, 1, 1, 1),
    (2, 4, 9, 8, 6, 3, 2, 0, 1, 2),
    (2, 6, 11, 11, 6, 3, 1, 2, 2, 6),  # depthwise, dilation 2
    (1, 8, 5, 5, 16, 1, 1, 0, 1, 1),  # 1x1
    (2, 3, 15, 13, 4, 7, 2, 3, 1, 1),  # 7x7 stem-like
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


def check_dx(backend, dx, ref, what, tf32=False):
    """The input gradient against its oracle. Call it last: on the CPU path in 16 bits it is a
    known defect (csrc/ops/conv_ops.cpp takes it from ATen's CPU conv_transpose2d, which sums
    in 16 bits: up to 170x the bound on these cases), reported, and the test is marked
    xfail there once its other checks have passed."""
    if backend.name == "cpu" and dx.dtype in (torch.float16, torch.bfloat16):
        ratio = bound_ratio(dx, ref)
        if ratio > 1:
            pytest.xfail(
                f"CPU path: 16-bit conv input gradient summed in 16 bits ({ratio:.0f}x the bound)"
            )
        return
    assert_within_bound(dx, ref, what, tf32=tf32)


def inference_oracle(x, w, bits, bias, conv):
    active = masks.unpack(bits.cpu(), tuple(w.shape))
    ref, _ = oracle(
        lambda x_, w_, b_: reference.masked_conv2d(x_, w_, active, b_, **conv), [x, w, bias]
    )
    return ref


def grad_input_oracle(gy, w, bits, x_shape, conv):
    active = masks.unpack(bits.cpu(), tuple(w.shape))
    ref, _ = oracle(
        lambda g_, w_: torch.nn.grad.conv2d_input(x_shape, w_ * active, g_, **conv), [gy, w]
    )
    return ref


def check_training(backend, x, w, owner, task, mask, bias, conv, what, threshold=None):
    """cpg_conv2d forward and every gradient against the oracle, and the frozen-weight rule."""
    kw = {} if threshold is None else {"threshold": threshold}
    # The ops compare the float32 mask with the threshold as a float32; the oracle runs in
    # float64, so it gets the threshold rounded to float32, which decides alike.
    ref_kw = {} if threshold is None else {"threshold": float(torch.tensor(threshold).float())}
    leaves = [
        None if t is None else t.detach().clone().requires_grad_() for t in (x, w, mask, bias)
    ]
    y = backend.run(
        functional.cpg_conv2d,
        leaves[0],
        leaves[1],
        owner,
        task,
        mask=leaves[2],
        bias=leaves[3],
        **conv,
        **kw,
    )
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5)).to(x.dtype)
    gy = gy.to(x.device)
    backend.run(y.backward, gy)
    ref, (gx, gw, gb, gm) = oracle(
        lambda x_, w_, b_, m_: reference.conv2d(
            x_, w_, owner.cpu(), task, mask=m_, bias=b_, **conv, **ref_kw
        ),
        [x, w, bias],
        [mask],
        grad_output=gy,
    )
    assert y.dtype == x.dtype
    assert_within_bound(y, ref, ("y", what))
    # dL/dW_eff is ATen's convolution_backward (by design), whose CPU 16-bit result rounds
    # partial sums (2.3x the plain bound on one case here): its bound allows for that.
    assert_within_bound(leaves[1].grad, gw, ("dW", what), partials=True)
    if bias is not None:
        assert_within_bound(leaves[3].grad, gb, ("dbias", what))
    if mask is not None:
        assert_within_bound(leaves[2].grad, gm, ("dmask", what), dtype=x.dtype, partials=True)
    assert (leaves[1].grad.cpu()[owner.cpu() != task] == 0).all()
    check_dx(backend, leaves[0].grad, gx, ("dx", what))
    return y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_inference_forward(backend, dtype, channels_last):
    for i, case in enumerate(cases_for(backend)):
        x, w, owner, mask, bias, conv = make_conv(case, dtype, backend.device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        bias = bias if i % 2 == 0 else None  # with and without a bias
        bits = masks.active_bits(owner, 4, mask=mask)
        y = backend.run(functional.masked_conv2d, x, w, bits, bias, **conv)
        ref = inference_oracle(x, w, bits, bias, conv)
        assert y.shape == ref.value.shape and y.dtype == dtype
        assert_within_bound(y, ref, case)


@pytest.mark.parametrize("dtype", DTYPES)
def test_training_forward_and_backward(backend, dtype):
    for case in cases_for(backend):
        x, w, owner, mask, bias, conv = make_conv(case, dtype, backend.device)
        check_training(backend, x, w, owner, 4, mask, bias, conv, case)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pick_all_forward_and_backward(backend, dtype):
    """mask=None picks every older weight (PackNet, PAE): forward and gradients."""
    for case in (CASES[1], (2, 16, 6, 5, 16, 3, 1, 1, 1, 1)):
        x, w, owner, _, bias, conv = make_conv(case, dtype, backend.device)
        check_training(backend, x, w, owner, 3, None, bias, conv, case)


@pytest.mark.parametrize("threshold", [0.3, 2.0**-7])
def test_threshold_other_than_the_default(backend, threshold):
    """``mask > threshold`` picks, for any threshold: entries equal to it are not picked."""
    x, w, owner, _, bias, conv = make_conv(CASES[0], torch.float32, backend.device)
    at = torch.tensor(threshold, dtype=torch.float32)
    choices = torch.stack(
        [
            at,
            torch.nextafter(at, torch.tensor(1.0)),
            torch.nextafter(at, torch.tensor(0.0)),
            at * 0.1,
            at * 10,
        ]
    )
    g = torch.Generator().manual_seed(2)
    mask = choices[torch.randint(0, 5, w.shape, generator=g)].to(backend.device)
    y = check_training(backend, x, w, owner, 4, mask, bias, conv, threshold, threshold=threshold)
    y_default = backend.run(functional.cpg_conv2d, x, w, owner, 4, mask=mask, bias=bias, **conv)
    assert not torch.equal(y, y_default)


def gradcheck_case(backend, dtype):
    case = (2, 4, 6, 5, 4, 3, 2, 1, 1, 2)
    x, w, owner, mask, bias, conv = make_conv(case, dtype, backend.device)
    # No frozen active weights, so the CPG weight gradient is the true derivative
    # (the frozen rule itself is checked exactly in the training test).
    owner = torch.where((owner > 0) & (owner < 4), torch.full_like(owner, 5), owner)
    for t in (x, w, bias):
        t.requires_grad_()
    bits = masks.active_bits(owner, 4, mask=mask)
    functions = (
        lambda x_, w_, b_: functional.cpg_conv2d(x_, w_, owner, 4, mask=mask, bias=b_, **conv),
        lambda x_, w_, b_: functional.masked_conv2d(x_, w_, bits, b_, **conv),
    )
    return functions, (x, w, bias)


def test_gradcheck_float64(backend):
    """float64 takes the chunked path on every backend but cuda (no fused float64 kernel)."""
    functions, inputs = gradcheck_case(backend, torch.float64)
    with backend.context():
        for fn in functions:
            assert torch.autograd.gradcheck(fn, inputs)


def test_gradcheck_float32_fused_kernels(backend):
    """The fused kernels' derivatives, in float32 (see test_linear_ops.py)."""
    functions, inputs = gradcheck_case(backend, torch.float32)
    with backend.context(), backends.emulator_launches() as launches, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not a double precision")
        for fn in functions:
            assert torch.autograd.gradcheck(
                fn, inputs, eps=1e-2, atol=1e-3, rtol=1e-3, fast_mode=True
            )
    if backend.name == "emu":
        assert any(e.startswith("conv_direct.cuh") for e in launches), launches


# Second derivatives are a clear error on every backend (see test_linear_ops.py).
def test_double_backward_is_a_clear_error(backend):
    """First-order gradients under create_graph are right; a second order names the op."""
    x, w, owner, mask, _, conv = make_conv(CASES[1], torch.float64, backend.device)
    bits = masks.active_bits(owner, 4, mask=mask)
    x.requires_grad_()
    w.requires_grad_()
    active = masks.unpack(bits.cpu(), tuple(w.shape))
    x_ref, w_ref = x.detach().cpu().requires_grad_(), w.detach().cpu().requires_grad_()
    y_ref = reference.masked_conv2d(x_ref, w_ref, active, **conv)
    ref = torch.autograd.grad((y_ref**2).sum(), x_ref)
    with backend.context():
        y = functional.masked_conv2d(x, w, bits, **conv)
        (dx,) = torch.autograd.grad((y**2).sum(), x, create_graph=True)
        torch.testing.assert_close(dx.cpu(), ref[0])
        with pytest.raises(RuntimeError, match="cpg::masked_conv2d: double backward is not"):
            torch.autograd.grad(dx.pow(2).sum(), (x, w))


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


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_tf32_switch_is_respected(backend, channels_last):
    """torch.backends.cudnn.allow_tf32 (not the matmul switch) lets fp32 convs run on TF32
    tensor cores: 16 input channels take the tiled path, where TF32 gives other bits than
    exact fp32, within the TF32 bound; the input gradient likewise."""
    case = (2, 16, 7, 6, 16, 3, 1, 1, 1, 1)
    x, w, bits, bias, gy, conv = conv_operands(case, torch.float32, backend.device, channels_last)
    ref = inference_oracle(x, w, bits, bias, conv)
    ref_dx = grad_input_oracle(gy, w, bits, x.shape, conv)
    conv_args = (conv["stride"], conv["padding"], conv["dilation"], conv["groups"])

    def run():
        with backends.emulator_launches() as launches:
            y = backend.run(functional.masked_conv2d, x, w, bits, bias, **conv)
            dx = backend.run(
                torch.ops.cpg.masked_conv2d_grad_input, gy, w, bits, list(x.shape), *conv_args
            )
        return y, dx, {e.split(":")[0] for e in launches}

    torch.backends.cuda.matmul.allow_tf32 = True  # the linear switch: no effect on convs
    y_exact, dx_exact, exact_files = run()
    assert_within_bound(y_exact, ref, "fp32")
    assert_within_bound(dx_exact, ref_dx, "fp32 dx")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = True
    y, dx, files = run()
    assert_within_bound(y, ref, "tf32", tf32=True)
    assert_within_bound(dx, ref_dx, "tf32 dx", tf32=True)
    if backend.name != "cpu":  # the CPU path has no TF32
        assert not torch.equal(y, y_exact) and not torch.equal(dx, dx_exact)
    if backend.name == "emu":
        assert "gemm_mma.cuh" in files and "gemm_mma.cuh" not in exact_files, (files, exact_files)


# One case per variant and kernel path of the fused conv dispatcher (csrc/cuda/masked_conv.cu),
# small enough for the emulator: (batch, C_in, H, W, C_out, kernel, stride, padding, dilation,
# groups), then the path of the forward and of the input gradient, each one path for both
# layouts or an (NCHW, NHWC) pair. The paths, by the "columns" of a group (C_out / groups
# forward, C_in / groups for the input gradient), the output pixels batch * Ho * Wo, and the
# other, "reduction" channels:
#   linear    1x1, stride 1, unpadded, one group, channels_last: the masked-linear kernels
#   direct    at most 8 columns
#   unfolded  one group, at most 64 output pixels: the linear weight streams or small-batch
#             kernels on the windows
#   tiled     mma for 16-bit, or fp32 with TF32, with reduction channels in whole 16-byte
#             vectors; simt for the rest (fp32 without TF32, odd reduction channel counts)
#   phases    a strided input gradient on the tiled kernels: one per stride phase, over the
#             taps that reach it; the direct kernel writes the zeros of phases that none reaches
# On the emulator, the test checks from the kernels launched that the case took its path.
VARIANTS = {
    "3x3 C_in=3, K % 32 != 0 (simt)": ((2, 3, 7, 7, 12, 3, 1, 1, 1, 1), "tiled", "direct"),
    "3x3 stride 2, padding 0, odd sizes": ((2, 16, 15, 11, 16, 3, 2, 0, 1, 1), "tiled", "phases"),
    "3x3 stride 3: one tap per phase": ((3, 16, 14, 14, 16, 3, 3, 1, 1, 1), "tiled", "phases"),
    "3x3 stride 2, dilation 2: phases no tap reaches": (
        (2, 16, 13, 13, 16, 3, 2, 2, 2, 1),
        "tiled",
        "phases",
    ),
    "3x3 dilation 2, padding 2": ((2, 16, 7, 6, 16, 3, 1, 2, 2, 1), "tiled", "tiled"),
    "groups 2 (dx: simt for 16-bit, mma for tf32)": (
        (2, 32, 5, 5, 24, 3, 1, 1, 1, 2),
        "tiled",
        "tiled",
    ),
    "narrow groups": ((2, 8, 5, 5, 8, 3, 1, 1, 1, 2), "direct", "direct"),
    "depthwise, groups = C": ((2, 6, 7, 7, 6, 3, 1, 1, 1, 6), "direct", "direct"),
    "1x1": ((3, 16, 5, 5, 16, 1, 1, 0, 1, 1), ("tiled", "linear"), ("tiled", "linear")),
    "1x1 stride 2": ((4, 16, 9, 7, 16, 1, 2, 0, 1, 1), "tiled", "phases"),
    "7x7 stride 2, padding 3 (simt, tf32 mma)": (
        (3, 4, 9, 9, 16, 7, 2, 3, 1, 1),
        "tiled",
        "direct",
    ),
    "two row tiles: 154 pixels": ((2, 16, 11, 7, 16, 3, 1, 1, 1, 1), "tiled", "tiled"),
    "one tile, 18 reduction stages (16-bit: split-K)": (
        (2, 128, 7, 7, 16, 3, 1, 1, 1, 1),
        "tiled",
        "tiled",
    ),
    "two column tiles: 136 output channels": ((3, 8, 5, 5, 136, 3, 1, 1, 1, 1), "tiled", "direct"),
    "2x3 kernel, (h, w) stride (2, 1), padding (0, 2), dilation (1, 2)": (
        (3, 16, 7, 8, 16, (2, 3), (2, 1), (0, 2), (1, 2), 1),
        "tiled",
        "phases",
    ),
    "late layer: 4x4 image, batch 1": ((1, 16, 4, 4, 24, 3, 1, 1, 1, 1), "unfolded", "unfolded"),
    "late layer, stride 2: 49 pixels, 4 row groups": (
        (1, 12, 13, 13, 20, 3, 2, 1, 1, 1),
        "unfolded",
        "unfolded",
    ),
    "late layer, 64 pixels (the unfolded limit)": (
        (4, 16, 4, 4, 12, 3, 1, 1, 1, 1),
        "unfolded",
        "unfolded",
    ),
    "late layer, C_in=3, K unaligned, dilation 2": (
        (1, 3, 6, 6, 12, 3, 1, 2, 2, 1),
        "unfolded",
        "direct",
    ),
    "late layer, 1x1 (NHWC: linear)": (
        (1, 16, 5, 5, 16, 1, 1, 0, 1, 1),
        ("unfolded", "linear"),
        ("unfolded", "linear"),
    ),
    "late layer, one pixel, 128 output channels: split reduction": (
        (1, 16, 3, 3, 128, 3, 1, 0, 1, 1),
        "unfolded",
        "unfolded",
    ),
    "late layer, 2x3 kernel, (h, w) stride (2, 1), padding (0, 2), dilation (1, 2)": (
        (1, 16, 7, 8, 16, (2, 3), (2, 1), (0, 2), (1, 2), 1),
        "unfolded",
        "unfolded",
    ),
}
# (dtype, tf32): fp32 exact and on TF32 tensor cores, and the 16-bit dtypes.
PRECISIONS = [
    (torch.float32, False),
    (torch.float32, True),
    (torch.float16, False),
    (torch.bfloat16, False),
]


def conv_operands(case, dtype, device, channels_last, seed=0):
    """Kernel size, stride, padding and dilation are ints or (h, w) pairs."""
    b, c, h, w_, n, k, stride, pad, dil, groups = case
    k, stride, pad, dil = ((v, v) if isinstance(v, int) else v for v in (k, stride, pad, dil))
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, c // groups, *k, generator=g).to(dtype).to(device)
    bits = masks.pack(torch.rand(w.shape, generator=g) < 0.6).to(device)
    bias = torch.randn(n, generator=g).to(dtype).to(device)
    x = torch.randn(b, c, h, w_, generator=g).to(dtype)
    ho, wo = (
        (size + 2 * pad[d] - dil[d] * (k[d] - 1) - 1) // stride[d] + 1
        for d, size in enumerate((h, w_))
    )
    gy = torch.randn(b, n, ho, wo, generator=g).to(dtype)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x, gy = (t.to(device).contiguous(memory_format=fmt) for t in (x, gy))
    conv = {"stride": list(stride), "padding": list(pad), "dilation": list(dil), "groups": groups}
    return x, w, bits, bias, gy, conv


def promised_layout(activation):
    channels_last = (
        activation.is_contiguous(memory_format=torch.channels_last)
        and not activation.is_contiguous()
    )
    return torch.channels_last if channels_last else torch.contiguous_format


# The CUDA source files whose kernels each path launches.
PATH_FILES = {
    "direct": {"conv_direct.cuh"},
    "unfolded": {
        "conv_unfolded.cuh",
        "gemm_stream.cuh",
        "gemm_stream_grad.cuh",
        "gemm_small_batch.cuh",
        "gemm_small_batch_grad.cuh",
    },
    "tiled": {"gemm_mma.cuh", "gemm_simt.cuh", "gemm_split_k.cuh"},
    "phases": {"gemm_mma.cuh", "gemm_simt.cuh", "gemm_split_k.cuh", "conv_direct.cuh"},
    "linear": {
        "gemm_stream.cuh",
        "gemm_stream_grad.cuh",
        "gemm_small_batch.cuh",
        "gemm_small_batch_grad.cuh",
        "gemm_mma.cuh",
        "gemm_simt.cuh",
        "gemm_split_k.cuh",
    },
}


def check_path(launches, path, channels_last, tensor_cores):
    """The launches (backends.emulator_launches) are those of the expected path."""
    if isinstance(path, tuple):
        path = path[channels_last]
    files = {entry.split(":")[0] for entry in launches}
    assert files and files <= PATH_FILES[path], (path, launches)
    if path == "unfolded":
        assert "conv_unfolded.cuh" in files, launches
    if path in ("tiled", "phases"):
        assert files & {"gemm_mma.cuh", "gemm_simt.cuh"}, launches
    if path in ("tiled", "phases", "linear") and not tensor_cores:
        assert "gemm_mma.cuh" not in files, launches


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize(
    "dtype,tf32", PRECISIONS, ids=[f"{str(d)[6:]}{'-tf32' if t else ''}" for d, t in PRECISIONS]
)
@pytest.mark.parametrize("variant", list(VARIANTS.values()), ids=list(VARIANTS))
def test_every_conv_variant_forward_and_grad_input(backend, variant, dtype, tf32, channels_last):
    case, forward_path, grad_input_path = variant
    x, w, bits, bias, gy, conv = conv_operands(case, dtype, backend.device, channels_last)
    torch.backends.cudnn.allow_tf32 = tf32
    with backends.emulator_launches() as forward_launches:
        y = backend.run(functional.masked_conv2d, x, w, bits, bias, **conv)
    with backends.emulator_launches() as grad_input_launches:
        dx = backend.run(
            torch.ops.cpg.masked_conv2d_grad_input,
            gy,
            w,
            bits,
            list(x.shape),
            conv["stride"],
            conv["padding"],
            conv["dilation"],
            conv["groups"],
        )
    ref_y = inference_oracle(x, w, bits, bias, conv)
    ref_dx = grad_input_oracle(gy, w, bits, x.shape, conv)
    assert y.dtype == dx.dtype == dtype
    assert_within_bound(y, ref_y, "y", tf32=tf32)
    if not tf32 and dtype != torch.float16:  # the kernels' epilogue without a bias, fp32 and bf16
        y_plain = backend.run(functional.masked_conv2d, x, w, bits, None, **conv)
        assert_within_bound(y_plain, inference_oracle(x, w, bits, None, conv), "y, no bias")
    # The layout the op's fake kernel promises: channels_last in, channels_last out, where
    # "channels_last" excludes tensors that size-1 dimensions make plain contiguous too.
    assert y.is_contiguous(memory_format=promised_layout(x))
    assert dx.is_contiguous(memory_format=promised_layout(gy))
    if backend.name == "emu":
        tensor_cores = dtype != torch.float32 or tf32
        check_path(forward_launches, forward_path, channels_last, tensor_cores)
        check_path(grad_input_launches, grad_input_path, channels_last, tensor_cores)
    check_dx(backend, dx, ref_dx, "dx", tf32=tf32)


def test_conv_kernels_take_offset_views(backend):
    """Activations that start mid-storage (not 16-byte aligned) take the unaligned paths."""
    case = (1, 8, 6, 5, 8, 3, 1, 1, 1, 1)
    x, w, bits, bias, _, conv = conv_operands(case, torch.bfloat16, backend.device, True)
    x_off = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)[1:]
    x_off = x_off.as_strided(x.shape, x.stride()).copy_(x)
    y = backend.run(functional.masked_conv2d, x_off, w, bits, bias, **conv)
    assert_within_bound(y, inference_oracle(x, w, bits, bias, conv), "offset view")


# ------------------------------------------------------------------ multi-task

# (tasks, batch, C_in, H, W, C_out, kernel, stride, padding, dilation, groups, path): late
# layers read the weight once for all tasks (unfolded: one group, at most 16 output pixels a
# task); pointwise NHWC is the linear multi-task GEMM; larger ones, and grouped ones, run a
# conv per task.
MULTITASK_CASES = [
    (3, 1, 16, 4, 4, 24, 3, 1, 1, 1, 1, "unfolded"),  # 16 pixels a task
    (4, 2, 8, 5, 5, 12, 3, 2, 1, 1, 1, "per task"),  # 2 images x 9 pixels = 18 > 16
    (2, 1, 16, 3, 3, 20, 1, 1, 0, 1, 1, "unfolded"),  # 1x1 (NHWC: the linear GEMM)
    (2, 2, 16, 9, 7, 16, 3, 1, 1, 1, 1, "per task"),
    (2, 1, 16, 6, 6, 16, 3, 1, 1, 2, 1, "unfolded"),  # dilation 2: 16 pixels a task
    (2, 1, 16, 5, 5, 16, 3, 1, 1, 1, 2, "per task"),  # groups 2
    (2, 1, 8, 7, 7, 8, 3, 2, 2, 2, 4, "per task"),  # groups 4, dilation 2, stride 2
]


def multitask_operands(case, dtype, device, channels_last):
    tasks, b, c, h, w_, n, k, stride, pad, dil, groups, _ = case
    g = torch.Generator().manual_seed(3)
    w = torch.randn(n, c // groups, k, k, generator=g).to(dtype).to(device)
    bits = torch.stack(
        [masks.pack(torch.rand(w.shape, generator=g) < 0.6) for _ in range(tasks)]
    ).to(device)
    bias = torch.randn(n, generator=g).to(dtype).to(device)
    x = torch.randn(tasks * b, c, h, w_, generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.to(device).view(tasks, b, c, h, w_)
    conv = {"stride": stride, "padding": pad, "dilation": dil, "groups": groups}
    return x, w, bits, bias, conv


def multitask_oracle(bits, conv, grad_output=None):
    def all_tasks(x_, w_, b_):
        return torch.stack(
            [
                F.conv2d(x_[t], w_ * masks.unpack(bits[t].cpu(), tuple(w_.shape)), b_, **conv)
                for t in range(bits.shape[0])
            ]
        )

    return lambda x, w, b: oracle(all_tasks, [x, w, b], grad_output=grad_output)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MULTITASK_CASES, ids=[str(c) for c in MULTITASK_CASES])
def test_conv_multitask_matches_each_task(backend, case, dtype, channels_last):
    tasks, b, c, h, w_, n, k, stride, pad, dil, groups, path = case
    x, w, bits, bias, conv = multitask_operands(case, dtype, backend.device, channels_last)
    with backends.emulator_launches() as launches:
        y = backend.run(functional.masked_conv2d_multitask, x, w, bits, bias, **conv)
    ref, _ = multitask_oracle(bits, conv)(x, w, bias)
    assert y.shape == ref.value.shape and y.dtype == dtype
    assert_within_bound(y, ref, case)
    assert y[0].is_contiguous(memory_format=promised_layout(x[0]))
    if backend.name == "emu":
        files = [e.split(":")[0] for e in launches]
        # 16-bit windows in whole 16-byte vectors take the weight stream, else small_batch.
        streamed = dtype != torch.float32 and (c // groups * k * k) % 8 == 0
        gemm = "gemm_stream.cuh" if streamed else "gemm_small_batch.cuh"
        if path == "per task":  # each task's conv on its own (unfolded or tiled)
            assert launches.count("conv_unfolded.cuh:unfold") in (0, tasks), launches
            assert len(launches) >= tasks, launches
        elif k == 1 and channels_last:  # the linear multi-task GEMM: W read once
            assert files == [gemm], launches
        else:  # one unfold of every task's windows, one pass over W for all tasks
            assert files == ["conv_unfolded.cuh", gemm], launches


def conv_multitask_backward(backend, case, dtype):
    """Checks y and every gradient of the multi-task conv against each task's oracle."""
    x, w, bits, bias, conv = multitask_operands(case, dtype, backend.device, False)
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, bias)]
    y = backend.run(functional.masked_conv2d_multitask, *leaves[:2], bits, leaves[2], **conv)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(4)).to(dtype)
    backend.run(y.backward, gy.to(backend.device))
    ref, (gx, gw, gb) = multitask_oracle(bits, conv, gy)(x, w, bias)
    assert_within_bound(y, ref, "y")
    assert_within_bound(leaves[2].grad, gb, "dbias")
    # The tasks' dL/dW_eff come from ATen (see check_training) and are summed over the tasks
    # in fp32 (csrc/ops/autograd_support.cpp's task_sum): rounded partial sums, as the bound allows.
    assert_within_bound(leaves[1].grad, gw, "dW", partials=True)
    check_dx(backend, leaves[0].grad, gx, "dx")


BACKWARD_CASES = [MULTITASK_CASES[0], MULTITASK_CASES[5]]
BACKWARD_IDS = ["unfolded", "per task, groups 2"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", BACKWARD_CASES, ids=BACKWARD_IDS)
def test_conv_multitask_backward(backend, case, dtype):
    """The multi-task conv's gradients, in every dtype, against the oracle of each task."""
    conv_multitask_backward(backend, case, dtype)


def test_conv_multitask_gradients_match_per_task_ops():
    tasks = 3
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(tasks, 2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    bits = torch.stack([masks.pack(torch.rand(w.shape) < 0.5) for _ in range(tasks)])
    assert torch.autograd.gradcheck(
        lambda x_, w_, b_: functional.masked_conv2d_multitask(x_, w_, bits, b_, padding=1),
        (x, w, bias),
    )


def test_conv_multitask_bad_arguments():
    w = torch.randn(4, 3, 3, 3)
    bits = torch.stack([masks.pack(torch.rand(w.shape) < 0.5)] * 2)
    with pytest.raises(ValueError, match="5-D input"):
        functional.masked_conv2d_multitask(torch.randn(2, 3, 5, 5), w, bits)
    with pytest.raises(ValueError, match="bits"):
        functional.masked_conv2d_multitask(torch.randn(3, 1, 3, 5, 5), w, bits)
    with pytest.raises(ValueError, match="input channels"):
        functional.masked_conv2d_multitask(torch.randn(2, 1, 4, 5, 5), w, bits)
