"""The element-wise mask ops against plain-PyTorch definitions, on every backend."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cpg_kernels import masks, reference
from cpg_kernels.testing import random_mask, random_owner

SHAPES = [(1, 1), (3, 31), (5, 32), (4, 33), (7, 100), (2, 3, 3, 3), (6, 5, 1, 7)]


def naive_pack(mask: torch.Tensor) -> torch.Tensor:
    m = mask.reshape(mask.shape[0], -1).to(torch.int64)
    n, k = m.shape
    words = (k + 31) // 32
    padded = torch.zeros(n, words * 32, dtype=torch.int64)
    padded[:, :k] = m
    weights = torch.tensor([1 << j for j in range(32)], dtype=torch.int64)
    packed = (padded.view(n, words, 32) * weights).sum(-1)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


@pytest.mark.parametrize("shape", SHAPES)
def test_pack_matches_definition_and_round_trips(backend, shape):
    mask = torch.rand(shape) < 0.5
    bits = backend.run(masks.pack, mask.to(backend.device))
    assert bits.dtype == torch.int32
    assert torch.equal(bits.cpu(), naive_pack(mask))
    back = backend.run(masks.unpack, bits, mask.shape)
    assert torch.equal(back.cpu(), mask)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 9), k=st.integers(1, 130), p=st.floats(0, 1))
def test_pack_unpack_round_trip_property(n, k, p):
    mask = torch.rand(n, k) < p
    bits = masks.pack(mask)
    assert bits.shape == (n, (k + 31) // 32)
    assert torch.equal(masks.unpack(bits, k), mask)
    # Padding bits past K stay zero: unpacking a wider view shows no stray ones.
    wide = masks.unpack(bits, bits.shape[1] * 32)
    assert not wide[:, k:].any()


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 6),
    k=st.integers(1, 80),
    task=st.integers(1, 7),
    how=st.sampled_from(["mask", "bits", "all"]),
)
def test_active_bits_property(n, k, task, how):
    owner = random_owner((n, k), tasks=7)
    mask = random_mask((n, k))
    picks = mask > masks.DEFAULT_THRESHOLD
    kwargs = {"mask": mask} if how == "mask" else {}
    if how == "bits":
        kwargs = {"pick_bits": masks.pack(picks)}
    expect = reference.active_mask(owner, task, None if how == "all" else mask)
    assert torch.equal(masks.unpack(masks.active_bits(owner, task, **kwargs), k), expect)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("how", ["mask", "bits", "all"])
def test_active_bits(backend, shape, how):
    owner = random_owner(shape)
    mask = random_mask(shape)
    task = 4
    kwargs = {}
    if how == "mask":
        kwargs["mask"] = mask.to(backend.device)
    elif how == "bits":
        kwargs["pick_bits"] = masks.pack(mask > masks.DEFAULT_THRESHOLD).to(backend.device)
    bits = backend.run(masks.active_bits, owner.to(backend.device), task, **kwargs)
    expect = reference.active_mask(owner, task, None if how == "all" else mask)
    assert torch.equal(masks.unpack(bits.cpu(), shape), expect)


def test_owner_counts_and_count_bits(backend):
    owner = random_owner((37, 45), tasks=9)
    counts = backend.run(masks.owner_counts, owner.to(backend.device)).cpu()
    assert torch.equal(counts, torch.bincount(owner.flatten().long(), minlength=256))
    mask = torch.rand(13, 70) < 0.3
    bits = masks.pack(mask).to(backend.device)
    assert backend.run(masks.count_bits, bits) == int(mask.sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(3, 31), (4, 33), (2, 3, 3, 3)])
def test_apply_bits(backend, dtype, shape):
    w = torch.randn(shape, dtype=dtype)
    mask = torch.rand(shape) < 0.5
    out = backend.run(masks.apply_bits, w.to(backend.device), masks.pack(mask).to(backend.device))
    assert torch.equal(out.cpu(), w * mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("mask_grad", [True, False])
def test_grad_epilogue(backend, dtype, mask_grad):
    shape = (5, 3, 3, 3)
    g, w = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
    owner, task = random_owner(shape), 3
    dev = backend.device
    grad_w, grad_m = backend.run(
        torch.ops.cpg.grad_epilogue, g.to(dev), w.to(dev), owner.to(dev), task, mask_grad
    )
    assert torch.equal(grad_w.cpu(), g * (owner == task))
    if mask_grad:
        old = (owner > 0) & (owner < task)
        expect = (g.float() * w.float() * old) if dtype != torch.float64 else (g * w * old).float()
        torch.testing.assert_close(grad_m.cpu(), expect, rtol=1e-6, atol=0)
    else:
        assert grad_m.numel() == 0


def test_bad_arguments_are_clear_errors():
    owner = random_owner((4, 40))
    with pytest.raises(ValueError, match="owner: expected dtype uint8"):
        masks.active_bits(owner.int(), 2)
    for task in (0, 256, -1):
        with pytest.raises(ValueError, match=r"task: expected an id in 1\.\.255"):
            masks.active_bits(owner, task)
    with pytest.raises(ValueError, match="mask: expected shape"):
        masks.active_bits(owner, 2, mask=torch.zeros(4, 41))
    with pytest.raises(ValueError, match="mask: expected dtype float32"):
        masks.active_bits(owner, 2, mask=torch.zeros(4, 40, dtype=torch.float64))
    with pytest.raises(ValueError, match="not both"):
        masks.active_bits(
            owner, 2, mask=torch.zeros(4, 40), pick_bits=torch.zeros(4, 2, dtype=torch.int32)
        )
    with pytest.raises(ValueError, match=r"bits: expected shape \[4, 2\]"):
        masks.active_bits(owner, 2, pick_bits=torch.zeros(4, 1, dtype=torch.int32))
    with pytest.raises(ValueError, match="bits: expected dtype int32"):
        masks.unpack(torch.zeros(4, 2, dtype=torch.int64), 40)
    with pytest.raises(ValueError, match="words per row"):
        masks.unpack(torch.zeros(4, 2, dtype=torch.int32), 70)
    with pytest.raises(ValueError, match="mask: expected dtype bool"):
        masks.pack(torch.zeros(3, 3))


HIGH_IDS = torch.tensor([0, 1, 127, 128, 129, 200, 254, 255], dtype=torch.uint8)


def high_owner(shape, seed=0):
    """Owners over the whole uint8 range, 128 and above included."""
    g = torch.Generator().manual_seed(seed)
    return HIGH_IDS[torch.randint(0, len(HIGH_IDS), shape, generator=g)]


@pytest.mark.parametrize("task", [127, 128, 200, 255])
def test_owner_and_task_ids_past_127(backend, task):
    """Ids >= 128 stay unsigned in every op that reads owners."""
    shape = (5, 3, 3, 3)
    owner, mask = high_owner(shape, task), random_mask(shape)
    dev = backend.device
    for kwargs in ({"mask": mask}, {}):
        bits = backend.run(
            masks.active_bits, owner.to(dev), task, **{k: v.to(dev) for k, v in kwargs.items()}
        )
        expect = reference.active_mask(owner, task, kwargs.get("mask"))
        assert torch.equal(masks.unpack(bits.cpu(), shape), expect), kwargs.keys()
    counts = backend.run(masks.owner_counts, owner.to(dev)).cpu()
    assert torch.equal(counts, torch.bincount(owner.flatten().long(), minlength=256))
    g, w = torch.randn(shape), torch.randn(shape)
    grad_w, grad_m = backend.run(
        torch.ops.cpg.grad_epilogue, g.to(dev), w.to(dev), owner.to(dev), task, True
    )
    assert torch.equal(grad_w.cpu(), g * (owner == task))
    old = (owner > 0) & (owner < task)
    torch.testing.assert_close(grad_m.cpu(), g * w * old, rtol=1e-6, atol=0)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 2.0**-7, 0.9])
def test_active_bits_threshold(backend, threshold):
    """``mask > threshold``, strictly, for thresholds other than the default: entries at the
    threshold are not picked, the next float up is."""
    shape = (6, 70)
    at = torch.tensor(threshold, dtype=torch.float32)
    values = torch.stack(
        [
            at,
            torch.nextafter(at, torch.tensor(1.0)),
            torch.nextafter(at, torch.tensor(-1.0)),
            at + 0.05,
            at - 0.05,
        ]
    )
    g = torch.Generator().manual_seed(7)
    mask = values[torch.randint(0, len(values), shape, generator=g)]
    owner = random_owner(shape, tasks=7, generator=g)
    bits = backend.run(
        masks.active_bits,
        owner.to(backend.device),
        4,
        mask=mask.to(backend.device),
        threshold=threshold,
    )
    expect = reference.active_mask(owner, 4, mask, threshold=threshold)
    assert torch.equal(masks.unpack(bits.cpu(), shape), expect)
    default = reference.active_mask(owner, 4, mask)
    assert not torch.equal(expect, default)  # the threshold matters for this mask
