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

Shapes and dtypes, as the ops check them (a bad argument raises ``ValueError``
naming it). A weight is viewed as the matrix ``[N, K]``: ``N = weight.shape[0]``,
``K`` the product of its other dimensions.

* ``weight``: float32, float16, bfloat16 or float64; ``x`` and ``bias`` have its
  dtype and device; ``bias`` is ``[N]``. The linear forms also take a float16
  or bfloat16 ``x`` (and ``bias``) against a float32 weight, as autocast leaves
  them: the result is ``x``'s dtype, computed with the weight rounded to it,
  and the weight's gradient is float32 (up to 64 rows the CUDA kernels round
  the weight in registers, with grad too; elsewhere the op casts it).
* ``bits``: int32 ``[N, ceil(K/32)]``, one task's packed active set
  (``cpg_kernels.masks.active_bits`` / ``pack``).
* ``owner``: uint8 with the weight's shape (0 = free, ``t`` = trained by task
  ``t``); ``task``: 1..255; ``mask``: float32 with the weight's shape.
* ``stride``, ``padding``, ``dilation``: an int or a pair of ints.

Every function here is one call of a ``torch.ops.cpg`` op (two for the
training forms: the active bits, then the layer), with its autograd formula in
C++, so it works under ``torch.compile`` and costs little per call.
"""

from __future__ import annotations

import torch

from . import _ops  # noqa: F401  (loads the extension and registers the ops)
from .masks import DEFAULT_THRESHOLD

# The ops' overloads, looked up once: a call skips the packet's overload resolution.
_active_bits = torch.ops.cpg.active_bits.default
_masked_linear = torch.ops.cpg.masked_linear.default
_masked_conv2d = torch.ops.cpg.masked_conv2d.default
_masked_linear_multitask = torch.ops.cpg.masked_linear_multitask.default
_masked_conv2d_multitask = torch.ops.cpg.masked_conv2d_multitask.default


def masked_linear(
    x: torch.Tensor, weight: torch.Tensor, bits: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ (weight * unpack(bits)).T + bias``, inference from a task's packed bits.

    ``x`` ``[..., K]``, ``weight`` ``[N, K]``, ``bits`` int32 ``[N, ceil(K/32)]``,
    ``bias`` ``[N]`` or None; returns ``[..., N]`` in ``x``'s dtype. Differentiable
    in ``x``, ``weight`` (through the bits) and ``bias``.
    """
    return _masked_linear(x, weight, bits, bias)


def masked_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bits: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> torch.Tensor:
    """``F.conv2d`` with ``weight * unpack(bits)``, inference from a task's packed bits.

    ``x`` ``[B, C, H, W]`` (NCHW or channels_last), ``weight``
    ``[N, C/groups, kh, kw]``, ``bits`` int32 ``[N, ceil(C/groups*kh*kw/32)]``,
    ``bias`` ``[N]`` or None; returns ``[B, N, Ho, Wo]``, channels_last where ``x``
    is (and is not also plain contiguous).
    """
    return _masked_conv2d(x, weight, bits, bias, stride, padding, dilation, groups)


def cpg_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    owner: torch.Tensor,
    task: int,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> torch.Tensor:
    """Linear layer while training ``task``: its own weights plus the picked older ones.

    ``x`` ``[..., K]``, ``weight`` ``[N, K]``, ``owner`` uint8 ``[N, K]``, ``task``
    1..255, ``mask`` float32 ``[N, K]`` (picks ``mask > threshold``; None picks
    every older weight), ``bias`` ``[N]`` or None; returns ``[..., N]``.
    Gradients reach ``x``, ``weight`` (only where ``owner == task``), ``mask``
    (straight through) and ``bias``.
    """
    bits = _active_bits(owner, task, mask, None, threshold)
    return _masked_linear(x, weight, bits, bias, owner, mask, task)


def cpg_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    owner: torch.Tensor,
    task: int,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    threshold: float = DEFAULT_THRESHOLD,
) -> torch.Tensor:
    """Conv2d layer while training ``task``: its own weights plus the picked older ones.

    ``x`` ``[B, C, H, W]``, ``weight`` ``[N, C/groups, kh, kw]``, ``owner`` uint8
    and ``mask`` float32 with the weight's shape, ``task`` 1..255, ``bias`` ``[N]``
    or None; returns ``[B, N, Ho, Wo]`` (layout as ``masked_conv2d``). Gradients
    as ``cpg_linear``.
    """
    bits = _active_bits(owner, task, mask, None, threshold)
    return _masked_conv2d(
        x, weight, bits, bias, stride, padding, dilation, groups, owner, mask, task
    )


def masked_linear_multitask(
    x: torch.Tensor, weight: torch.Tensor, bits: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """T tasks' inputs against one shared weight in one call.

    ``x`` is ``[T, B, K]``, ``weight`` ``[N, K]``, ``bits`` int32
    ``[T, N, ceil(K/32)]`` (each task's packed active set), ``bias`` ``[N]`` or
    None; the result ``[T, B, N]``. The weight is read once for all tasks.
    """
    return _masked_linear_multitask(x, weight, bits, bias)


def masked_conv2d_multitask(
    x: torch.Tensor,
    weight: torch.Tensor,
    bits: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
) -> torch.Tensor:
    """T tasks' images against one shared conv weight in one call.

    ``x`` is ``[T, B, C, H, W]`` (each task's images; channels_last per image
    is kept), ``weight`` ``[N, C/groups, kh, kw]``, ``bits`` int32
    ``[T, N, words]``, ``bias`` ``[N]`` or None; the result
    ``[T, B, N, Ho, Wo]``. Late layers (one group, at most 16 output pixels per
    task) read the weight once for all tasks; larger ones run a conv per task.
    """
    return _masked_conv2d_multitask(x, weight, bits, bias, stride, padding, dilation, groups)
