"""backends.emulated: the setting from before a block returns when it ends."""

from __future__ import annotations

from cpg_kernels import _C, backends


def _setting():
    """(enabled, seed) now, read by setting it back unchanged."""
    current = _C.set_emulation(False, 0)
    _C.set_emulation(*current)
    return tuple(current)


def test_emulated_restores_the_outer_seed_and_state():
    before = _setting()
    with backends.emulated(seed=5):
        assert _setting() == (True, 5)
        with backends.emulated(seed=7):
            assert _setting() == (True, 7)
        assert _setting() == (True, 5)  # not reset to 0
    assert _setting() == before


def test_emulated_restores_on_error():
    before = _setting()
    try:
        with backends.emulated(seed=3):
            raise KeyError
    except KeyError:
        pass
    assert _setting() == before
