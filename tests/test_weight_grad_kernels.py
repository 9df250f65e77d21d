"""The one-pass weight gradient (csrc/cuda/gemm_weight_grad.cuh) under the emulator: the dW
GEMM dy^T x on the tensor-core pipeline with the gradient rule in its epilogue, for every
dtype, reduction tails and pipeline fills, split-K, both forms (owner and bits), its dispatch
(csrc/ops/gemm_path.h's weight-gradient rule), the two-pass path it replaces, and fixed
summation order.

The emulator has 4 multiprocessors, so one or two output tiles with a long batch split K."""

from __future__ import annotations

import contextlib

import pytest
import torch

from cpg_kernels import _C, backends, functional, masks
from cpg_kernels.testing import assert_within_bound, oracle, random_owner

FUSED = "gemm_mma.cuh:weight_grad"
SPLIT_SUM = "gemm_split_k.cuh:reduce"
TWO_PASS = "elementwise.cu:grad_epilogue_pass"
DTYPE_NAME = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
TASK = 3


@pytest.fixture
def tf32():
    """TF32 allowed for the test (conftest turns it off again)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    yield


def problem(m, n, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    dy = torch.randn(m, n, generator=g).to(dtype)
    x = torch.randn(m, k, generator=g).to(dtype)
    w = torch.randn(n, k, generator=g).to(dtype)
    owner = random_owner((n, k), generator=g)
    return dy, x, w, owner


def weight_grad(dy, x, w, owner=None, bits=None, mask_grad=True, seed=0):
    """The op under the emulator, with its launch log (the kernel files and names)."""
    if bits is None:
        bits = masks.active_bits(owner, TASK) if owner is not None else None
    with backends.emulated(seed), backends.emulator_launches() as log:
        gw, gm = torch.ops.cpg.masked_linear_weight_grad(
            dy, x, w, bits, owner, TASK, mask_grad and owner is not None
        )
    return gw, gm, [entry.split("<")[0] for entry in log]


def check_training_form(gw, gm, dy, x, w, owner, what, tf32=False):
    """dW within its bound of dy^T x on the task's own weights (zero elsewhere); dm within
    its bound of (dy^T x) * W on older tasks' weights, G rounded to the dtype first."""
    own = (owner == TASK).double()
    older = ((owner > 0) & (owner < TASK)).double()
    ref_w, _ = oracle(lambda dy_, x_: (dy_.t() @ x_) * own, [dy, x])
    assert gw.dtype == w.dtype and gw.shape == w.shape
    assert_within_bound(gw, ref_w, (what, "grad_w"), tf32=tf32)
    ref_m, _ = oracle(lambda dy_, x_, w_: (dy_.t() @ x_) * w_ * older, [dy, x, w])
    assert gm.dtype == torch.float32 and gm.shape == w.shape
    assert_within_bound(gm, ref_m, (what, "grad_m"), dtype=w.dtype, tf32=tf32)
    assert torch.equal(gw[owner != TASK], torch.zeros_like(gw[owner != TASK]))
    assert torch.equal(gm[older == 0], torch.zeros_like(gm[older == 0]))


def planned(dtype, m, n, k, tf32=False, sms=4):
    return _C.plan_linear_weight_grad(DTYPE_NAME[dtype], m, n, k, tf32, sms)


# ------------------------------------------------------------------------ correctness

# (M, N, K): M is the reduction: one row, inside one stage (64 rows of 16-bit, 32 of fp32),
# a stage and a tail, several stages (the 3-deep ring refilled, and past it); N and K one
# 16-byte vector, inside and past a 128-wide tile, not multiples of 128.
SHAPES = [
    (1, 8, 8),
    (5, 24, 40),
    (64, 128, 128),
    (70, 136, 72),
    (200, 48, 264),
    (333, 16, 136),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("m,n,k", SHAPES, ids=[str(s) for s in SHAPES])
def test_training_form_matches_the_oracle(dtype, m, n, k, tf32):
    dy, x, w, owner = problem(m, n, k, dtype)
    gw, gm, log = weight_grad(dy, x, w, owner)
    assert FUSED in log and TWO_PASS not in log, log
    check_training_form(gw, gm, dy, x, w, owner, (m, n, k), tf32=dtype == torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_inference_form_masks_by_the_bits(dtype, tf32):
    dy, x, w, _ = problem(77, 40, 136, dtype, seed=1)
    bits = masks.pack(torch.rand(w.shape, generator=torch.Generator().manual_seed(5)) < 0.5)
    gw, gm, log = weight_grad(dy, x, w, bits=bits)
    assert FUSED in log, log
    active = masks.unpack(bits, tuple(w.shape)).double()
    ref, _ = oracle(lambda dy_, x_: (dy_.t() @ x_) * active, [dy, x])
    assert_within_bound(gw, ref, "inference form", tf32=dtype == torch.float32)
    assert gm.numel() == 0


def test_the_epilogue_applies_the_rule_to_the_rounded_sums():
    """Bit for bit: the training form's dW and dm are the rule of grad_epilogue applied to
    the kernel's own rounded G (which the inference form with every bit set returns)."""
    dy, x, w, owner = problem(150, 72, 96, torch.bfloat16, seed=2)
    G, _, _ = weight_grad(dy, x, w, bits=masks.pack(torch.ones(w.shape, dtype=torch.bool)))
    gw, gm, _ = weight_grad(dy, x, w, owner)
    ref_w, ref_m = torch.ops.cpg.grad_epilogue(G, w, owner, TASK, True)
    assert torch.equal(gw, ref_w) and torch.equal(gm, ref_m)


def test_without_mask_grad_only_the_weight_gradient_is_written():
    dy, x, w, owner = problem(40, 32, 64, torch.bfloat16, seed=3)
    gw, gm, log = weight_grad(dy, x, w, owner, mask_grad=False)
    assert FUSED in log and gm.numel() == 0
    full, _, _ = weight_grad(dy, x, w, owner)
    assert torch.equal(gw, full)


def test_nan_in_a_frozen_weight_does_not_reach_the_gradients():
    """W is read only for the mask gradient of older tasks' weights."""
    dy, x, w, owner = problem(20, 16, 32, torch.bfloat16, seed=4)
    w[owner == 0] = float("nan")
    w[owner == TASK] = float("nan")
    gw, gm, _ = weight_grad(dy, x, w, owner)
    assert not gw.isnan().any() and not gm.isnan().any()


# Few output tiles, a long batch: split-K on the emulator's 4 SMs, the partial sums added in
# split order and the rule applied by the reduction's store.
SPLIT_SHAPES = [(1100, 128, 128, torch.bfloat16), (600, 40, 72, torch.float32)]


@pytest.mark.parametrize("m,n,k,dtype", SPLIT_SHAPES, ids=[str(s[:3]) for s in SPLIT_SHAPES])
def test_split_k_applies_the_rule_after_the_ordered_sum(m, n, k, dtype, tf32):
    [kernel, reduce] = planned(dtype, m, n, k, tf32=True)
    assert kernel["params"]["splits"] > 1 and reduce["kernel"].startswith("split_k::"), kernel
    dy, x, w, owner = problem(m, n, k, dtype, seed=5)
    gw, gm, log = weight_grad(dy, x, w, owner)
    assert log == [FUSED, SPLIT_SUM], log
    check_training_form(gw, gm, dy, x, w, owner, (m, n, k), tf32=dtype == torch.float32)


def test_the_plan_names_the_kernel_and_its_shape():
    [launch] = planned(torch.bfloat16, 256, 4096, 4096, sms=132)
    assert "weight_grad::WeightGradView" in launch["kernel"], launch
    assert launch["grid"] == (32, 32, 1) and launch["params"]["stages"] == 4
    assert launch["params"]["splits"] == 1
    assert planned(torch.float32, 256, 4096, 4096) == []  # exact fp32: no tensor cores
    assert planned(torch.bfloat16, 256, 4096, 4100) == []  # K not in whole vectors


# ------------------------------------------------------------------------ dispatch


def test_rows_from_the_threshold_take_the_two_pass_path():
    rows = _C.weight_grad_library_min_rows("bfloat16", False)
    assert rows > 64
    dy, x, w, owner = problem(rows, 16, 32, torch.bfloat16, seed=6)
    with backends.gemm_path("auto"):
        gw, gm, log = weight_grad(dy, x, w, owner)
        assert TWO_PASS in log and FUSED not in log, log
        below, below_m, log = weight_grad(dy[:-1], x[:-1], w, owner)
        assert FUSED in log and TWO_PASS not in log, log
    check_training_form(gw, gm, dy, x, w, owner, "two-pass")
    check_training_form(below, below_m, dy[:-1], x[:-1], w, owner, "fused")


@pytest.mark.parametrize(
    "dtype,k,allow_tf32",
    [(torch.float32, 64, False), (torch.bfloat16, 36, False), (torch.float32, 38, True)],
    ids=["exact fp32", "bf16 K not in vectors", "tf32 K not in vectors"],
)
def test_what_the_kernel_does_not_take_runs_two_pass(dtype, k, allow_tf32):
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    dy, x, w, owner = problem(30, 24, k, dtype, seed=7)
    gw, gm, log = weight_grad(dy, x, w, owner)
    assert TWO_PASS in log and FUSED not in log, log
    check_training_form(gw, gm, dy, x, w, owner, "two-pass")


def test_unaligned_rows_and_tails_take_the_element_path_with_the_same_bits():
    """The staged epilogue moves 16-column runs in 16-byte accesses where a run is whole and
    aligned, else element by element: owners one byte into their storage (still contiguous)
    and K = 40 (runs of 16, 16 and a tail of 8) give what aligned owners give, bit for bit."""
    dy, x, w, owner = problem(30, 24, 40, torch.bfloat16, seed=12)
    shifted = torch.empty(owner.numel() + 1, dtype=torch.uint8)[1:].view(owner.shape)
    shifted.copy_(owner)
    assert shifted.is_contiguous() and shifted.data_ptr() % 16 != 0
    gw, gm, log = weight_grad(dy, x, w, shifted)
    assert log == [FUSED], log
    ref_w, ref_m, _ = weight_grad(dy, x, w, owner)
    assert torch.equal(gw, ref_w) and torch.equal(gm, ref_m)
    check_training_form(gw, gm, dy, x, w, owner, "odd owner address")


def test_two_pass_chunks_give_the_unchunked_result():
    """The two-pass path's G is computed chunk by chunk of weight rows (never weight-sized):
    on the CPU path, chunks of 2 rows give what one chunk gives, to the bound."""
    dy, x, w, owner = problem(50, 9, 40, torch.float32, seed=8)
    bits = masks.active_bits(owner, TASK)
    whole_w, whole_m = torch.ops.cpg.masked_linear_weight_grad(dy, x, w, bits, owner, TASK, True)
    old = _C.set_decode_chunk_elements(80)
    try:
        gw, gm = torch.ops.cpg.masked_linear_weight_grad(dy, x, w, bits, owner, TASK, True)
    finally:
        _C.set_decode_chunk_elements(old)
    check_training_form(whole_w, whole_m, dy, x, w, owner, "cpu, one chunk")
    check_training_form(gw, gm, dy, x, w, owner, "cpu, 2-row chunks")


def _mm_outputs(fn) -> list[int]:
    """Entries of every aten::mm output while fn runs (the profiler sees ops called from C++)."""
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True
    ) as prof:
        fn()
    sizes = []
    for event in prof.events():
        if event.name == "aten::mm":
            (rows, _), (_, cols) = event.input_shapes[:2]
            sizes.append(rows * cols)
    return sizes


@pytest.mark.parametrize("emulated", [False, True], ids=["cpu two-pass", "emulated fused"])
def test_the_backward_never_holds_a_weight_sized_G(emulated):
    """No aten::mm of the training step writes a weight-sized tensor: the two-pass path's G
    comes in chunks (shrunk here to 2 weight rows), the fused path has none."""
    g = torch.Generator().manual_seed(11)
    w = torch.randn(24, 40, generator=g).bfloat16().requires_grad_()
    owner = random_owner(w.shape, generator=g)
    mask = torch.rand(w.shape, generator=g).requires_grad_()
    x = torch.randn(48, 40, generator=g).bfloat16()

    def step():
        with backends.emulated() if emulated else contextlib.nullcontext():
            functional.cpg_linear(x, w, owner, TASK, mask=mask).sum().backward()

    old = _C.set_decode_chunk_elements(80)
    try:
        sizes = _mm_outputs(step)
    finally:
        _C.set_decode_chunk_elements(old)
    assert all(n < w.numel() for n in sizes), sizes
    if not emulated:
        assert 2 * 40 in sizes, sizes  # G's chunks: 2 weight rows of 40
    assert w.grad is not None and mask.grad is not None


def test_kernel_backends_take_at_most_four_chunks_of_G():
    """On a kernel backend each chunk of the two-pass path costs two ops of host time, so G
    comes in at most 4 chunks there (each still at least decode_chunk_elements() entries)."""
    dy, x, w, owner = problem(30, 24, 40, torch.bfloat16, seed=13)
    bits = masks.active_bits(owner, TASK)

    def run():
        with backends.emulated(), backends.gemm_path("library"):
            return torch.ops.cpg.masked_linear_weight_grad(dy, x, w, bits, owner, TASK, True)

    old = _C.set_decode_chunk_elements(80)  # 2 rows of 40: 12 chunks on the CPU path
    try:
        sizes = _mm_outputs(run)
        gw, gm = run()
    finally:
        _C.set_decode_chunk_elements(old)
    assert sizes == [6 * 40] * 4, sizes
    check_training_form(gw, gm, dy, x, w, owner, "four chunks")


def test_cpg_linear_backward_runs_the_fused_kernel():
    """The training step's weight and mask gradients come from one launch, no grad_epilogue."""
    g = torch.Generator().manual_seed(9)
    w = torch.randn(40, 64, generator=g).bfloat16().requires_grad_()
    owner = random_owner(w.shape, generator=g)
    mask = torch.rand(w.shape, generator=g).requires_grad_()
    x = torch.randn(96, 64, generator=g).bfloat16()
    dy = torch.randn(96, 40, generator=g).bfloat16()
    with backends.emulated(), backends.emulator_launches() as log:
        functional.cpg_linear(x, w, owner, TASK, mask=mask).backward(dy)
    files = [e.split("<")[0] for e in log]
    assert FUSED in files and TWO_PASS not in files, files
    ref_w, ref_m = torch.ops.cpg.masked_linear_weight_grad(
        dy, x, w.detach(), masks.active_bits(owner, TASK, mask=mask.detach()), owner, TASK, True
    )
    assert_within_bound(
        w.grad, oracle(lambda a, b: (a.t() @ b) * (owner == TASK).double(), [dy, x])[0], "dW"
    )
    assert mask.grad.shape == w.shape and torch.count_nonzero(mask.grad) > 0
    assert torch.allclose(mask.grad, ref_m, rtol=2e-2, atol=1e-2)
    assert torch.count_nonzero(ref_w) > 0


# ---------------------------------------------------------------------- checks


def test_bad_arguments_are_refused_with_their_names():
    dy, x, w, owner = problem(6, 8, 16, torch.float32)
    bits = masks.active_bits(owner, TASK)
    op = torch.ops.cpg.masked_linear_weight_grad
    with pytest.raises(ValueError, match="grad_out: expected 6 rows"):
        op(dy[:5], x, w, bits, owner, TASK, True)
    with pytest.raises(ValueError, match="mask_grad: the mask gradient needs owner"):
        op(dy, x, w, bits, None, TASK, True)
    with pytest.raises(ValueError, match="x: expected last dimension 16"):
        op(dy, x[:, :8], w, bits, owner, TASK, True)
    with pytest.raises(ValueError, match="grad_out: expected dtype"):
        op(dy.double(), x, w, bits, owner, TASK, True)
    with pytest.raises(ValueError, match="task"):
        op(dy, x, w, bits, owner, 0, True)


def test_an_empty_batch_gives_zero_gradients():
    _, _, w, owner = problem(1, 8, 16, torch.bfloat16)
    dy, x = torch.zeros(0, 8).bfloat16(), torch.zeros(0, 16).bfloat16()
    gw, gm, log = weight_grad(dy, x, w, owner)
    assert not log and torch.equal(gw, torch.zeros_like(gw)) and not gm.any()


# ---------------------------------------------------------------------- determinism


def test_repeated_calls_and_schedules_give_the_same_bits(tf32):
    for m, n, k, dtype in [(150, 136, 72, torch.bfloat16), *SPLIT_SHAPES]:
        dy, x, w, owner = problem(m, n, k, dtype, seed=10)
        first = weight_grad(dy, x, w, owner, seed=1)[:2]
        again = weight_grad(dy, x, w, owner, seed=1)[:2]
        other = weight_grad(dy, x, w, owner, seed=2)[:2]
        for a, b, c in zip(first, again, other, strict=True):
            assert torch.equal(a, b) and torch.equal(a, c), (m, n, k)
