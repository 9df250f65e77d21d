"""Packed masks, active sets and usage counts (the format of docs/design.md section 2).

A masked layer is viewed as a matrix ``[N, K]``: ``N = weight.shape[0]`` (output
channels) and ``K`` the product of the remaining dimensions in memory order.
Packed masks are int32 tensors ``[N, ceil(K/32)]``, least significant bit first;
padding bits are zero. ``owner`` is uint8 with the weight's shape: 0 = free,
``t`` in 1..255 = trained by task ``t``.
"""

from __future__ import annotations

import math

import torch

from . import _C  # noqa: F401  (registers torch.ops.cpg; cpg_kernels._ops adds the fakes)

MAX_TASK = 255
DEFAULT_THRESHOLD = 5e-3


def words_per_row(k: int) -> int:
    """Number of int32 words that hold ``k`` bits (``k`` may be symbolic)."""
    return (k + 31) // 32


def rows_and_cols(shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    """``(N, K)`` of a weight shape viewed as a matrix (sizes may be symbolic)."""
    return shape[0], math.prod(shape[1:])


def pack(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool mask shaped like a weight into int32 rows ``[N, ceil(K/32)]``."""
    return torch.ops.cpg.pack_bits(mask)


def unpack(bits: torch.Tensor, shape: torch.Size | tuple[int, ...] | int) -> torch.Tensor:
    """Unpack ``bits`` into a bool mask of ``shape`` (a weight shape, or ``K`` for ``[N, K]``)."""
    if isinstance(shape, int):
        return torch.ops.cpg.unpack_bits(bits, shape)
    n, k = rows_and_cols(shape)
    if bits.dim() != 2 or bits.shape[0] != n:
        raise ValueError(
            f"bits: expected {n} rows for a weight of shape {tuple(shape)}, "
            f"got shape {tuple(bits.shape)}"
        )
    return torch.ops.cpg.unpack_bits(bits, k).view(shape)


def active_bits(
    owner: torch.Tensor,
    task: int,
    mask: torch.Tensor | None = None,
    pick_bits: torch.Tensor | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> torch.Tensor:
    """Packed active set of ``task``: its own weights plus the older weights it picks.

    Older tasks' weights are picked by ``mask > threshold`` (a real-valued
    picking mask), by ``pick_bits`` (packed), or all of them when both are None
    (PackNet's "pick all").
    """
    return torch.ops.cpg.active_bits(owner, task, mask, pick_bits, float(threshold))


def owner_counts(owner: torch.Tensor) -> torch.Tensor:
    """int64 ``[256]``: how many weights each owner value (0 = free) holds."""
    return torch.ops.cpg.owner_histogram(owner)


def count_bits(bits: torch.Tensor) -> int:
    """Number of set bits in a packed mask (the size of an active set)."""
    return int(torch.ops.cpg.count_bits(bits).sum())


def apply_bits(weight: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """A dense copy of ``weight`` with inactive entries zeroed.

    Only for export and inspection: the layers never build this tensor.
    """
    return torch.ops.cpg.apply_bits(weight, bits)
