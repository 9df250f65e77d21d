"""Masked linear ops against the float64 dense-masking oracle, on every backend."""
from __future__ import annotations

import pytest
import torch

from cpg_kernels import backends, functional, masks, reference
from cpg_kernels.testing import TOLERANCE, random_mask, random_owner, rel_error

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (batch shape, out_features N, in_features K): odd sizes, K % 32 != 0, N = 1, batch 1.
CASES = [((1,), 1, 1), ((1,), 7, 33), ((5,), 16, 64), ((3,), 9, 100), ((2, 3), 5, 31),
         ((17,), 33, 70), ((40,), 70, 96)]
SMALL_CASES = CASES[:5]


def cases_for(backend):
    return SMALL_CASES if backend.small else CASES


def make_layer(n, k, dtype, device, task=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g).to(dtype)
    owner = random_owner((n, k), tasks=5, generator=g)
    mask = random_mask((n, k), generator=g)
    bias = torch.randn(n, generator=g).to(dtype)
    return [t.to(device) for t in (w, owner, mask, bias)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_inference_forward(backend, dtype, with_bias):
    for batch, n, k in cases_for(backend):
        w, owner, mask, bias = make_layer(n, k, dtype, backend.device)
        bits = masks.active_bits(owner.cpu(), 4, mask=mask.cpu()).to(backend.device)
        x = torch.randn(*batch, k).to(dtype).to(backend.device)
        b = bias if with_bias else None
        y = backend.run(functional.masked_linear, x, w, bits, b)
        active = masks.unpack(bits.cpu(), (n, k))
        ref = reference.masked_linear(x.cpu().double(), w.cpu().double(), active,
                                      None if b is None else b.cpu().double())
        assert y.shape == (*batch, n) and y.dtype == dtype
        assert rel_error(y, ref) < TOLERANCE[dtype], (batch, n, k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_training_forward_and_backward(backend, dtype):
    task = 4
    for batch, n, k in cases_for(backend):
        w, owner, mask, bias = make_layer(n, k, dtype, backend.device, task)
        x = torch.randn(*batch, k).to(dtype).to(backend.device)
        gy = torch.randn(*batch, n).to(dtype).to(backend.device)
        leaves = [t.detach().clone().requires_grad_() for t in (x, w, mask, bias)]
        y = backend.run(functional.cpg_linear, leaves[0], leaves[1], owner, task,
                        mask=leaves[2], bias=leaves[3])
        backend.run(y.backward, gy)

        ref_leaves = [t.detach().cpu().double().requires_grad_() for t in (x, w, mask, bias)]
        ref_y = reference.linear(ref_leaves[0], ref_leaves[1], owner.cpu(), task,
                                 mask=ref_leaves[2], bias=ref_leaves[3])
        ref_y.backward(gy.cpu().double())
        tol = TOLERANCE[dtype]
        assert rel_error(y, ref_y) < tol
        for name, ours, ref in zip(["x", "weight", "mask", "bias"], leaves, ref_leaves):
            assert ours.grad is not None, name
            assert rel_error(ours.grad, ref.grad) < 2 * tol, (name, batch, n, k)
        # The frozen-weight rule, exactly: no gradient where another task owns.
        assert (leaves[1].grad.cpu()[owner.cpu() != task] == 0).all()
        assert (leaves[2].grad.cpu()[~((owner.cpu() > 0) & (owner.cpu() < task))] == 0).all()


def test_pick_all_when_mask_is_absent(backend):
    w, owner, _, _ = make_layer(9, 40, torch.float32, backend.device)
    x = torch.randn(3, 40, device=backend.device)
    y = backend.run(functional.cpg_linear, x, w, owner, 3)
    ref = reference.linear(x.cpu().double(), w.cpu().double(), owner.cpu(), 3)
    assert rel_error(y, ref) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tasks", [1, 3])
def test_multitask_matches_separate_passes(backend, dtype, tasks):
    n, k, batch = (9, 40, 2) if backend.small else (33, 100, 5)
    w, _, _, bias = make_layer(n, k, dtype, backend.device)
    bits = torch.stack([masks.pack(torch.rand(n, k) < 0.5) for _ in range(tasks)]).to(backend.device)
    x = torch.randn(tasks, batch, k).to(dtype).to(backend.device)
    y = backend.run(functional.masked_linear_multitask, x, w, bits, bias)
    assert y.shape == (tasks, batch, n)
    for t in range(tasks):
        active = masks.unpack(bits[t].cpu(), (n, k))
        ref = reference.masked_linear(x[t].cpu().double(), w.cpu().double(), active,
                                      bias.cpu().double())
        assert rel_error(y[t], ref) < TOLERANCE[dtype]


def test_multitask_gradients_match_per_task_ops():
    n, k, tasks = 6, 37, 3
    w = torch.randn(n, k, dtype=torch.float64, requires_grad=True)
    x = torch.randn(tasks, 4, k, dtype=torch.float64, requires_grad=True)
    bits = torch.stack([masks.pack(torch.rand(n, k) < 0.5) for _ in range(tasks)])
    assert torch.autograd.gradcheck(
        lambda x_, w_: functional.masked_linear_multitask(x_, w_, bits), (x, w))


def without_frozen_weights(owner, task):
    """Owners where no active weight is frozen, so the CPG gradient is the true derivative.

    Older tasks' picked weights are active yet receive no gradient by design; that rule is
    checked exactly elsewhere. Here they are handed to a later (inactive) task instead.
    """
    return torch.where((owner > 0) & (owner < task), torch.full_like(owner, task + 1), owner)


def test_gradcheck_float64(backend):
    n, k, task = 5, 37, 3
    w, owner, mask, bias = make_layer(n, k, torch.float64, backend.device, task)
    owner = without_frozen_weights(owner, task)
    x = torch.randn(4, k, dtype=torch.float64, device=backend.device, requires_grad=True)
    w.requires_grad_()
    bias.requires_grad_()

    def training(x_, w_, b_):
        return functional.cpg_linear(x_, w_, owner, task, mask=mask, bias=b_)

    bits = masks.active_bits(owner, task, mask=mask)

    def inference(x_, w_, b_):
        return functional.masked_linear(x_, w_, bits, b_)

    with backend.context():
        assert torch.autograd.gradcheck(training, (x, w, bias))
        assert torch.autograd.gradcheck(inference, (x, w, bias))


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
    if torch.cuda.is_available() and backends.cuda_built():
        with pytest.raises(ValueError, match="expected a tensor on"):
            functional.masked_linear(x, w.cuda(), bits.cuda())


def test_tf32_switch_is_respected(backend):
    """With TF32 allowed, fp32 may use TF32 tensor cores (error near 1e-3 of the norm);
    without, it must be exact fp32 (checked by the other tests)."""
    n, k = (16, 64) if backend.small else (70, 300)
    w, owner, mask, bias = make_layer(n, k, torch.float32, backend.device)
    bits = masks.active_bits(owner, 4, mask=mask)
    x = torch.randn(40, k, device=backend.device)
    ref = reference.masked_linear(x.cpu().double(), w.cpu().double(),
                                  masks.unpack(bits.cpu(), (n, k)), bias.cpu().double())
    torch.backends.cuda.matmul.allow_tf32 = True
    y = backend.run(functional.masked_linear, x, w, bits, bias)
    assert rel_error(y, ref) < 2e-3


# One case per kernel of the masked-GEMM dispatcher (csrc/cuda/masked_gemm.cu), small enough
# for the emulator: (M, N, K, dtype, tf32, path). At M <= 16 the path names the forward's
# kernel; the input gradient takes small_batch_grad there. The input gradient reduces over N,
# so the tensor-core cases have N in whole 16-byte vectors too.
DISPATCH_CASES = [
    (3, 20, 70, torch.float32, False, "small_batch"),
    (16, 9, 64, torch.bfloat16, False, "small_batch at its M limit"),
    (33, 24, 64, torch.bfloat16, False, "mma bf16"),
    (33, 24, 64, torch.float16, False, "mma fp16"),
    (33, 20, 64, torch.float32, True, "mma tf32"),
    (33, 20, 64, torch.float32, False, "simt: fp32 without tf32"),
    (33, 20, 70, torch.bfloat16, False, "simt: rows not whole 16-byte vectors"),
    (130, 136, 96, torch.bfloat16, False, "mma: several tiles, partial edges"),
    # One tile on the emulator's 4 SMs, 16 to 32 reduction stages: split-K over 2 or 4 splits
    # (K = 1032: 17 stages, the last one partial, in splits of 9 and 8).
    (33, 24, 1032, torch.bfloat16, False, "mma split-K forward"),
    (33, 1024, 24, torch.bfloat16, False, "mma split-K grad_input"),
    (40, 20, 1024, torch.float32, True, "mma split-K forward, tf32, 4 splits"),
    (33, 20, 1000, torch.float32, False, "simt split-K forward, 3 splits"),
]


@pytest.mark.parametrize("m,n,k,dtype,tf32,path", DISPATCH_CASES,
                         ids=[c[-1] for c in DISPATCH_CASES])
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
    w_eff = w.cpu().double() * masks.unpack(bits.cpu(), (n, k))
    tol = 2e-3 if tf32 else TOLERANCE[dtype]
    assert rel_error(y, x.cpu().double() @ w_eff.t() + bias.cpu().double()) < tol
    assert rel_error(dx, gy.cpu().double() @ w_eff) < tol
    if backend.name == "emu":  # the kernels launched are the path's
        kernel = path.split(" ")[0].rstrip(":")
        forward_file, grad_input_file = {
            "small_batch": ("gemm_small_batch.cuh", "gemm_small_batch_grad.cuh"),
            "mma": ("gemm_mma.cuh", "gemm_mma.cuh"),
            "simt": ("gemm_simt.cuh", "gemm_simt.cuh"),
        }[kernel]
        # Split-K adds the launch of the kernel that adds up the splits, and only then.
        for direction, launches, file in (("forward", forward_launches, forward_file),
                                          ("grad_input", grad_input_launches, grad_input_file)):
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
            w_eff = w.cpu().double() * masks.unpack(bits.cpu(), (n, k))
            assert dx.shape == (m, k) and dx.dtype == dtype
            assert rel_error(dx, gy.cpu().double() @ w_eff) < TOLERANCE[dtype], (n, k)


# Column layouts of small_batch_grad, as the emulator (4 SMs) shapes them: (M, N, K, dtype,
# offset of W in its storage, in elements).
GRAD_LAYOUT_CASES = [
    (3, 40, 4000, torch.float32, 0, "two column tiles per block, the last one past K"),
    (2, 3, 16500, torch.float32, 0, "a tile per warp: K alone fills the device"),
    (5, 300, 96, torch.bfloat16, 3, "W rows not 16-byte aligned"),
    (1, 300, 64, torch.float32, 2, "W not 16-byte aligned, rows whole vectors"),
]


@pytest.mark.parametrize("m,n,k,dtype,offset,layout", GRAD_LAYOUT_CASES,
                         ids=[c[-1] for c in GRAD_LAYOUT_CASES])
def test_small_batch_grad_input_layouts(backend, m, n, k, dtype, offset, layout):
    w = torch.randn(n * k + offset).to(dtype)[offset:].view(n, k).to(backend.device)
    bits = masks.pack(torch.rand(n, k) < 0.5).to(backend.device)
    gy = torch.randn(m, n).to(dtype).to(backend.device)
    dx = backend.run(torch.ops.cpg.masked_linear_grad_input, gy, w, bits)
    w_eff = w.cpu().double() * masks.unpack(bits.cpu(), (n, k))
    assert rel_error(dx, gy.cpu().double() @ w_eff) < TOLERANCE[dtype]


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
