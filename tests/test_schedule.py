"""The gradual pruning schedule against Zhu & Gupta (2018), value by value.

``s(i) = s_f + (s_0 - s_f) * (1 - i/n)^3``: the numbers below are worked out by hand from the
formula, not by calling the module, so a wrong exponent or a swapped s_0/s_f shows.
"""

from __future__ import annotations

import pytest

from cpg_kernels.trainer import cubic_sparsity, pruning_targets

# (step, steps, s_0, s_f, s(step)); (1 - 1/4)^3 = 27/64, (1 - 2/4)^3 = 1/8, (1 - 3/4)^3 = 1/64.
POINTS = [
    (0, 4, 0.0, 0.8, 0.0),
    (1, 4, 0.0, 0.8, 0.8 - 0.8 * 27 / 64),  # 0.4625 (exponent 2 would give 0.35)
    (2, 4, 0.0, 0.8, 0.8 - 0.8 / 8),  # 0.7
    (3, 4, 0.0, 0.8, 0.8 - 0.8 / 64),  # 0.7875
    (4, 4, 0.0, 0.8, 0.8),
    (1, 2, 0.2, 0.9, 0.9 - 0.7 / 8),  # 0.8125
    (1, 5, 0.5, 0.5, 0.5),
]


@pytest.mark.parametrize("step,steps,initial,final,expected", POINTS)
def test_cubic_sparsity_values(step, steps, initial, final, expected):
    assert cubic_sparsity(step, steps, initial, final) == pytest.approx(expected, abs=1e-12)


def test_pruning_targets_follow_the_formula():
    assert pruning_targets(0.0, 0.8, 4) == pytest.approx([0.4625, 0.7, 0.7875, 0.8])
    # s_0 > 0 prunes to s_0 first; repeated sparsities (s_0 == s_f) are pruned to once.
    assert pruning_targets(0.2, 0.9, 2) == pytest.approx([0.2, 0.8125, 0.9])
    assert pruning_targets(0.5, 0.5, 3) == pytest.approx([0.5])
    assert pruning_targets(0.0, 0.0, 3) == []
