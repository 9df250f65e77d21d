"""Masked linear and conv2d from a dense weight plus packed masks or owners.

Two forms for each layer type:

* inference, from one task's packed active bits: ``masked_linear`` /
  ``masked_conv2d``;
* training task ``t``, from ``owner`` and an optional real-valued picking mask:
  ``cpg_linear`` / ``cpg_conv2d``. The effective weight is ``W`` where
  ``owner == t``, ``W`` where ``0 < owner < t`` and ``mask > threshold`` (or
  always, when ``mask`` is None: "pick all"), else 0. Gradients: the weight's
  only where ``owner == t`` (old tasks stay frozen), the mask's straight
  through, ``dL/dW_eff * W`` wherever ``0 < owner < t``.

None of these builds ``weight * mask`` as a weight-sized tensor.
"""
from __future__ import annotations

import torch

from . import _ops  # noqa: F401  (loads the extension and registers the ops)
from .masks import DEFAULT_THRESHOLD, active_bits


def _pair(v) -> list[int]:
    if isinstance(v, int):
        return [v, v]
    v = [int(e) for e in v]
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair of ints, got {v}")
    return v


def masked_linear(x: torch.Tensor, weight: torch.Tensor, bits: torch.Tensor,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ (weight * unpack(bits)).T + bias``, inference from a task's packed bits."""
    return torch.ops.cpg.masked_linear(x, weight, bits, bias, None, None, 0)


def masked_conv2d(x: torch.Tensor, weight: torch.Tensor, bits: torch.Tensor,
                  bias: torch.Tensor | None = None, stride=1, padding=0, dilation=1,
                  groups: int = 1) -> torch.Tensor:
    """``F.conv2d`` with ``weight * unpack(bits)``, inference from a task's packed bits."""
    return torch.ops.cpg.masked_conv2d(x, weight, bits, bias, _pair(stride), _pair(padding),
                                       _pair(dilation), int(groups), None, None, 0)


def cpg_linear(x: torch.Tensor, weight: torch.Tensor, owner: torch.Tensor, task: int,
               mask: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """Linear layer while training ``task``: its own weights plus the picked older ones."""
    bits = active_bits(owner, task, mask=mask, threshold=threshold)
    return torch.ops.cpg.masked_linear(x, weight, bits, bias, owner, mask, int(task))


def cpg_conv2d(x: torch.Tensor, weight: torch.Tensor, owner: torch.Tensor, task: int,
               mask: torch.Tensor | None = None, bias: torch.Tensor | None = None, stride=1,
               padding=0, dilation=1, groups: int = 1,
               threshold: float = DEFAULT_THRESHOLD) -> torch.Tensor:
    """Conv2d layer while training ``task``: its own weights plus the picked older ones."""
    bits = active_bits(owner, task, mask=mask, threshold=threshold)
    return torch.ops.cpg.masked_conv2d(x, weight, bits, bias, _pair(stride), _pair(padding),
                                       _pair(dilation), int(groups), owner, mask, int(task))


def masked_linear_multitask(x: torch.Tensor, weight: torch.Tensor, bits: torch.Tensor,
                            bias: torch.Tensor | None = None) -> torch.Tensor:
    """T tasks' inputs against one shared weight in one call.

    ``x`` is ``[T, B, K]``, ``bits`` ``[T, N, ceil(K/32)]`` (each task's packed
    active set), the result ``[T, B, N]``. The weight is read once for all tasks.
    """
    return torch.ops.cpg.masked_linear_multitask(x, weight, bits, bias)


def masked_conv2d_multitask(x: torch.Tensor, weight: torch.Tensor, bits: torch.Tensor,
                            bias: torch.Tensor | None = None, stride=1, padding=0, dilation=1,
                            groups: int = 1) -> torch.Tensor:
    """T tasks' images against one shared conv weight in one call.

    ``x`` is ``[T, B, C, H, W]`` (each task's images; channels_last per image
    is kept), ``bits`` ``[T, N, words]``, the result ``[T, B, N, Ho, Wo]``.
    Late layers (one group, at most 16 output pixels per task) read the weight
    once for all tasks; larger ones run a conv per task.
    """
    return torch.ops.cpg.masked_conv2d_multitask(x, weight, bits, bias, _pair(stride),
                                                 _pair(padding), _pair(dilation), int(groups))
