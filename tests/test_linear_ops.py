"""Masked linear ops against the float64 dense-masking oracle, on every backend.

Every comparison with the oracle holds each element to the rounding bound of
cpg_kernels.testing (its error against u_out |ref| + the fp32 accumulation of its terms).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from cpg_kernels import backends, functional, masks, reference
from cpg_kernels.testing import assert_within_bound, oracle, random_mask, random_owner

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (batch shape, out_features N, in_features K): odd sizes, K % 32 != 0, N = 1, batch 1.
CASES = [
    ((1,), 1, 1),
    ((1,), 7, 33),
    ((5,), 16, 64),
    ((3,), 9, 100),
    ((2, 3), 5, 31),
    ((17,), 33, 70),
    ((40,), 70, 96),
]
SMALL_CASES = CASES[:5]


def cases_for(backend):
    return SMALL_CASES if backend.small else CASES


def make_layer(n, k, dtype, device, task=4, seed=0, tasks=5):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g).to(dtype)
    owner = random_owner((n, k), tasks=tasks, generator=g)
    mask = random_mask((n, k), generator=g)
    bias = torch.randn(n, generator=g).to(dtype)
    return [t.to(device) for t in (w, owner, mask, bias)]


def inference_oracle(x, w, bits, bias=None):
    active = masks.unpack(bits.cpu(), tuple(w.shape))
    ref, _ = oracle(lambda x_, w_, b_: reference.masked_linear(x_, w_, active, b_), [x, w, bias])
    return ref


def check_training(backend, x, w, owner, task, mask, bias, gy, what, threshold=None):
    """cpg_linear forward and every gradient against the oracle, and the frozen-weight rule."""
    dtype = x.dtype
    kw = {} if threshold is None else {"threshold": threshold}
    # The ops compare the float32 mask with the threshold as a float32; the oracle runs in
    # float64, so it gets the threshold rounded to float32, which decides alike.
    ref_kw = {} if threshold is None else {"threshold": float(torch.tensor(threshold).float())}
    leaves = [
        None if t is None else t.detach().clone().requires_grad_() for t in (x, w, mask, bias)
    ]
    y = backend.run(
        functional.cpg_linear,
        leaves[0],
        leaves[1],
        owner,
        task,
        mask=leaves[2],
        bias=leaves[3],
        **kw,
    )
    backend.run(y.backward, gy)
    ref, (gx, gw, gb, gm) = oracle(
        lambda x_, w_, b_, m_: reference.linear(
            x_, w_, owner.cpu(), task, mask=m_, bias=b_, **ref_kw
        ),
        [x, w, bias],
        [mask],
        grad_output=gy,
    )
    assert y.shape == ref.value.shape and y.dtype == dtype
    assert_within_bound(y, ref, ("y", what))
    assert_within_bound(leaves[0].grad, gx, ("dx", what))
    assert_within_bound(leaves[1].grad, gw, ("dW", what))
    if bias is not None:
        assert_within_bound(leaves[3].grad, gb, ("dbias", what))
    if mask is not None:
        assert leaves[2].grad.dtype == torch.float32
        assert_within_bound(leaves[2].grad, gm, ("dmask", what), dtype=dtype)
    # The frozen-weight rule, exactly: no gradient where another task owns.
    own = owner.cpu() == task
    assert (leaves[1].grad.cpu()[~own] == 0).all()
    if mask is not None:
        assert (leaves[2].grad.cpu()[~((owner.cpu() > 0) & (owner.cpu() < task))] == 0).all()
    return y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_inference_forward(backend, dtype, with_bias):
    for batch, n, k in cases_for(backend):
        w, owner, mask, bias = make_layer(n, k, dtype, backend.device)
        bits = masks.active_bits(owner.cpu(), 4, mask=mask.cpu()).to(backend.device)
        x = torch.randn(*batch, k).to(dtype).to(backend.device)
        b = bias if with_bias else None
        y = backend.run(functional.masked_linear, x, w, bits, b)
        assert y.shape == (*batch, n) and y.dtype == dtype
        assert_within_bound(y, inference_oracle(x, w, bits, b), (batch, n, k))


@pytest.mark.parametrize("dtype", DTYPES)
def test_training_forward_and_backward(backend, dtype):
    task = 4
    for batch, n, k in cases_for(backend):
        w, owner, mask, bias = make_layer(n, k, dtype, backend.device, task)
        x = torch.randn(*batch, k).to(dtype).to(backend.device)
        gy = torch.randn(*batch, n).to(dtype).to(backend.device)
        check_training(backend, x, w, owner, task, mask, bias, gy, (batch, n, k))


@pytest.mark.parametrize("dtype", DTYPES)
def test_pick_all_forward_and_backward(backend, dtype):
    """mask=None picks every older weight (PackNet, PAE): forward and gradients."""
    cases = (
        [(3, 9, 40), (20, 24, 64)] if backend.small else [(3, 9, 40), (20, 24, 64), (40, 33, 100)]
    )
    for m, n, k in cases:
        w, owner, _, bias = make_layer(n, k, dtype, backend.device)
        x = torch.randn(m, k).to(dtype).to(backend.device)
        gy = torch.randn(m, n).to(dtype).to(backend.device)
        check_training(backend, x, w, owner, 3, None, bias, gy, (m, n, k))


@pytest.mark.parametrize("task", [128, 200, 255])
def test_owner_and_task_ids_past_127(backend, task):
    """uint8 owners and task ids >= 128 (a signed char would turn them negative)."""
    n, k, m = (9, 40, 20) if backend.small else (33, 70, 20)
    g = torch.Generator().manual_seed(task)
    ids = torch.tensor([0, 1, 127, 128, 129, 200, 254, 255], dtype=torch.uint8)
    owner = ids[torch.randint(0, len(ids), (n, k), generator=g)].to(backend.device)
    w = torch.randn(n, k, generator=g).to(backend.device)
    mask = random_mask((n, k), generator=g).to(backend.device)
    x = torch.randn(m, k, generator=g).to(backend.device)
    gy = torch.randn(m, n, generator=g).to(backend.device)
    check_training(backend, x, w, owner, task, mask, None, gy, task)
    bits = backend.run(masks.active_bits, owner, task, mask=mask)
    expect = reference.active_mask(owner.cpu(), task, mask.cpu())
    assert torch.equal(masks.unpack(bits.cpu(), (n, k)), expect)


def threshold_mask(shape, threshold, generator):
    """Picking-mask entries exactly at the threshold, one float step either side, and far."""
    at = torch.tensor(threshold, dtype=torch.float32)
    choices = torch.stack(
        [
            at,
            torch.nextafter(at, torch.tensor(1.0)),
            torch.nextafter(at, torch.tensor(0.0)),
            at * 0.1,
            at * 10,
        ]
    )
    return choices[torch.randint(0, 5, shape, generator=generator)]


@pytest.mark.parametrize("threshold", [0.3, 2.0**-7])
def test_threshold_other_than_the_default(backend, threshold):
    """``mask > threshold`` picks, for any threshold: entries equal to it are not picked."""
    n, k, m = 9, 40, 5
    g = torch.Generator().manual_seed(1)
    w, owner, _, bias = make_layer(n, k, torch.float32, backend.device)
    mask = threshold_mask((n, k), threshold, g).to(backend.device)
    x = torch.randn(m, k, generator=g).to(backend.device)
    gy = torch.randn(m, n, generator=g).to(backend.device)
    y = check_training(backend, x, w, owner, 4, mask, bias, gy, threshold, threshold=threshold)
    # The default threshold picks differently here, so the result must differ from it.
    y_default = backend.run(functional.cpg_linear, x, w, owner, 4, mask=mask, bias=bias)
    assert not torch.equal(y, y_default)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tasks,batch", [(1, 2), (3, 2), (2, 20), (2, 70)])
def test_multitask_matches_separate_passes(backend, dtype, tasks, batch):
    """16-bit: the weight stream up to 64 rows a task, then the tiled kernels with the tasks on
    gridDim.z; fp32 (TF32 off): small_batch up to 16 rows a task, then the tiled kernels."""
    n, k = (9, 40) if backend.small else (33, 100)
    if batch > 16:
        n, k = 24, 64  # whole 16-byte vectors: the tensor-core kernel for 16-bit
    w, _, _, bias = make_layer(n, k, dtype, backend.device)
    bits = torch.stack([masks.pack(torch.rand(n, k) < 0.5) for _ in range(tasks)])
    bits = bits.to(backend.device)
    x = torch.randn(tasks, batch, k).to(dtype).to(backend.device)
    for b in (bias, None):
        with backends.emulator_launches() as launches:
            y = backend.run(functional.masked_linear_multitask, x, w, bits, b)
        assert y.shape == (tasks, batch, n)
        for t in range(tasks):
            assert_within_bound(y[t], inference_oracle(x[t], w, bits[t], b), (t, b is None))
        if backend.name == "emu":
            files = {e.split(":")[0] for e in launches}
            if dtype != torch.float32 and batch <= 64:
                assert files == {"gemm_stream.cuh"}, launches
            elif batch > 16:
                tiled = "gemm_simt.cuh" if dtype == torch.float32 else "gemm_mma.cuh"
                assert files == {tiled}, launches
                assert len(launches) == 1, launches  # one launch for every task
            else:
                assert files == {"gemm_small_batch.cuh"}, launches


def multitask_backward(backend, dtype):
    """Checks y, dx and dbias of the multi-task op against each task's oracle; returns dW
    and its oracle."""
    tasks, m, n, k = 2, 5, 9, 40
    w, _, _, bias = make_layer(n, k, dtype, backend.device)
    bits = torch.stack([masks.pack(torch.rand(n, k) < 0.5) for _ in range(tasks)])
    bits = bits.to(backend.device)
    x = torch.randn(tasks, m, k).to(dtype).to(backend.device)
    gy = torch.randn(tasks, m, n).to(dtype).to(backend.device)
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, bias)]
    y = backend.run(functional.masked_linear_multitask, *leaves[:2], bits, leaves[2])
    backend.run(y.backward, gy)
    actives = [masks.unpack(bits[t].cpu(), (n, k)) for t in range(tasks)]

    def all_tasks(x_, w_, b_):
        return torch.stack(
            [reference.masked_linear(x_[t], w_, actives[t], b_) for t in range(tasks)]
        )

    ref, (gx, gw, gb) = oracle(all_tasks, [x, w, bias], grad_output=gy)
    assert_within_bound(y, ref, "y")
    assert_within_bound(leaves[0].grad, gx, "dx")
    assert_within_bound(leaves[2].grad, gb, "dbias")
    return leaves[1].grad, gw


@pytest.mark.parametrize("dtype", DTYPES)
def test_multitask_backward(backend, dtype):
    """The gradients of the multi-task op, in every dtype, against the oracle of each task."""
    multitask_backward(backend, dtype)


# dW sums the tasks' weight gradients in fp32 and rounds once (each rounded to 16 bits before
# a 16-bit sum erred 114x the bound in bf16 on this case, where tasks' contributions cancel).
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_multitask_weight_gradient(backend, dtype):
    dw, ref = multitask_backward(backend, dtype)
    # Each task's dW comes from one 16-bit GEMM (rounded to the dtype) and the tasks are summed
    # in fp32: rounded partial sums, which the bound allows for.
    assert_within_bound(dw, ref, "dW", partials=True)


def test_multitask_gradients_match_per_task_ops():
    n, k, tasks = 6, 37, 3
    w = torch.randn(n, k, dtype=torch.float64, requires_grad=True)
    x = torch.randn(tasks, 4, k, dtype=torch.float64, requires_grad=True)
    bits = torch.stack([masks.pack(torch.rand(n, k) < 0.5) for _ in range(tasks)])
    assert torch.autograd.gradcheck(
        lambda x_, w_: functional.masked_linear_multitask(x_, w_, bits), (x, w)
    )


def without_frozen_weights(owner, task):
    """Owners where no active weight is frozen, so the CPG gradient is the true derivative.

    Older tasks' picked weights are active yet receive no gradient by design; that rule is
    checked exactly elsewhere. Here they are handed to a later (inactive) task instead.
    """
    return torch.where((owner > 0) & (owner < task), torch.full_like(owner, task + 1), owner)


def gradcheck_functions(backend, dtype):
    n, k, task = 5, 37, 3
    w, owner, mask, bias = make_layer(n, k, dtype, backend.device, task)
    owner = without_frozen_weights(owner, task)
    x = torch.randn(4, k, dtype=dtype, device=backend.device, requires_grad=True)
    w.requires_grad_()
    bias.requires_grad_()
    bits = masks.active_bits(owner, task, mask=mask)

    def training(x_, w_, b_):
        return functional.cpg_linear(x_, w_, owner, task, mask=mask, bias=b_)

    def inference(x_, w_, b_):
        return functional.masked_linear(x_, w_, bits, b_)

    return (training, inference), (x, w, bias)


def test_gradcheck_float64(backend):
    """float64 takes the chunked path on every backend but cuda (no fused float64 kernel)."""
    functions, inputs = gradcheck_functions(backend, torch.float64)
    with backend.context():
        for fn in functions:
            assert torch.autograd.gradcheck(fn, inputs)


def test_gradcheck_float32_fused_kernels(backend):
    """The fused kernels take no float64, so their derivatives are checked in float32: the ops
    are linear in each input, and central differences of a linear map are exact up to
    rounding (about u * |y| / eps), far inside these tolerances."""
    functions, inputs = gradcheck_functions(backend, torch.float32)
    with backend.context(), backends.emulator_launches() as launches, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not a double precision")
        for fn in functions:
            assert torch.autograd.gradcheck(
                fn, inputs, eps=1e-2, atol=1e-3, rtol=1e-3, fast_mode=True
            )
    if backend.name == "emu":
        assert any(e.startswith("gemm_small_batch.cuh") for e in launches), launches
        assert any(e.startswith("gemm_small_batch_grad.cuh") for e in launches), launches


# Second derivatives: the backward's own ops (masked_*_grad_input, the epilogue) have no
# derivative, so differentiating a gradient again is a clear error on every backend, never a
# silently wrong result (it once was, on the CPU path).
def test_double_backward_is_a_clear_error(backend):
    """First-order gradients under create_graph are right; a second order names the op."""
    n, k, task = 5, 37, 3
    w, owner, mask, bias = make_layer(n, k, torch.float64, backend.device, task)
    x = torch.randn(4, k, dtype=torch.float64, device=backend.device, requires_grad=True)
    w.requires_grad_()
    bits = masks.active_bits(owner, task, mask=mask)
    active = masks.unpack(bits.cpu(), (n, k))
    x_ref, w_ref = x.detach().cpu().requires_grad_(), w.detach().cpu().requires_grad_()
    ref = torch.autograd.grad((reference.masked_linear(x_ref, w_ref, active) ** 2).sum(), x_ref)
    with backend.context():
        y = functional.masked_linear(x, w, bits)
        (dx,) = torch.autograd.grad((y**2).sum(), x, create_graph=True)
        torch.testing.assert_close(dx.cpu(), ref[0])
        with pytest.raises(RuntimeError, match="cpg::masked_linear: double backward is not"):
            torch.autograd.grad(dx.pow(2).sum(), (x, w))


def test_multi_tile_decode_path():
    """The chunked path with tiles far smaller than the weight gives the same result."""
    n, k = 23, 45
    w, owner, mask, bias = make_layer(n, k, torch.float64, "cpu")
    x = torch.randn(6, k, dtype=torch.float64, requires_grad=True)
    ref = functional.cpg_linear(x, w, owner, 4, mask=mask, bias=bias)
    (ref_dx,) = torch.autograd.grad(ref.sum(), x)
    with backends.decode_tile_elements(50):  # 1 row per tile
        y = functional.cpg_linear(x, w, owner, 4, mask=mask, bias=bias)
        (dx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(dx, ref_dx)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_zero_sizes(backend, dtype):
    """Empty reductions and empty outputs: K = 0 gives y = bias (or 0), N = 0 gives dx = 0."""
    dev = backend.device
    w0, bits0 = (
        torch.empty(6, 0, dtype=dtype, device=dev),
        torch.empty(6, 0, dtype=torch.int32, device=dev),
    )
    bias = torch.randn(6).to(dtype).to(dev)
    x0 = torch.empty(2, 3, 0, dtype=dtype, device=dev)
    y = backend.run(functional.masked_linear, x0, w0, bits0, bias)
    assert y.shape == (2, 3, 6) and torch.equal(y.cpu(), bias.cpu().expand(2, 3, 6))
    y = backend.run(functional.masked_linear, x0, w0, bits0)
    assert y.shape == (2, 3, 6) and not y.cpu().any()
    y = backend.run(functional.masked_linear_multitask, x0, w0, torch.stack([bits0] * 2), bias)
    assert torch.equal(y.cpu(), bias.cpu().expand(2, 3, 6))
    dx = backend.run(
        torch.ops.cpg.masked_linear_grad_input,
        torch.empty(4, 6, dtype=dtype, device=dev),
        w0,
        bits0,
    )
    assert dx.shape == (4, 0)
    # N = 0: an empty output, and an input gradient of zeros.
    wn, bitsn = (
        torch.empty(0, 40, dtype=dtype, device=dev),
        torch.empty(0, 2, dtype=torch.int32, device=dev),
    )
    x = torch.randn(3, 40).to(dtype).to(dev)
    assert backend.run(functional.masked_linear, x, wn, bitsn).shape == (3, 0)
    dx = backend.run(
        torch.ops.cpg.masked_linear_grad_input,
        torch.empty(2, 3, 0, dtype=dtype, device=dev),
        wn,
        bitsn,
    )
    assert dx.shape == (2, 3, 40) and not dx.cpu().any()
    # M = 0: empty batches.
    w, owner, mask, _ = make_layer(6, 40, dtype, dev)
    bits = masks.active_bits(owner, 4, mask=mask)
    assert backend.run(functional.masked_linear, x[:0], w, bits).shape == (0, 6)
    assert backend.run(torch.ops.cpg.masked_linear_grad_input, x[:0, :6], w, bits).shape == (0, 40)
    # And through autograd: a K = 0 layer's gradients are empty or zero.
    xg = x0.detach().requires_grad_()
    bg = bias.detach().requires_grad_()
    y = backend.run(functional.cpg_linear, xg, w0, owner[:, :0], 4, bias=bg)
    backend.run(y.sum().backward)
    assert xg.grad.shape == x0.shape
    assert torch.equal(bg.grad.cpu(), torch.full((6,), 6.0, dtype=dtype))


def test_linear_bad_arguments():
    w, owner, mask, bias = make_layer(6, 40, torch.float32, "cpu")
    bits = masks.active_bits(owner, 2)
    x = torch.randn(3, 40)
    with pytest.raises(ValueError, match="x: expected last dimension 40"):
        functional.masked_linear(torch.randn(3, 41), w, bits)
    with pytest.raises(ValueError, match=r"bits: expected shape \[6, 2\]"):
        functional.masked_linear(x, w, bits[:, :1])
    with pytest.raises(ValueError, match="bits: expected dtype int32"):
        functional.masked_linear(x, w, bits.long())
    with pytest.raises(ValueError, match="x: expected dtype"):
        functional.masked_linear(x.double(), w, bits)
    with pytest.raises(ValueError, match=r"bias: expected shape \[6\]"):
        functional.masked_linear(x, w, bits, torch.zeros(5))
    with pytest.raises(ValueError, match="owner: expected shape"):
        functional.cpg_linear(x, w, owner[:, :39], 2)
    with pytest.raises(ValueError, match=r"task: expected an id in 1\.\.255"):
        functional.cpg_linear(x, w, owner, 256)
    with pytest.raises(ValueError, match="mask: expected shape"):
        functional.cpg_linear(x, w, owner, 2, mask=mask[:, :3])
    with pytest.raises(ValueError, match="x: expected last dimension 0"):
        functional.masked_linear(x, w[:, :0], bits[:, :0])
    if torch.cuda.is_available() and backends.cuda_built():
        with pytest.raises(ValueError, match="expected a tensor on"):
            functional.masked_linear(x, w.cuda(), bits.cuda())


def test_tf32_switch_is_respected(backend):
    """With TF32 allowed, fp32 runs on TF32 tensor cores where the kernels can (its operands
    rounded to 10 mantissa bits: other bits than exact fp32, within the TF32 bound); without,
    it is exact fp32 (the other tests' bound)."""
    n, k = (16, 64) if backend.small else (70, 300)
    w, owner, mask, bias = make_layer(n, k, torch.float32, backend.device)
    bits = masks.active_bits(owner, 4, mask=mask)
    x = torch.randn(40, k, device=backend.device)
    ref = inference_oracle(x, w, bits, bias)
    exact = backend.run(functional.masked_linear, x, w, bits, bias)
    assert_within_bound(exact, ref, "fp32")
    torch.backends.cuda.matmul.allow_tf32 = True
    with backends.emulator_launches() as launches:
        y = backend.run(functional.masked_linear, x, w, bits, bias)
    assert_within_bound(y, ref, "tf32", tf32=True)
    if backend.name != "cpu":  # the CPU path has no TF32
        assert not torch.equal(y, exact), "allow_tf32 did not reach the kernel"
    if backend.name == "emu":  # at 40 rows, fp32 as TF32 takes the weight stream
        assert [e.split(":")[0] for e in launches] == ["gemm_stream.cuh"], launches


# One case per kernel of the masked-GEMM dispatcher (csrc/cuda/masked_gemm.cu), small enough
# for the emulator: (M, N, K, dtype, tf32, path). At M <= 16 (fp32 without TF32) the path
# names the forward's kernel; the input gradient takes small_batch_grad there. 16-bit forwards
# (and fp32 as TF32) of up to 64 rows in whole 16-byte vectors take the weight stream, and
# their input gradients the streamed one where dy's rows (N) are whole vectors too, so the
# tiled tensor-core cases have 65 rows or more. The input gradient reduces over N, so the
# tensor-core cases have N in whole 16-byte vectors too.
DISPATCH_CASES = [
    (3, 20, 70, torch.float32, False, "small_batch"),
    (16, 20, 64, torch.float32, False, "small_batch at its M limit"),
    (16, 9, 64, torch.bfloat16, False, "stream bf16 (grad_input: small_batch_grad, N = 9)"),
    (33, 24, 64, torch.float16, False, "stream fp16 (grad_input: stream_grad)"),
    (33, 20, 64, torch.float32, True, "stream tf32 (grad_input: stream_grad)"),
    (65, 24, 64, torch.bfloat16, False, "mma bf16"),
    (65, 24, 64, torch.float16, False, "mma fp16"),
    (65, 20, 64, torch.float32, True, "mma tf32"),
    (33, 20, 64, torch.float32, False, "simt: fp32 without tf32"),
    (33, 20, 70, torch.bfloat16, False, "simt: rows not whole 16-byte vectors"),
    (130, 136, 96, torch.bfloat16, False, "mma: several tiles, partial edges"),
    # One tile on the emulator's 4 SMs, 16 to 32 reduction stages: split-K over 2 or 4 splits
    # (K = 1032: 17 stages, the last one partial, in splits of 9 and 8).
    (65, 24, 1032, torch.bfloat16, False, "mma split-K forward"),
    (65, 1024, 24, torch.bfloat16, False, "mma split-K grad_input"),
    (65, 20, 1024, torch.float32, True, "mma split-K forward, tf32, 4 splits"),
    (33, 20, 1000, torch.float32, False, "simt split-K forward, 3 splits"),
]


@pytest.mark.parametrize(
    "m,n,k,dtype,tf32,path", DISPATCH_CASES, ids=[c[-1] for c in DISPATCH_CASES]
)
def test_every_gemm_kernel_forward_and_grad_input(backend, m, n, k, dtype, tf32, path):
    w, owner, mask, bias = make_layer(n, k, dtype, backend.device)
    bits = masks.active_bits(owner, 4, mask=mask)
    x = torch.randn(m, k).to(dtype).to(backend.device)
    gy = torch.randn(m, n).to(dtype).to(backend.device)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    with backends.emulator_launches() as forward_launches:
        y = backend.run(functional.masked_linear, x, w, bits, bias)
    with backends.emulator_launches() as grad_input_launches:
        dx = backend.run(torch.ops.cpg.masked_linear_grad_input, gy, w, bits)
    # Without a bias: the kernels' other epilogue (split-K's reduction included).
    y_plain = backend.run(functional.masked_linear, x, w, bits)
    active = masks.unpack(bits.cpu(), (n, k))
    ref_dx, _ = oracle(lambda g_, w_: g_ @ (w_ * active), [gy, w])
    assert_within_bound(y, inference_oracle(x, w, bits, bias), "y", tf32=tf32)
    assert_within_bound(y_plain, inference_oracle(x, w, bits), "y without bias", tf32=tf32)
    assert_within_bound(dx, ref_dx, "dx", tf32=tf32)
    if backend.name == "emu":  # the kernels launched are the path's
        kernel = path.split(" ")[0].rstrip(":")
        forward_file, grad_input_file = {
            "small_batch": ("gemm_small_batch.cuh", "gemm_small_batch_grad.cuh"),
            "stream": (
                "gemm_stream.cuh",
                "gemm_stream_grad.cuh"
                if n * x.element_size() % 16 == 0
                else "gemm_small_batch_grad.cuh",
            ),
            "mma": ("gemm_mma.cuh", "gemm_mma.cuh"),
            "simt": ("gemm_simt.cuh", "gemm_simt.cuh"),
        }[kernel]
        # The weight stream takes every forward of up to 64 tensor-core rows of whole vectors.
        if m <= 64 and (dtype != torch.float32 or tf32) and k * x.element_size() % 16 == 0:
            forward_file = "gemm_stream.cuh"
        # Split-K adds the launch of the kernel that adds up the splits, and only then.
        for direction, launches, file in (
            ("forward", forward_launches, forward_file),
            ("grad_input", grad_input_launches, grad_input_file),
        ):
            split = "split-K" in path and direction in path
            reduce = ["gemm_split_k.cuh:reduce"] if split else []
            assert [e for e in launches if not e.startswith(file + ":")] == reduce, launches
            assert any(e.startswith(file + ":") for e in launches), launches


# small_batch_grad: the input gradient at M <= 16. Under the emulator (4 SMs), N = 2100 splits
# the reduction over N across blocks for every M and dtype here (a split takes at least
# max(32, 128 M / itemsize) rows); N = 9 is one block per column tile.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 5, 16])
def test_small_batch_grad_input(backend, dtype, m):
    for n in (9, 2100):
        for k in (1, 31, 70, 96):
            w, owner, mask, _ = make_layer(n, k, dtype, backend.device)
            bits = masks.active_bits(owner, 4, mask=mask)
            gy = torch.randn(m, n).to(dtype).to(backend.device)
            dx = backend.run(torch.ops.cpg.masked_linear_grad_input, gy, w, bits)
            active = masks.unpack(bits.cpu(), (n, k))
            ref, _ = oracle(lambda g_, w_, a=active: g_ @ (w_ * a), [gy, w])
            assert dx.shape == (m, k) and dx.dtype == dtype
            assert_within_bound(dx, ref, (n, k))


# Column layouts of small_batch_grad, as the emulator (4 SMs) shapes them: (M, N, K, dtype,
# offset of W in its storage, in elements).
GRAD_LAYOUT_CASES = [
    (3, 40, 4000, torch.float32, 0, "two column tiles per block, the last one past K"),
    (2, 3, 16500, torch.float32, 0, "a tile per warp: K alone fills the device"),
    (5, 300, 96, torch.bfloat16, 3, "W rows not 16-byte aligned"),
    (1, 300, 64, torch.float32, 2, "W not 16-byte aligned, rows whole vectors"),
]


@pytest.mark.parametrize(
    "m,n,k,dtype,offset,layout", GRAD_LAYOUT_CASES, ids=[c[-1] for c in GRAD_LAYOUT_CASES]
)
def test_small_batch_grad_input_layouts(backend, m, n, k, dtype, offset, layout):
    w = torch.randn(n * k + offset).to(dtype)[offset:].view(n, k).to(backend.device)
    bits = masks.pack(torch.rand(n, k) < 0.5).to(backend.device)
    gy = torch.randn(m, n).to(dtype).to(backend.device)
    dx = backend.run(torch.ops.cpg.masked_linear_grad_input, gy, w, bits)
    active = masks.unpack(bits.cpu(), (n, k))
    ref, _ = oracle(lambda g_, w_: g_ @ (w_ * active), [gy, w])
    assert_within_bound(dx, ref, layout)


@pytest.mark.cuda
def test_split_k_workspace_counts_in_torch_memory_stats():
    """Kernel workspaces come from torch's caching allocator (csrc/ops/cuda_stream.cpp): a
    split-K launch's fp32 partial sums show in max_memory_allocated, like any tensor."""
    if not (backends.cuda_built() and torch.cuda.is_available()):
        pytest.skip("needs a CUDA device and the CUDA kernels")
    m, n, k = 128, 4096, 4096  # 32 output tiles of 128 x 128, 64 reduction stages (bf16)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    splits = min(sms // 32, 64 // 8, 16)
    if splits < 2:
        pytest.skip(f"{sms} multiprocessors: no split-K for 32 tiles")
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    bits = masks.pack(torch.rand(n, k, device="cuda") < 0.5)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    y = functional.masked_linear(x, w, bits)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    assert peak >= y.numel() * y.element_size() + splits * m * n * 4
