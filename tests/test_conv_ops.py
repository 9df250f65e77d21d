"""Masked conv2d ops against the float64 dense-masking oracle, on every backend."""
from __future__ import annotations

import pytest
import torch

from cpg_kernels import backends, functional, masks, reference
from cpg_kernels.testing import TOLERANCE, random_mask, random_owner, rel_error

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


# (batch, C_in, H, W, C_out, kernel, stride, padding, dilation, groups)
CASES = [
    (1, 3, 7, 7, 5, 3, 1, 1, 1, 1),
    (2, 4, 9, 8, 6, 3, 2, 0, 1, 2),
    (2, 6, 11, 11, 6, 3, 1, 2, 2, 6),      # depthwise, dilation 2
    (1, 8, 5, 5, 16, 1, 1, 0, 1, 1),       # 1x1
    (2, 3, 15, 13, 4, 7, 2, 3, 1, 1),      # 7x7 stem-like
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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_inference_forward(backend, dtype, channels_last):
    for case in cases_for(backend):
        x, w, owner, mask, bias, conv = make_conv(case, dtype, backend.device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        bits = masks.active_bits(owner, 4, mask=mask)
        y = backend.run(functional.masked_conv2d, x, w, bits, bias, **conv)
        active = masks.unpack(bits.cpu(), w.shape)
        ref = reference.masked_conv2d(x.cpu().double(), w.cpu().double(), active,
                                      bias.cpu().double(), **conv)
        assert y.shape == ref.shape and y.dtype == dtype
        assert rel_error(y, ref) < TOLERANCE[dtype], case


@pytest.mark.parametrize("dtype", DTYPES)
def test_training_forward_and_backward(backend, dtype):
    task = 4
    for case in cases_for(backend):
        x, w, owner, mask, bias, conv = make_conv(case, dtype, backend.device)
        leaves = [t.detach().clone().requires_grad_() for t in (x, w, mask, bias)]
        y = backend.run(functional.cpg_conv2d, leaves[0], leaves[1], owner, task, mask=leaves[2],
                        bias=leaves[3], **conv)
        gy = torch.randn(y.shape).to(dtype).to(backend.device)
        backend.run(y.backward, gy)

        ref_leaves = [t.detach().cpu().double().requires_grad_() for t in (x, w, mask, bias)]
        ref_y = reference.conv2d(ref_leaves[0], ref_leaves[1], owner.cpu(), task,
                                 mask=ref_leaves[2], bias=ref_leaves[3], **conv)
        ref_y.backward(gy.cpu().double())
        tol = TOLERANCE[dtype]
        assert rel_error(y, ref_y) < tol, case
        for name, ours, ref in zip(["x", "weight", "mask", "bias"], leaves, ref_leaves):
            assert rel_error(ours.grad, ref.grad) < 2 * tol, (name, case)
        assert (leaves[1].grad.cpu()[owner.cpu() != task] == 0).all()


def test_gradcheck_float64(backend):
    case = (2, 4, 6, 5, 4, 3, 2, 1, 1, 2)
    x, w, owner, mask, bias, conv = make_conv(case, torch.float64, backend.device)
    # No frozen active weights, so the CPG weight gradient is the true derivative
    # (the frozen rule itself is checked exactly in the training test).
    owner = torch.where((owner > 0) & (owner < 4), torch.full_like(owner, 5), owner)
    for t in (x, w, bias):
        t.requires_grad_()
    bits = masks.active_bits(owner, 4, mask=mask)
    with backend.context():
        assert torch.autograd.gradcheck(
            lambda x_, w_, b_: functional.cpg_conv2d(x_, w_, owner, 4, mask=mask, bias=b_, **conv),
            (x, w, bias))
        assert torch.autograd.gradcheck(
            lambda x_, w_, b_: functional.masked_conv2d(x_, w_, bits, b_, **conv), (x, w, bias))


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


def test_tf32_switch_is_respected(backend):
    x, w, owner, mask, bias, conv = make_conv(CASES[0], torch.float32, backend.device)
    bits = masks.active_bits(owner, 4, mask=mask)
    ref = reference.masked_conv2d(x.cpu().double(), w.cpu().double(),
                                  masks.unpack(bits.cpu(), w.shape), bias.cpu().double(), **conv)
    torch.backends.cudnn.allow_tf32 = True
    y = backend.run(functional.masked_conv2d, x, w, bits, bias, **conv)
    assert rel_error(y, ref) < 2e-3


# One case per variant and kernel path of the fused conv dispatcher (csrc/cuda/masked_conv.cu),
# small enough for the emulator: (batch, C_in, H, W, C_out, kernel, stride, padding, dilation,
# groups), then the path of the forward and of the input gradient, each one path for both
# layouts or an (NCHW, NHWC) pair. The paths, by the "columns" of a group (C_out / groups
# forward, C_in / groups for the input gradient), the output pixels batch * Ho * Wo, and the
# other, "reduction" channels:
#   linear    1x1, stride 1, unpadded, one group, channels_last: the masked-linear kernels
#   direct    at most 8 columns
#   unfolded  one group, at most 64 output pixels: the small-batch linear kernels on the windows
#   tiled     mma for 16-bit, or fp32 with TF32, with reduction channels in whole 16-byte
#             vectors; simt for the rest (fp32 without TF32, odd reduction channel counts)
#   phases    a strided input gradient on the tiled kernels: one per stride phase, over the
#             taps that reach it; the direct kernel writes the zeros of phases that none reaches
# On the emulator, the test checks from the kernels launched that the case took its path.
VARIANTS = {
    "3x3 C_in=3, K % 32 != 0 (simt)": ((2, 3, 7, 7, 12, 3, 1, 1, 1, 1), "tiled", "direct"),
    "3x3 stride 2, padding 0, odd sizes": ((2, 16, 15, 11, 16, 3, 2, 0, 1, 1), "tiled", "phases"),
    "3x3 stride 3: one tap per phase": ((3, 16, 14, 14, 16, 3, 3, 1, 1, 1), "tiled", "phases"),
    "3x3 stride 2, dilation 2: phases no tap reaches":
        ((2, 16, 13, 13, 16, 3, 2, 2, 2, 1), "tiled", "phases"),
    "3x3 dilation 2, padding 2": ((2, 16, 7, 6, 16, 3, 1, 2, 2, 1), "tiled", "tiled"),
    "groups 2 (dx: simt for 16-bit, mma for tf32)":
        ((2, 32, 5, 5, 24, 3, 1, 1, 1, 2), "tiled", "tiled"),
    "narrow groups": ((2, 8, 5, 5, 8, 3, 1, 1, 1, 2), "direct", "direct"),
    "depthwise, groups = C": ((2, 6, 7, 7, 6, 3, 1, 1, 1, 6), "direct", "direct"),
    "1x1": ((3, 16, 5, 5, 16, 1, 1, 0, 1, 1), ("tiled", "linear"), ("tiled", "linear")),
    "1x1 stride 2": ((4, 16, 9, 7, 16, 1, 2, 0, 1, 1), "tiled", "phases"),
    "7x7 stride 2, padding 3 (simt, tf32 mma)": ((3, 4, 9, 9, 16, 7, 2, 3, 1, 1), "tiled", "direct"),
    "two row tiles: 154 pixels": ((2, 16, 11, 7, 16, 3, 1, 1, 1, 1), "tiled", "tiled"),
    "one tile, 18 reduction stages (16-bit: split-K)":
        ((2, 128, 7, 7, 16, 3, 1, 1, 1, 1), "tiled", "tiled"),
    "two column tiles: 136 output channels": ((3, 8, 5, 5, 136, 3, 1, 1, 1, 1), "tiled", "direct"),
    "2x3 kernel, (h, w) stride (2, 1), padding (0, 2), dilation (1, 2)":
        ((3, 16, 7, 8, 16, (2, 3), (2, 1), (0, 2), (1, 2), 1), "tiled", "phases"),
    "late layer: 4x4 image, batch 1": ((1, 16, 4, 4, 24, 3, 1, 1, 1, 1), "unfolded", "unfolded"),
    "late layer, stride 2: 49 pixels, 4 row groups":
        ((1, 12, 13, 13, 20, 3, 2, 1, 1, 1), "unfolded", "unfolded"),
    "late layer, 64 pixels (the unfolded limit)":
        ((4, 16, 4, 4, 12, 3, 1, 1, 1, 1), "unfolded", "unfolded"),
    "late layer, C_in=3, K unaligned, dilation 2":
        ((1, 3, 6, 6, 12, 3, 1, 2, 2, 1), "unfolded", "direct"),
    "late layer, 1x1 (NHWC: linear)":
        ((1, 16, 5, 5, 16, 1, 1, 0, 1, 1), ("unfolded", "linear"), ("unfolded", "linear")),
    "late layer, one pixel, 128 output channels: split reduction":
        ((1, 16, 3, 3, 128, 3, 1, 0, 1, 1), "unfolded", "unfolded"),
    "late layer, 2x3 kernel, (h, w) stride (2, 1), padding (0, 2), dilation (1, 2)":
        ((1, 16, 7, 8, 16, (2, 3), (2, 1), (0, 2), (1, 2), 1), "unfolded", "unfolded"),
}
# (dtype, tf32): fp32 exact and on TF32 tensor cores, and the 16-bit dtypes.
PRECISIONS = [(torch.float32, False), (torch.float32, True), (torch.float16, False),
              (torch.bfloat16, False)]


def conv_operands(case, dtype, device, channels_last, seed=0):
    """Kernel size, stride, padding and dilation are ints or (h, w) pairs."""
    b, c, h, w_, n, k, stride, pad, dil, groups = case
    k, stride, pad, dil = ((v, v) if isinstance(v, int) else v for v in (k, stride, pad, dil))
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, c // groups, *k, generator=g).to(dtype).to(device)
    bits = masks.pack(torch.rand(w.shape, generator=g) < 0.6).to(device)
    bias = torch.randn(n, generator=g).to(dtype).to(device)
    x = torch.randn(b, c, h, w_, generator=g).to(dtype)
    ho, wo = ((size + 2 * pad[d] - dil[d] * (k[d] - 1) - 1) // stride[d] + 1
              for d, size in enumerate((h, w_)))
    gy = torch.randn(b, n, ho, wo, generator=g).to(dtype)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x, gy = (t.to(device).contiguous(memory_format=fmt) for t in (x, gy))
    conv = {"stride": list(stride), "padding": list(pad), "dilation": list(dil),
            "groups": groups}
    return x, w, bits, bias, gy, conv


def promised_layout(activation):
    channels_last = (activation.is_contiguous(memory_format=torch.channels_last)
                     and not activation.is_contiguous())
    return torch.channels_last if channels_last else torch.contiguous_format


# The CUDA source files whose kernels each path launches.
PATH_FILES = {
    "direct": {"conv_direct.cuh"},
    "unfolded": {"conv_unfolded.cuh", "gemm_small_batch.cuh", "gemm_small_batch_grad.cuh"},
    "tiled": {"gemm_mma.cuh", "gemm_simt.cuh", "gemm_split_k.cuh"},
    "phases": {"gemm_mma.cuh", "gemm_simt.cuh", "gemm_split_k.cuh", "conv_direct.cuh"},
    "linear": {"gemm_small_batch.cuh", "gemm_small_batch_grad.cuh", "gemm_mma.cuh",
               "gemm_simt.cuh", "gemm_split_k.cuh"},
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
@pytest.mark.parametrize("dtype,tf32", PRECISIONS,
                         ids=[f"{str(d)[6:]}{'-tf32' if t else ''}" for d, t in PRECISIONS])
@pytest.mark.parametrize("variant", list(VARIANTS.values()), ids=list(VARIANTS))
def test_every_conv_variant_forward_and_grad_input(backend, variant, dtype, tf32, channels_last):
    case, forward_path, grad_input_path = variant
    x, w, bits, bias, gy, conv = conv_operands(case, dtype, backend.device, channels_last)
    torch.backends.cudnn.allow_tf32 = tf32
    with backends.emulator_launches() as forward_launches:
        y = backend.run(functional.masked_conv2d, x, w, bits, bias, **conv)
    with backends.emulator_launches() as grad_input_launches:
        dx = backend.run(torch.ops.cpg.masked_conv2d_grad_input, gy, w, bits, list(x.shape),
                         conv["stride"], conv["padding"], conv["dilation"], conv["groups"])
    w_eff = w.cpu().double() * masks.unpack(bits.cpu(), w.shape)
    ref_y = torch.nn.functional.conv2d(x.cpu().double(), w_eff, bias.cpu().double(), **conv)
    ref_dx = torch.nn.grad.conv2d_input(x.shape, w_eff, gy.cpu().double(), **conv)
    tol = 2e-3 if tf32 else TOLERANCE[dtype]
    assert y.dtype == dx.dtype == dtype
    assert rel_error(y, ref_y) < tol
    assert rel_error(dx, ref_dx) < tol
    # The layout the op's fake kernel promises: channels_last in, channels_last out, where
    # "channels_last" excludes tensors that size-1 dimensions make plain contiguous too.
    assert y.is_contiguous(memory_format=promised_layout(x))
    assert dx.is_contiguous(memory_format=promised_layout(gy))
    if backend.name == "emu":
        tensor_cores = dtype != torch.float32 or tf32
        check_path(forward_launches, forward_path, channels_last, tensor_cores)
        check_path(grad_input_launches, grad_input_path, channels_last, tensor_cores)


def test_conv_kernels_take_offset_views(backend):
    """Activations that start mid-storage (not 16-byte aligned) take the unaligned paths."""
    case = (1, 8, 6, 5, 8, 3, 1, 1, 1, 1)
    x, w, bits, bias, _, conv = conv_operands(case, torch.bfloat16, backend.device, True)
    x_off = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)[1:]
    x_off = x_off.as_strided(x.shape, x.stride()).copy_(x)
    y = backend.run(functional.masked_conv2d, x_off, w, bits, bias, **conv)
    w_eff = w.cpu().double() * masks.unpack(bits.cpu(), w.shape)
    ref = torch.nn.functional.conv2d(x.cpu().double(), w_eff, bias.cpu().double(), **conv)
    assert rel_error(y, ref) < TOLERANCE[torch.bfloat16]


# ------------------------------------------------------------------ multi-task

# (tasks, batch, C_in, H, W, C_out, kernel, stride, padding, path): late layers read the
# weight once for all tasks (unfolded, at most 16 output pixels a task); pointwise NHWC is the
# linear multi-task GEMM; larger ones run a conv per task.
MULTITASK_CASES = [
    (3, 1, 16, 4, 4, 24, 3, 1, 1, "unfolded"),          # 16 pixels a task
    (4, 2, 8, 5, 5, 12, 3, 2, 1, "per task"),           # 2 images x 9 pixels = 18 > 16
    (2, 1, 16, 3, 3, 20, 1, 1, 0, "unfolded"),          # 1x1 (NHWC: the linear GEMM)
    (2, 2, 16, 9, 7, 16, 3, 1, 1, "per task"),
]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", MULTITASK_CASES, ids=[str(c) for c in MULTITASK_CASES])
def test_conv_multitask_matches_each_task(backend, case, dtype, channels_last):
    tasks, b, c, h, w_, n, k, stride, pad, path = case
    g = torch.Generator().manual_seed(3)
    w = torch.randn(n, c, k, k, generator=g).to(dtype).to(backend.device)
    bits = torch.stack([masks.pack(torch.rand(w.shape, generator=g) < 0.6)
                        for _ in range(tasks)]).to(backend.device)
    bias = torch.randn(n, generator=g).to(dtype).to(backend.device)
    x = torch.randn(tasks * b, c, h, w_, generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.to(backend.device).view(tasks, b, c, h, w_)
    with backends.emulator_launches() as launches:
        y = backend.run(functional.masked_conv2d_multitask, x, w, bits, bias, stride=stride,
                        padding=pad)
    ho = (h + 2 * pad - k) // stride + 1
    assert y.shape == (tasks, b, n, ho, (w_ + 2 * pad - k) // stride + 1) and y.dtype == dtype
    for t in range(tasks):
        w_eff = w.cpu().double() * masks.unpack(bits[t].cpu(), w.shape)
        ref = torch.nn.functional.conv2d(x[t].cpu().double(), w_eff, bias.cpu().double(),
                                         stride=stride, padding=pad)
        assert rel_error(y[t], ref) < TOLERANCE[dtype], t
    assert y[0].is_contiguous(memory_format=promised_layout(x[0]))
    if backend.name == "emu":
        files = [e.split(":")[0] for e in launches]
        if path == "per task":  # each task's conv on its own (unfolded or tiled)
            assert launches.count("conv_unfolded.cuh:unfold") in (0, tasks), launches
            assert len(launches) >= tasks, launches
        elif k == 1 and channels_last:  # the linear multi-task GEMM: W read once
            assert files == ["gemm_small_batch.cuh"], launches
        else:  # one unfold of every task's windows, one pass over W for all tasks
            assert files == ["conv_unfolded.cuh", "gemm_small_batch.cuh"], launches


def test_conv_multitask_gradients_match_per_task_ops():
    tasks = 3
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(tasks, 2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    bits = torch.stack([masks.pack(torch.rand(w.shape) < 0.5) for _ in range(tasks)])
    assert torch.autograd.gradcheck(
        lambda x_, w_, b_: functional.masked_conv2d_multitask(x_, w_, bits, b_, padding=1),
        (x, w, bias))


def test_conv_multitask_bad_arguments():
    w = torch.randn(4, 3, 3, 3)
    bits = torch.stack([masks.pack(torch.rand(w.shape) < 0.5)] * 2)
    with pytest.raises(ValueError, match="5-D input"):
        functional.masked_conv2d_multitask(torch.randn(2, 3, 5, 5), w, bits)
    with pytest.raises(ValueError, match="bits"):
        functional.masked_conv2d_multitask(torch.randn(3, 1, 3, 5, 5), w, bits)
    with pytest.raises(ValueError, match="input channels"):
        functional.masked_conv2d_multitask(torch.randn(2, 1, 4, 5, 5), w, bits)
