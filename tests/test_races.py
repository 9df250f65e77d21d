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
        "multitask": lambda: functional.masked_linear_multitask(
            x[:6].view(2, 3, 70), w, torch.stack([bits, bits ^ 1])),
        "conv": lambda: functional.masked_conv2d(cx, cw, cbits, padding=1),
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
