"""Network size in shared weights, and how far it may grow.

Growth widens every layer by one channel factor (``lifecycle.grow``); how
many weights that adds depends on the architecture (a layer between two
widened layers grows with the factor squared, the first and last ones
linearly) and on rounding channel counts up. So the factor for a size
target is found by trying factors on a weightless copy of the network.
"""

from __future__ import annotations

from torch import nn

from .. import lifecycle as L
from ..lifecycle.export import meta_copy


def shared_weights(model: nn.Module) -> int:
    """Number of weights in the model's CPG conv/linear layers (classifiers excluded)."""
    return sum(layer.weight.numel() for _, layer in L.masked_layers(model))


def growth_factor(model: nn.Module, target: int, attempts: int = 20) -> float | None:
    """The largest channel factor that leaves ``model`` with at most ``target`` shared weights.

    None when even the smallest growth (one channel more per layer) passes
    ``target``. Raises ValueError if the architecture cannot grow at all.
    """
    current = shared_weights(model)
    if _grown_weights(model, 1.0 + 1e-9) > target:
        return None
    # Size grows at least linearly in the factor, so target/current bounds it.
    low, high = 1.0 + 1e-9, max(target / current, 1.0 + 1e-9)
    if _grown_weights(model, high) <= target:
        return high
    for _ in range(attempts):
        middle = (low + high) / 2
        if _grown_weights(model, middle) <= target:
            low = middle
        else:
            high = middle
    return low


def _grown_weights(model: nn.Module, factor: float) -> int:
    dry = meta_copy(model)
    L.grow(dry, factor)
    return shared_weights(dry)
