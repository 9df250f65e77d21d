"""The ops' autograd formulas, registered in C++ beside each op (csrc/ops/*_ops.cpp).

Each gradient is checked against the float64 dense-masking oracle for every
subset of inputs that asks for one, with and without the optional bias and
mask (the formulas map each argument to its autograd edge by hand); no Python
runs below ``torch.ops`` in a step; double backward fails clearly; the
emulator runs the backward's kernels too.
"""

from __future__ import annotations

import itertools
import re
import sys

import pytest
import torch

from cpg_kernels import backends, functional, masks, reference
from cpg_kernels.testing import assert_within_bound, oracle, random_mask, random_owner

TASK = 3
DIFFERENTIABLE = [
    "masked_linear",
    "masked_linear_multitask",
    "masked_conv2d",
    "masked_conv2d_multitask",
    "apply_bits",
]


def _state(shape, with_mask, with_bias, device="cpu"):
    w = torch.randn(shape, dtype=torch.float64)
    owner = random_owner(shape)
    mask = random_mask(shape) if with_mask else None
    bias = torch.randn(shape[0], dtype=torch.float64) if with_bias else None
    return [None if t is None else t.to(device) for t in (w, owner, mask, bias)]


def _linear(x, w, owner, mask, bias):
    return functional.cpg_linear(x, w, owner, TASK, mask=mask, bias=bias)


def _linear_ref(x, w, owner, mask, bias):
    return reference.linear(x, w, owner, TASK, mask=mask, bias=bias)


def _conv(x, w, owner, mask, bias):
    return functional.cpg_conv2d(x, w, owner, TASK, mask=mask, bias=bias, padding=1, stride=2)


def _conv_ref(x, w, owner, mask, bias):
    return reference.conv2d(x, w, owner, TASK, mask=mask, bias=bias, padding=1, stride=2)


FAMILIES = {
    "linear": (_linear, _linear_ref, (5, 37), (4, 37)),
    "conv": (_conv, _conv_ref, (4, 3, 3, 3), (2, 3, 7, 7)),
}


def _grads(fn, x, w, owner, mask, bias, wanted):
    """Gradients of a fixed projection of fn's output with respect to `wanted` only."""
    leaves = {
        "x": x.clone().requires_grad_("x" in wanted),
        "weight": w.clone().requires_grad_("weight" in wanted),
        "mask": None if mask is None else mask.clone().requires_grad_("mask" in wanted),
        "bias": None if bias is None else bias.clone().requires_grad_("bias" in wanted),
    }
    y = fn(leaves["x"], leaves["weight"], owner, leaves["mask"], leaves["bias"])
    gy = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    inputs = [leaves[name] for name in wanted]
    return dict(zip(wanted, torch.autograd.grad(y, inputs, gy), strict=True))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "with_mask,with_bias", [(True, True), (True, False), (False, True), (False, False)]
)
def test_every_subset_of_gradients_matches_the_oracle(family, with_mask, with_bias):
    fn, ref_fn, w_shape, x_shape = FAMILIES[family]
    w, owner, mask, bias = _state(w_shape, with_mask, with_bias)
    x = torch.randn(x_shape, dtype=torch.float64)
    names = ["x", "weight"] + (["mask"] if with_mask else []) + (["bias"] if with_bias else [])
    for r in range(1, len(names) + 1):
        for wanted in itertools.combinations(names, r):
            ours = _grads(fn, x, w, owner, mask, bias, wanted)
            ref = _grads(ref_fn, x, w, owner, mask, bias, wanted)
            assert ours.keys() == ref.keys()
            for name in wanted:
                torch.testing.assert_close(ours[name], ref[name], msg=f"{family} {wanted}")


def test_inference_form_gradients_match_the_oracle():
    w = torch.randn(5, 37, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 37, dtype=torch.float64, requires_grad=True)
    bits = masks.pack(torch.rand(5, 37) < 0.5)
    active = masks.unpack(bits, w.shape)
    gy = torch.randn(3, 5, dtype=torch.float64)
    ours = torch.autograd.grad(functional.masked_linear(x, w, bits), (x, w), gy)
    ref = torch.autograd.grad(reference.masked_linear(x, w, active), (x, w), gy)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b)


def test_apply_bits_gradient_is_the_gradient_masked_by_the_bits():
    w = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    bits = masks.pack(torch.rand(4, 2, 3) < 0.5)
    gy = torch.randn(4, 2, 3, dtype=torch.float64)
    (grad,) = torch.autograd.grad(masks.apply_bits(w, bits), w, gy)
    torch.testing.assert_close(grad, gy * masks.unpack(bits, w.shape))


def test_the_autograd_kernels_are_cpp():
    for name in DIFFERENTIABLE:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"cpg::{name}", "Autograd"), name
        # A kernel registered from Python shows no C++ source location.
        table = torch._C._dispatch_dump(f"cpg::{name}")
        line = next(row for row in table.splitlines() if row.startswith("Autograd["))
        assert re.search(r"csrc/ops/\w+_ops\.cpp", line), line


def _python_files_run(fn):
    """The source files of the Python functions that run inside fn()."""
    files = set()

    def profile(frame, event, arg):
        if event == "call":
            files.add(frame.f_code.co_filename)

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return files


def test_a_training_step_runs_no_python_below_the_op_call():
    w, owner, mask, bias = (
        t.float().requires_grad_() if t.is_floating_point() else t
        for t in _state((5, 37), True, True)
    )
    x = torch.randn(4, 37, requires_grad=True)
    op = torch.ops.cpg.masked_linear.default
    bits = masks.active_bits(owner, TASK, mask=mask)

    def step():
        y = op(x, w, bits, bias, owner, mask, TASK)
        y.backward(torch.ones_like(y))

    step()  # warm-up: first calls may import or register
    files = _python_files_run(step)
    ours = {f for f in files if "cpg_kernels" in f or "_library" in f}
    assert not ours, ours


def test_double_backward_is_a_clear_error():
    w, owner, mask, bias = (
        t.requires_grad_() if t.is_floating_point() else t for t in _state((5, 37), True, True)
    )
    x = torch.randn(4, 37, dtype=torch.float64, requires_grad=True)
    y = functional.cpg_linear(x, w, owner, TASK, mask=mask, bias=bias)
    # First-order gradients under create_graph=True are still right ...
    gx, gw = torch.autograd.grad(y.sum(), (x, w), create_graph=True)
    ref = torch.autograd.grad(
        reference.linear(x, w, owner, TASK, mask=mask, bias=bias).sum(), (x, w)
    )
    torch.testing.assert_close(gx, ref[0])
    torch.testing.assert_close(gw, ref[1])
    # ... and differentiating them again names the op.
    with pytest.raises(RuntimeError, match="cpg::masked_linear: double backward is not"):
        torch.autograd.grad(gx.sum(), w)


def test_backward_twice_without_retain_graph_is_torchs_error():
    w, owner, mask, _ = _state((5, 37), True, False)
    w.requires_grad_()
    y = functional.cpg_linear(torch.randn(2, 37, dtype=torch.float64), w, owner, TASK, mask=mask)
    y.sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.sum().backward()


def test_no_graph_without_grad_or_under_no_grad():
    w, owner, mask, bias = _state((5, 37), True, True)
    x = torch.randn(4, 37, dtype=torch.float64)
    assert functional.cpg_linear(x, w, owner, TASK, mask=mask, bias=bias).grad_fn is None
    w.requires_grad_()
    with torch.no_grad():
        assert functional.cpg_linear(x, w, owner, TASK, mask=mask).grad_fn is None
    assert functional.cpg_linear(x, w, owner, TASK, mask=mask).grad_fn is not None


def test_the_emulator_runs_the_backward_kernels():
    w, owner, mask, bias = _state((4, 3, 3, 3), True, True)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    gy = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    ours = [t.to(torch.float32, copy=True).requires_grad_() for t in (x, w, mask, bias)]
    with backends.emulated(seed=1):
        y = functional.cpg_conv2d(
            ours[0], ours[1], owner, TASK, mask=ours[2], bias=ours[3], padding=1
        )
        with backends.emulator_launches() as launches:
            y.backward(gy.float())
    files = {entry.split(":")[0] for entry in launches}
    # The input gradient's conv kernel and the fused weight/mask epilogue (elementwise.cu),
    # both emulated; G itself comes from aten.
    assert any(f.startswith("conv_") for f in files) and "elementwise.cu" in files, launches
    _, (gx, gw, gb, gm) = oracle(
        lambda x_, w_, b_, m_: reference.conv2d(x_, w_, owner, TASK, mask=m_, bias=b_, padding=1),
        [x, w, bias],
        [mask],
        grad_output=gy,
    )
    assert_within_bound(ours[0].grad, gx, "dx")
    assert_within_bound(ours[1].grad, gw, "dW", partials=True)
    assert_within_bound(ours[2].grad, gm, "dmask", partials=True)
    assert_within_bound(ours[3].grad, gb, "dbias")


def test_multitask_gradients_match_separate_tasks():
    n, k, tasks = 6, 37, 3
    w = torch.randn(n, k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(n, dtype=torch.float64, requires_grad=True)
    x = torch.randn(tasks, 4, k, dtype=torch.float64, requires_grad=True)
    bits = torch.stack([masks.pack(torch.rand(n, k) < 0.5) for _ in range(tasks)])
    gy = torch.randn(tasks, 4, n, dtype=torch.float64)
    ours = torch.autograd.grad(functional.masked_linear_multitask(x, w, bits, b), (x, w, b), gy)
    y = torch.stack([functional.masked_linear(x[t], w, bits[t], b) for t in range(tasks)])
    ref = torch.autograd.grad(y, (x, w, b), gy)
    for a, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, r)


def test_conv_multitask_gradients_match_separate_tasks():
    tasks = 2
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(tasks, 2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    bits = torch.stack([masks.pack(torch.rand(4, 3, 3, 3) < 0.5) for _ in range(tasks)])
    y = functional.masked_conv2d_multitask(x, w, bits, b, padding=1)
    gy = torch.randn_like(y)
    ours = torch.autograd.grad(y, (x, w, b), gy)
    y_ref = torch.stack(
        [functional.masked_conv2d(x[t], w, bits[t], b, padding=1) for t in range(tasks)]
    )
    ref = torch.autograd.grad(y_ref, (x, w, b), gy)
    for a, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, r)
