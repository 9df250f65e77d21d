"""The dense-masking oracle: what the paper's code does, in plain PyTorch.

Builds ``weight * mask`` and calls ``F.linear`` / ``F.conv2d``. Tests use it in
float64 as the ground truth; benchmarks use it as the baseline the fused
kernels replace. The straight-through picking mask is expressed with the usual
detach trick so autograd yields the same gradients CPG defines.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_THRESHOLD = 5e-3


def active_mask(
    owner: torch.Tensor,
    task: int,
    mask: torch.Tensor | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> torch.Tensor:
    """Bool active set of ``task`` (docs/design.md section 2)."""
    own = owner == task
    old = (owner > 0) & (owner < task)
    if mask is not None:
        old = old & (mask > threshold)
    return own | old


def effective_weight(
    weight: torch.Tensor,
    owner: torch.Tensor,
    task: int,
    mask: torch.Tensor | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> torch.Tensor:
    """``W_eff`` with CPG's gradients: frozen old weights, straight-through mask."""
    own = (owner == task).to(weight.dtype)
    old = ((owner > 0) & (owner < task)).to(weight.dtype)
    frozen = weight.detach()
    if mask is None:
        picked = torch.ones_like(frozen)
    else:
        hard = (mask > threshold).to(weight.dtype)
        picked = hard + (mask - mask.detach()).to(weight.dtype)  # straight-through
    return weight * own + frozen * old * picked


def linear(x, weight, owner, task, mask=None, bias=None, threshold=DEFAULT_THRESHOLD):
    return F.linear(x, effective_weight(weight, owner, task, mask, threshold), bias)


def conv2d(
    x,
    weight,
    owner,
    task,
    mask=None,
    bias=None,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    threshold=DEFAULT_THRESHOLD,
):
    w = effective_weight(weight, owner, task, mask, threshold)
    return F.conv2d(x, w, bias, stride, padding, dilation, groups)


def masked_linear(x, weight, active: torch.Tensor, bias=None):
    """Inference from a bool active set (the unpacked bits)."""
    return F.linear(x, weight * active.to(weight.dtype), bias)


def masked_conv2d(
    x, weight, active: torch.Tensor, bias=None, stride=1, padding=0, dilation=1, groups=1
):
    return F.conv2d(x, weight * active.to(weight.dtype), bias, stride, padding, dilation, groups)
