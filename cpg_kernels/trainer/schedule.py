"""The gradual pruning schedule of Zhu & Gupta (2018)."""

from __future__ import annotations


def cubic_sparsity(step: int, steps: int, initial: float, final: float) -> float:
    """``s(i) = s_f + (s_0 - s_f) * (1 - i/n)^3``: fast pruning first, gentle near the end."""
    if not 0 <= step <= steps:
        raise ValueError(f"step must be in 0..{steps}, got {step}")
    return final + (initial - final) * (1 - step / steps) ** 3


def pruning_targets(initial: float, final: float, steps: int) -> list[float]:
    """The rising sparsities to prune to, one per step (step 0 only when ``initial > 0``)."""
    targets: list[float] = []
    for step in range(steps + 1):
        s = cubic_sparsity(step, steps, initial, final)
        if s > 0 and (not targets or s > targets[-1]):
            targets.append(s)
    return targets
