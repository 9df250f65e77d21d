"""The CPU path's kernels, once per instruction-set build this CPU runs (scalar, AVX2,
AVX-512): against the float64 oracle and naive definitions at word edges and odd sizes,
bit-for-bit across builds where the result is exact, and independent of threads and batch.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest
import torch

from cpg_kernels import _C, backends, functional, masks, reference
from cpg_kernels.testing import assert_within_bound, oracle

ISAS = list(_C.cpu_isas())
# Column counts around the 8-lane vectors and 32-bit mask words.
EDGE_K = (1, 7, 8, 9, 31, 32, 33, 40, 63, 64, 65, 100)
THRESHOLD = 5e-3


@contextlib.contextmanager
def cpu_isa(name: str):
    previous = _C.set_cpu_isa(name)
    try:
        yield
    finally:
        _C.set_cpu_isa(previous)


@pytest.fixture(params=ISAS)
def isa(request):
    with cpu_isa(request.param):
        yield request.param


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _state(shape, task, gen):
    """owner with free, older, current and later tasks' weights; a mask around the threshold
    with some NaNs."""
    owner = torch.randint(0, task + 2, shape, generator=gen).to(torch.uint8)
    mask = torch.rand(shape, generator=gen) * 2 * THRESHOLD
    mask[torch.rand(shape, generator=gen) < 0.05] = float("nan")
    return owner, mask


def _naive_pack(mask2d: torch.Tensor) -> torch.Tensor:
    n, k = mask2d.shape
    words = (k + 31) // 32
    padded = torch.zeros(n, words * 32, dtype=torch.int64)
    padded[:, :k] = mask2d.long()
    weights = 2 ** torch.arange(32, dtype=torch.int64)
    packed = (padded.view(n, words, 32) * weights).sum(-1)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


# ------------------------------------------------------------------ element-wise


@pytest.mark.parametrize("k", EDGE_K)
def test_pack_unpack_match_the_format(isa, k):
    mask = torch.rand(5, k, generator=_gen(k)) < 0.5
    bits = masks.pack(mask)
    assert torch.equal(bits, _naive_pack(mask))
    assert torch.equal(masks.unpack(bits, k), mask)


@pytest.mark.parametrize("task", [1, 2, 3, 255])
@pytest.mark.parametrize("k", (31, 32, 33, 65))
@pytest.mark.parametrize("picks", ["mask", "pick_bits", "all"])
def test_active_bits_follow_the_rule(isa, task, k, picks):
    gen = _gen(task * 100 + k)
    owner, mask = _state((6, k), min(task, 253), gen)
    if task == 255:
        owner[0, :4] = torch.tensor([0, 254, 255, 1], dtype=torch.uint8)
    kwargs, picked = {}, None
    if picks == "mask":
        kwargs, picked = {"mask": mask, "threshold": THRESHOLD}, mask > THRESHOLD
    elif picks == "pick_bits":
        picked = torch.rand(6, k, generator=gen) < 0.5
        kwargs = {"pick_bits": masks.pack(picked)}
    expect = (owner == task) | (
        (owner > 0) & (owner < task) & (picked if picked is not None else True)
    )
    bits = masks.active_bits(owner, task, **kwargs)
    assert torch.equal(masks.unpack(bits, k), expect)
    assert torch.equal(bits, _naive_pack(expect))  # padding bits stay zero


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("k", (1, 31, 33, 64, 100))
def test_decode_is_an_exact_select(isa, dtype, k):
    gen = _gen(k)
    w = torch.randn(7, k, generator=gen).to(dtype)
    active = torch.rand(7, k, generator=gen) < 0.5
    bits = masks.pack(active)
    bits[:, -1] |= torch.tensor(-1 << (k % 32) if k % 32 else 0, dtype=torch.int32)  # padding set
    out = masks.apply_bits(w, bits)
    assert torch.equal(out, torch.where(active, w, torch.zeros((), dtype=dtype)))
    assert not out[~active].signbit().any()  # +0 where inactive, as the dense path's zeros


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", (1, 31, 32, 33, 1000))
def test_grad_epilogue_is_exact(isa, dtype, n):
    gen = _gen(n)
    task = 3
    owner, _ = _state((n,), task, gen)
    g = torch.randn(n, generator=gen).to(dtype)
    w = torch.randn(n, generator=gen).to(dtype)
    grad_w, grad_m = torch.ops.cpg.grad_epilogue(g, w, owner, task, True)
    assert torch.equal(grad_w, torch.where(owner == task, g, torch.zeros((), dtype=dtype)))
    pickable = (owner > 0) & (owner < task)
    assert torch.equal(grad_m, torch.where(pickable, g.float() * w.float(), torch.zeros(())))


def test_histogram_and_counts(isa):
    gen = _gen(0)
    owner = torch.randint(0, 256, ((1 << 20) + 77,), generator=gen).to(torch.uint8)
    owner[:5000] = 7  # a long run of one value
    assert torch.equal(masks.owner_counts(owner), torch.bincount(owner.long(), minlength=256))
    mask = torch.rand(9, 77, generator=gen) < 0.3
    counts = torch.ops.cpg.count_bits(masks.pack(mask))
    assert torch.equal(counts, mask.sum(1))


def test_element_wise_results_are_the_same_bits_on_every_build():
    gen = _gen(1)
    owner, mask = _state((37, 333), 4, gen)
    w = torch.randn(37, 333, generator=gen)
    g = torch.randn(37, 333, generator=gen).bfloat16()

    def run():
        bits = masks.active_bits(owner, 4, mask=mask)
        return (
            bits,
            masks.unpack(bits, 333),
            masks.apply_bits(w, bits),
            *torch.ops.cpg.grad_epilogue(g, w.bfloat16(), owner, 4, True),
        )

    results = []
    for name in ISAS:
        with cpu_isa(name):
            results.append(run())
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))


@contextlib.contextmanager
def threads(n: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def test_element_wise_ops_split_across_threads_alike(isa):
    """Above 64K entries the element-wise ops split rows (or blocks of 32 entries) across
    threads: the naive definitions' results, the same on one thread and on two."""
    gen = _gen(3)
    task, shape = 4, (301, 263)  # 79K entries, rows that end mid-word
    owner, mask = _state(shape, task, gen)
    w = torch.randn(shape, generator=gen)
    g = torch.randn(shape, generator=gen)
    active = (owner == task) | ((owner > 0) & (owner < task) & (mask > THRESHOLD))

    def run():
        bits = masks.active_bits(owner, task, mask=mask, threshold=THRESHOLD)
        return (
            bits,
            masks.pack(active),
            masks.unpack(bits, shape[1]),
            masks.apply_bits(w, bits),
            *torch.ops.cpg.grad_epilogue(g, w, owner, task, True),
            masks.owner_counts(owner.flatten()),
            torch.ops.cpg.count_bits(bits),
        )

    with threads(1):
        one = run()
    with threads(2):
        two = run()
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))
    pickable = (owner > 0) & (owner < task)
    expect = (
        _naive_pack(active),
        _naive_pack(active),
        active,
        torch.where(active, w, torch.zeros(())),
        torch.where(owner == task, g, 0.0),
        torch.where(pickable, g * w, 0.0),
        torch.bincount(owner.flatten().long(), minlength=256),
        active.sum(1),
    )
    for got, want in zip(one, expect, strict=True):
        assert torch.equal(got, want)


# ------------------------------------------------------------- small-batch kernels

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Word-edge column counts for the linear kernels (a subset of EDGE_K, to stay cheap).
LINEAR_K = (1, 31, 32, 33, 63, 64, 65, 100)


def _linear_case(rows, n, k, dtype, seed, bias=True):
    gen = _gen(seed)
    x = torch.randn(rows, k, generator=gen).to(dtype)
    w = (torch.randn(n, k, generator=gen) * k**-0.5).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype) if bias else None
    active = torch.rand(n, k, generator=gen) < 0.6
    return x, w, b, active


def _linear_oracle(x, w, active, b):
    ref, _ = oracle(lambda x_, w_, b_: reference.masked_linear(x_, w_, active, b_), [x, w, b])
    return ref


def _grad_input_oracle(dy, w, active):
    ref, _ = oracle(lambda d_, w_: d_ @ (w_ * active), [dy, w])
    return ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", LINEAR_K)
@pytest.mark.parametrize("rows,n", [(1, 5), (2, 6), (3, 9), (16, 13)])
def test_small_batch_linear_matches_the_oracle(isa, dtype, rows, n, k):
    x, w, b, active = _linear_case(rows, n, k, dtype, rows * 1000 + k)
    y = functional.masked_linear(x, w, masks.pack(active), b)
    assert y.dtype == dtype
    assert_within_bound(y, _linear_oracle(x, w, active, b), (isa, dtype, rows, n, k))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", LINEAR_K)
@pytest.mark.parametrize("rows,n", [(1, 70), (2, 5), (5, 33), (16, 7)])
def test_small_batch_grad_input_matches_the_oracle(isa, dtype, rows, n, k):
    _, w, _, active = _linear_case(rows, n, k, dtype, rows * 1000 + k + 1, bias=False)
    dy = torch.randn(rows, n, generator=_gen(k)).to(dtype)
    dx = torch.ops.cpg.masked_linear_grad_input(dy, w, masks.pack(active))
    assert dx.dtype == dtype
    assert_within_bound(dx, _grad_input_oracle(dy, w, active), (isa, dtype, rows, n, k))


@pytest.mark.parametrize("dtype", DTYPES + (torch.float64,))
@pytest.mark.parametrize("k", (31, 33, 64, 65))
@pytest.mark.parametrize("tile_rows", [None, 3])
def test_chunked_linear_matches_the_oracle(isa, dtype, k, tile_rows):
    """Past the small-batch limit (17 and 40 rows): the decoded tile (widened to fp32 for
    16-bit layers on CPUs without native 16-bit dot products) into ATen's GEMM, in one tile
    or several."""
    for rows in (17, 40):
        x, w, b, active = _linear_case(rows, 13, k, dtype, rows + k)
        dy = torch.randn(rows, 13, generator=_gen(k + 1)).to(dtype)
        bits = masks.pack(active)
        tile = (
            contextlib.nullcontext()
            if tile_rows is None
            else backends.decode_tile_elements(tile_rows * k)
        )
        with tile:
            y = functional.masked_linear(x, w, bits, b)
            dx = torch.ops.cpg.masked_linear_grad_input(dy, w, bits)
        assert y.dtype == dtype and dx.dtype == dtype
        assert_within_bound(y, _linear_oracle(x, w, active, b), ("y", isa, dtype, rows, k))
        assert_within_bound(dx, _grad_input_oracle(dy, w, active), ("dx", isa, dtype, rows, k))


@pytest.mark.parametrize("tasks,batch", [(2, 1), (3, 5), (4, 4)])
def test_small_batch_multitask_reads_each_task_bits(isa, tasks, batch):
    gen = _gen(tasks * 10 + batch)
    n, k = 11, 70
    x = torch.randn(tasks, batch, k, generator=gen)
    w = torch.randn(n, k, generator=gen)
    b = torch.randn(n, generator=gen)
    active = torch.rand(tasks, n, k, generator=gen) < 0.5
    bits = torch.stack([masks.pack(a) for a in active])
    y = functional.masked_linear_multitask(x, w, bits, b)
    for t in range(tasks):
        expect = reference.masked_linear(x[t].double(), w.double(), active[t], b.double())
        torch.testing.assert_close(y[t].double(), expect, rtol=1e-5, atol=1e-5)


def test_small_batch_results_do_not_depend_on_threads_or_batch(isa):
    # Large enough (N * K > 64K entries) that the kernels split across threads.
    x, w, b, active = _linear_case(7, 301, 263, torch.float32, 5)
    bits = masks.pack(active)
    dy = torch.randn(7, 301, generator=_gen(6))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = functional.masked_linear(x, w, bits, b)
        dx1 = torch.ops.cpg.masked_linear_grad_input(dy, w, bits)
        torch.set_num_threads(max(2, threads))
        y2 = functional.masked_linear(x, w, bits, b)
        dx2 = torch.ops.cpg.masked_linear_grad_input(dy, w, bits)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(y1, y2) and torch.equal(dx1, dx2)
    # A row's output is the same alone as inside a batch (up to the small-batch limit).
    for m in (0, 3, 6):
        assert torch.equal(functional.masked_linear(x[m : m + 1], w, bits, b), y1[m : m + 1])
        assert torch.equal(
            torch.ops.cpg.masked_linear_grad_input(dy[m : m + 1], w, bits), dx1[m : m + 1]
        )


def test_training_step_matches_the_oracle(isa):
    """cpg_linear forward and backward at batch 1 (the fused kernels) and at batch 40
    (decode, then ATen's GEMM)."""
    gen = _gen(7)
    task = 3
    owner, mask = _state((45, 77), task, gen)
    mask = torch.nan_to_num(mask)
    for rows in (1, 40):
        x = torch.randn(rows, 77, generator=gen, dtype=torch.float64)
        w = torch.randn(45, 77, generator=gen, dtype=torch.float64)
        gy = torch.randn(rows, 45, generator=gen, dtype=torch.float64)
        grads = []
        for fn in (functional.cpg_linear, reference.linear):
            xf, wf, mf = (t.float().requires_grad_() for t in (x, w, mask))
            y = fn(xf, wf, owner, task, mf, None, THRESHOLD)
            grads.append((y, *torch.autograd.grad(y, (xf, wf, mf), gy.float())))
        for got, expect in zip(*grads, strict=True):
            torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tile_rows", [None, 3])
def test_chunked_conv_matches_the_oracle(isa, dtype, tile_rows):
    """conv2d and its input gradient: the decoded tile (fp32 for 16-bit layers on CPUs
    without native 16-bit dot products) into ATen's conv, one tile or several."""
    gen = _gen(11)
    w = (torch.randn(10, 3, 3, 3, generator=gen) * 0.2).to(dtype)
    active = torch.rand(w.shape, generator=gen) < 0.6
    bits = masks.pack(active)
    b = torch.randn(10, generator=gen).to(dtype)
    img = torch.randn(2, 3, 9, 9, generator=gen).to(dtype)
    gy = torch.randn(2, 10, 5, 5, generator=gen).to(dtype)
    tile = (
        contextlib.nullcontext()
        if tile_rows is None
        else backends.decode_tile_elements(tile_rows * 27)
    )
    with tile:
        y = functional.masked_conv2d(img, w, bits, b, stride=2, padding=1)
        dx = torch.ops.cpg.masked_conv2d_grad_input(
            gy, w, bits, list(img.shape), [2, 2], [1, 1], [1, 1], 1
        )
    ref, _ = oracle(
        lambda x_, w_, b_: reference.masked_conv2d(x_, w_, active, b_, 2, 1), [img, w, b]
    )
    ref_dx, _ = oracle(
        lambda g_, w_: torch.nn.grad.conv2d_input(img.shape, w_ * active, g_, 2, 1), [gy, w]
    )
    assert y.dtype == dtype and dx.dtype == dtype
    assert_within_bound(y, ref, ("y", isa, dtype))
    if _C.cpu_library_dtype(dtype) != dtype:  # widened: one rounding of fp32 sums
        assert_within_bound(dx, ref_dx, ("dx", isa, dtype))
    else:  # ATen's own 16-bit conv_transpose2d rounds partial sums (tests/test_conv_ops.py)
        assert_within_bound(dx, ref_dx, ("dx", isa, dtype), partials=True)


@pytest.mark.skipif(not {"avx2", "avx512"} <= set(ISAS), reason="needs an AVX-512 CPU")
def test_avx2_and_avx512_dot_products_give_the_same_bits():
    x, w, b, active = _linear_case(5, 37, 131, torch.float32, 9)
    bits = masks.pack(active)
    dy = torch.randn(5, 37, generator=_gen(10))
    out = {}
    for name in ("avx2", "avx512"):
        with cpu_isa(name):
            out[name] = (
                functional.masked_linear(x, w, bits, b),
                torch.ops.cpg.masked_linear_grad_input(dy, w, bits),
            )
    assert all(torch.equal(a, b) for a, b in zip(out["avx2"], out["avx512"], strict=True))


# ---------------------------------------------------------------------- selection


def test_isa_selection():
    assert ISAS[0] == "scalar" and _C.cpu_isa() in ISAS
    with pytest.raises(ValueError, match="cpu isa"):
        _C.set_cpu_isa("sse9")
    with cpu_isa("scalar"):
        assert _C.cpu_isa() == "scalar"


def test_aten_cpu_capability_caps_the_choice():
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    out = subprocess.run(
        [sys.executable, "-c", "from cpg_kernels import _C; print(_C.cpu_isa())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "scalar"
