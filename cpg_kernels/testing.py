"""Random CPG layer states and error metrics, for tests and benchmarks."""
from __future__ import annotations

import torch

from .masks import DEFAULT_THRESHOLD

# Relative error ||out - ref|| / ||ref|| accepted against a float64 oracle.
TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 3e-3,
    torch.bfloat16: 2e-2,
}


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64; NaN anywhere counts as infinite."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(out64).all():
        return float("inf")
    denom = ref64.norm().item()
    diff = (out64 - ref64).norm().item()
    return diff / denom if denom > 0 else diff


def random_owner(shape, tasks: int = 5, free_fraction: float = 0.2,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 owners spanning free (0) and tasks 1..tasks."""
    owner = torch.randint(1, tasks + 1, shape, generator=generator, dtype=torch.uint8)
    free = torch.rand(shape, generator=generator) < free_fraction
    return owner.masked_fill_(free, 0)


def random_mask(shape, threshold: float = DEFAULT_THRESHOLD,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """A float32 picking mask with about half its entries above the threshold."""
    spread = torch.rand(shape, generator=generator) * 2 * threshold
    return spread.float()
