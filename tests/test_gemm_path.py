"""The GEMM path rule of csrc/ops/gemm_path.h: from a dtype's row threshold on, the kernel
backends decode the masked weight tile by tile for the library (cuBLAS / cuDNN; ATen's CPU
GEMM and conv under the emulator) instead of running the fused kernels. Checked under the
emulator (and on the GPU where present): which path runs (the emulator's launch log), results
within the rounding bound of the oracle, and the same bits on every call."""

from __future__ import annotations

import pathlib
import re

import pytest
import torch

from cpg_kernels import backends, functional, masks, reference
from cpg_kernels.testing import assert_within_bound, oracle, random_mask, random_owner

KERNEL_BACKENDS = ("emu", "cuda")
# The apply_bits decode is the one kernel the library path launches.
DECODE = {"elementwise.cu"}


@pytest.fixture
def kernel_backend(backend):
    if backend.name not in KERNEL_BACKENDS:
        pytest.skip("the rule is the kernel backends' (the CPU path always uses the library)")
    return backend


def _run(backend, fn, *args, path="auto", **kwargs):
    with backends.gemm_path(path), backend.context(), backends.emulator_launches() as log:
        out = fn(*args, **kwargs)
    return out, {entry.split(":")[0] for entry in log}


def _linear_operands(rows, n, k, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g).to(dtype)
    w = torch.randn(n, k, generator=g).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype)
    bits = masks.pack(torch.rand(n, k, generator=g) < 0.5)
    return [t.to(device) for t in (x, w, bits, bias)]


def _linear_oracle(x, w, bits, bias):
    active = masks.unpack(bits.cpu(), tuple(w.shape))
    ref, _ = oracle(lambda x_, w_, b_: reference.masked_linear(x_, w_, active, b_), [x, w, bias])
    return ref


def test_thresholds_follow_the_dtype_class():
    tensor_core = backends.library_min_rows(torch.bfloat16)
    assert backends.library_min_rows(torch.float16) == tensor_core
    assert backends.library_min_rows(torch.float32, allow_tf32=True) == tensor_core
    assert backends.library_min_rows(torch.float32) < tensor_core
    with pytest.raises(ValueError, match="dtype"):
        backends.library_min_rows(torch.float64)


def test_an_unknown_path_is_refused():
    with pytest.raises(ValueError, match="gemm path"), backends.gemm_path("fastest"):
        pass


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_takes_the_library_path_from_the_threshold(kernel_backend, dtype):
    rows = backends.library_min_rows(dtype)
    n, k = 24, 64
    for m, expect_library in ((rows - 1, False), (rows, True)):
        x, w, bits, bias = _linear_operands(m, n, k, dtype, kernel_backend.device)
        y, files = _run(kernel_backend, functional.masked_linear, x, w, bits, bias)
        if kernel_backend.name == "emu":
            assert (files == DECODE) == expect_library, (m, files)
        assert_within_bound(y, _linear_oracle(x, w, bits, bias), (m, "y"))


def test_linear_library_path_is_bit_reproducible_and_matches_the_fused_result(kernel_backend):
    dtype = torch.bfloat16
    x, w, bits, bias = _linear_operands(
        backends.library_min_rows(dtype), 40, 96, dtype, kernel_backend.device
    )
    ref = _linear_oracle(x, w, bits, bias)
    with backends.decode_tile_elements(40 * 96 // 3):  # three tiles of weight rows
        first, _ = _run(kernel_backend, functional.masked_linear, x, w, bits, bias)
        again, _ = _run(kernel_backend, functional.masked_linear, x, w, bits, bias)
    fused, files = _run(kernel_backend, functional.masked_linear, x, w, bits, bias, path="fused")
    assert torch.equal(first, again)
    assert_within_bound(first, ref, "library")
    assert_within_bound(fused, ref, "fused")
    if kernel_backend.name == "emu":
        assert files and not files & DECODE, files


def test_linear_training_step_on_the_library_path(kernel_backend):
    """Forward and input gradient on the library path (the input gradient's reduction over N
    spans several decoded tiles, summed in fp32), weight and mask gradients as always."""
    dtype = torch.float32
    m, n, k, task = backends.library_min_rows(dtype), 30, 48, 3
    g = torch.Generator().manual_seed(1)
    x = torch.randn(m, k, generator=g).to(kernel_backend.device)
    w = torch.randn(n, k, generator=g).to(kernel_backend.device)
    owner = random_owner((n, k), tasks=4, generator=g).to(kernel_backend.device)
    mask = random_mask((n, k), generator=g).to(kernel_backend.device)
    gy = torch.randn(m, n, generator=g).to(kernel_backend.device)
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, mask)]

    def step():
        y = functional.cpg_linear(leaves[0], leaves[1], owner, task, mask=leaves[2])
        y.backward(gy)
        return y

    with backends.decode_tile_elements(n * k // 4):
        y, files = _run(kernel_backend, step)
    if kernel_backend.name == "emu":
        # The decode of the forward and of the input gradient, and the element-wise passes of
        # the training form (active bits, the weight/mask-gradient epilogue): no GEMM kernel.
        assert files == DECODE, files
    ref, (gx, gw, gm) = oracle(
        lambda x_, w_, m_: reference.linear(x_, w_, owner.cpu(), task, mask=m_),
        [x, w],
        [mask],
        grad_output=gy,
    )
    assert_within_bound(y, ref, "y")
    assert_within_bound(leaves[0].grad, gx, "dx", partials=True)
    assert_within_bound(leaves[1].grad, gw, "dW")
    assert_within_bound(leaves[2].grad, gm, "dm")


@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_takes_the_library_path_from_the_threshold(kernel_backend, channels_last):
    """fp32 (exact): the threshold counts output pixels over the batch; forward and input
    gradient, both layouts, against the oracle."""
    dtype = torch.float32
    rows = backends.library_min_rows(dtype)
    n, c = 8, 6
    w = torch.randn(n, c, 3, 3)
    bits = masks.pack(torch.rand(n, c, 3, 3) < 0.5)
    active = masks.unpack(bits, tuple(w.shape))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    # 2 images of 8x8 outputs = 128 pixels; 2 images of 8x7 = 112.
    for width, expect_library in ((7, False), (8, True)):
        x = torch.randn(2, c, 8, width).contiguous(memory_format=fmt)
        assert 2 * 8 * width >= rows if expect_library else 2 * 8 * width < rows
        dev = [t.to(kernel_backend.device) for t in (x, w, bits)]
        y, files = _run(kernel_backend, functional.masked_conv2d, *dev, padding=1)
        if kernel_backend.name == "emu":
            assert (files == DECODE) == expect_library, (width, files)
        assert y.is_contiguous(memory_format=fmt)
        ref, _ = oracle(lambda x_, w_: reference.masked_conv2d(x_, w_, active, padding=1), [x, w])
        assert_within_bound(y, ref, (width, "y"))
        gy = torch.randn(y.shape).contiguous(memory_format=fmt).to(kernel_backend.device)
        dx, files = _run(
            kernel_backend,
            torch.ops.cpg.masked_conv2d_grad_input,
            gy,
            dev[1],
            dev[2],
            list(x.shape),
            padding=[1, 1],
        )
        if kernel_backend.name == "emu":
            assert (files == DECODE) == expect_library, (width, files)
        ref_dx, _ = oracle(
            lambda g_, w_, shape=tuple(x.shape): torch.nn.grad.conv2d_input(
                shape, w_ * active, g_, padding=1
            ),
            [gy.cpu(), w],
        )
        assert_within_bound(dx, ref_dx, (width, "dx"))


def test_thresholds_are_the_committed_predictions():
    """The C++ constants are the ones benchmarks/perfmodel/library_path.py fitted (its H100
    section); refitting on a GPU report means changing both."""
    report = pathlib.Path(__file__).resolve().parents[1] / (
        "benchmarks/results/2026-12-01-predicted/library-path.md"
    )
    h100 = report.read_text().split("## ")[1]
    fitted = dict(re.findall(r"- (bf16 / TF32|exact fp32): threshold \*\*(\d+)\*\*", h100))
    assert int(fitted["bf16 / TF32"]) == backends.library_min_rows(torch.bfloat16)
    assert int(fitted["exact fp32"]) == backends.library_min_rows(torch.float32)


def test_weight_grad_threshold_is_the_committed_prediction():
    """The weight-gradient rule's constant is the one benchmarks/perfmodel/weight_grad_path.py
    fitted; exact fp32 always takes the two-pass path (the fused kernel needs tensor cores)."""
    report = pathlib.Path(__file__).resolve().parents[1] / (
        "benchmarks/results/2026-12-02-predicted/weight-grad-path.md"
    )
    [fitted] = re.findall(r"\*\*Threshold: (\d+) batch rows\*\*", report.read_text())
    assert int(fitted) == backends.weight_grad_library_min_rows(torch.bfloat16)
    assert int(fitted) == backends.weight_grad_library_min_rows(torch.float32, allow_tf32=True)
    assert backends.weight_grad_library_min_rows(torch.float32) == 0
