"""Every kernel-backed op under the emulator with two schedules: any bit that
differs reveals a race (threads of a barrier phase run in a seed-drawn order)."""
from __future__ import annotations

import pytest
import torch

from cpg_kernels import backends, functional, masks
from cpg_kernels.testing import random_mask, random_owner


def _workloads():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(21, 70, generator=g)
    owner = random_owner(w.shape, generator=g)
    mask = random_mask(w.shape, generator=g)
    bits = masks.active_bits(owner, 3, mask=mask)
    x = torch.randn(19, 70, generator=g)
    cw = torch.randn(6, 4, 3, 3, generator=g)
    cbits = masks.pack(torch.rand(cw.shape, generator=g) < 0.5)
    cx = torch.randn(2, 4, 7, 7, generator=g)
    grad = torch.randn(w.shape, generator=g)
    # Enough W rows that small_batch_grad splits N across blocks and across warps.
    tall_w = torch.randn(300, 70, generator=g)
    tall_bits = masks.pack(torch.rand(tall_w.shape, generator=g) < 0.5)
    tall_dy = torch.randn(3, 300, generator=g)
    # Conv channels in whole 16-byte vectors: bf16 runs on the tensor-core conv kernel, fp32
    # (TF32 off) on the simt one; NCHW tiles are gathered, NHWC ones copied by cp.async. (The
    # narrow "conv" above runs on the direct kernel.)
    tw = torch.randn(16, 16, 3, 3, generator=g)
    tbits = masks.pack(torch.rand(tw.shape, generator=g) < 0.5)
    tx = torch.randn(2, 16, 7, 6, generator=g)
    tdy = torch.randn(2, 16, 4, 3, generator=g)  # stride 2, padding 1

    def conv(fmt, dtype):
        x = tx.to(dtype).contiguous(memory_format=fmt)
        return functional.masked_conv2d(x, tw.to(dtype), tbits, stride=2, padding=1)

    def conv_grad_input(fmt, dtype):
        dy = tdy.to(dtype).contiguous(memory_format=fmt)
        return torch.ops.cpg.masked_conv2d_grad_input(dy, tw.to(dtype), tbits, list(tx.shape),
                                                      [2, 2], [1, 1], [1, 1], 1)

    nchw, nhwc = torch.contiguous_format, torch.channels_last
    return {
        "pack_bits": lambda: masks.pack(mask > 5e-3),
        "unpack_bits": lambda: masks.unpack(bits, w.shape),
        "active_bits": lambda: masks.active_bits(owner, 3, mask=mask),
        "owner_histogram": lambda: masks.owner_counts(owner),
        "count_bits": lambda: torch.ops.cpg.count_bits(bits),
        "apply_bits": lambda: masks.apply_bits(w, bits),
        "grad_epilogue": lambda: torch.ops.cpg.grad_epilogue(grad, w, owner, 3, True),
        "linear_small_batch": lambda: functional.masked_linear(x[:3], w, bits),
        "linear": lambda: functional.masked_linear(x, w, bits),
        "linear_bf16": lambda: functional.masked_linear(x.bfloat16(), w.bfloat16(), bits),
        "linear_grad_input": lambda: torch.ops.cpg.masked_linear_grad_input(
            torch.randn(19, 21, generator=torch.Generator().manual_seed(2)), w, bits),
        "linear_grad_input_small_batch": lambda: torch.ops.cpg.masked_linear_grad_input(
            tall_dy, tall_w, tall_bits),
        "multitask": lambda: functional.masked_linear_multitask(
            x[:6].view(2, 3, 70), w, torch.stack([bits, bits ^ 1])),
        "conv": lambda: functional.masked_conv2d(cx, cw, cbits, padding=1),
        "conv_nhwc": lambda: conv(nhwc, torch.float32),
        "conv_nchw_bf16": lambda: conv(nchw, torch.bfloat16),
        "conv_nhwc_bf16": lambda: conv(nhwc, torch.bfloat16),
        "conv_grad_input": lambda: conv_grad_input(nchw, torch.float32),
        "conv_grad_input_nhwc": lambda: conv_grad_input(nhwc, torch.float32),
        "conv_grad_input_nchw_bf16": lambda: conv_grad_input(nchw, torch.bfloat16),
        "conv_grad_input_nhwc_bf16": lambda: conv_grad_input(nhwc, torch.bfloat16),
    }


@pytest.mark.parametrize("name", list(_workloads()))
def test_two_seeds_agree_bitwise(name):
    run = _workloads()[name]
    with backends.emulated(seed=1):
        first = run()
    with backends.emulated(seed=2):
        second = run()
    first = first if isinstance(first, tuple) else (first,)
    second = second if isinstance(second, tuple) else (second,)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b), name
