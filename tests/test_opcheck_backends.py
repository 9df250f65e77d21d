"""torch.library.opcheck per backend (cpu, emu, cuda where present), the fake kernels'
argument checks, and the schemas' defaults.

tests/test_opcheck.py covers every op on the CPU path; this runs the ops whose kernels
differ by backend again on each backend (extension-cpp's practice), with the training
and inference forms and their gradients (opcheck's test_autograd_registration and
test_aot_dispatch_dynamic go through the C++ autograd kernels).
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from cpg_kernels import functional, masks
from cpg_kernels.testing import random_mask, random_owner

TASK = 3
CONV = ([2, 1], [1, 1], [1, 1], 1)  # stride, padding, dilation, groups


def _layer(shape, device, grad):
    w = torch.randn(shape, device=device, requires_grad=grad)
    owner = random_owner(shape).to(device)
    mask = random_mask(shape).to(device).requires_grad_(grad)
    bits = masks.active_bits(owner, TASK, mask=mask.detach())
    bias = torch.randn(shape[0], device=device, requires_grad=grad)
    return w, owner, mask, bits, bias


def samples(device):
    """(op name, args) on `device`: the forms of each op whose kernels differ by backend."""
    w, owner, mask, bits, bias = _layer((6, 37), device, grad=False)
    gw, gowner, gmask, gbits, gbias = _layer((6, 37), device, grad=True)
    cw, cowner, cmask, cbits, cbias = _layer((4, 3, 3, 3), device, grad=False)
    cgw, cgowner, cgmask, cgbits, cgbias = _layer((4, 3, 3, 3), device, grad=True)
    w8, owner8, _, bits8, _ = _layer((8, 40), device, grad=False)
    lw, lowner, _, lbits, _ = _layer((16, 8, 3, 3), device, grad=False)
    l16w, l16owner, l16mask, l16bits, _ = _layer((16, 16, 3, 3), device, grad=False)

    def randn(*shape, grad=False):
        return torch.randn(*shape, device=device, requires_grad=grad)

    return [
        ("pack_bits", (torch.rand(6, 37, device=device) < 0.5,)),
        ("unpack_bits", (bits, 37)),
        ("active_bits", (owner, TASK, mask, None, 5e-3)),
        ("active_bits", (owner, TASK, None, bits, 5e-3)),
        ("owner_histogram", (owner,)),
        ("count_bits", (bits,)),
        ("apply_bits", (gw, bits)),
        ("grad_epilogue", (randn(6, 37), w, owner, TASK, True)),
        ("masked_linear", (randn(5, 37), w, bits, bias)),
        ("masked_linear", (randn(5, 37, grad=True), gw, gbits, gbias, gowner, gmask, TASK)),
        ("masked_linear", (randn(5, 37, grad=True), gw, gbits, None, gowner, None, TASK)),
        ("masked_linear", (randn(2, 3, 37, grad=True), gw, gbits)),
        ("masked_linear_grad_input", (randn(5, 6), w, bits)),
        ("masked_linear_weight_grad", (randn(5, 6), randn(5, 37), w, bits, owner, TASK, True)),
        # bf16 in whole 16-byte rows: the fused one-pass kernel on a kernel backend.
        (
            "masked_linear_weight_grad",
            (
                randn(9, 8).bfloat16(),
                randn(9, 40).bfloat16(),
                w8.bfloat16(),
                bits8,
                owner8,
                TASK,
                True,
            ),
        ),
        (
            "masked_linear_multitask",
            (randn(2, 3, 37, grad=True), gw, torch.stack([gbits, gbits]), gbias),
        ),
        # The fp32-weight form: bf16 x and bias against the fp32 weight; K = 40 takes the
        # fp32-weight stream on a kernel backend, with grad too (the fp32 weight is kept).
        ("masked_linear", (randn(5, 40).bfloat16(), w8, bits8, randn(8).bfloat16())),
        (
            "masked_linear",
            (
                randn(5, 40).bfloat16().requires_grad_(),
                w8.clone().requires_grad_(),
                bits8,
                None,
                owner8,
                None,
                TASK,
            ),
        ),
        ("masked_linear_multitask", (randn(2, 3, 40).half(), w8, torch.stack([bits8, bits8]))),
        # The backward pieces' fp32-weight form: N = 8 and K = 40 take the fp32-weight input
        # gradient stream and the fused weight gradient with fp32 W and dW.
        ("masked_linear_grad_input", (randn(5, 8).bfloat16(), w8, bits8)),
        (
            "masked_linear_weight_grad",
            (randn(9, 8).half(), randn(9, 40).half(), w8, bits8, owner8, TASK, True),
        ),
        ("masked_conv2d", (randn(2, 3, 8, 8), cw, cbits, cbias, *CONV)),
        (
            "masked_conv2d",
            (randn(2, 3, 8, 8, grad=True), cgw, cgbits, cgbias, *CONV, cgowner, cgmask, TASK),
        ),
        (
            "masked_conv2d",
            (
                randn(2, 3, 8, 8, grad=True).to(memory_format=torch.channels_last),
                cgw,
                cgbits,
                None,
                *CONV,
                cgowner,
                None,
                TASK,
            ),
        ),
        ("masked_conv2d_grad_input", (randn(2, 4, 4, 8), cw, cbits, [2, 3, 8, 8], *CONV)),
        # The conv forward's fp32-weight form: a late layer (16 output pixels) that the
        # unfolded path's fp32-weight stream takes on a kernel backend; with grad, the cast.
        (
            "masked_conv2d",
            (
                randn(1, 8, 4, 4).bfloat16(),
                lw,
                lbits,
                randn(16).bfloat16(),
                [1, 1],
                [1, 1],
                [1, 1],
                1,
            ),
        ),
        (
            "masked_conv2d",
            (
                randn(1, 8, 4, 4).bfloat16().requires_grad_(),
                lw.clone().requires_grad_(),
                lbits,
                None,
                [1, 1],
                [1, 1],
                [1, 1],
                1,
                lowner,
                None,
                TASK,
            ),
        ),
        # The conv training step's fp32-weight form: 16 input channels (past the direct
        # kernel), 16 output pixels: the fp32 weight is kept, the input gradient reads it and
        # the epilogue writes dW in fp32.
        (
            "masked_conv2d",
            (
                randn(1, 16, 4, 4).bfloat16().requires_grad_(),
                l16w.clone().requires_grad_(),
                l16bits,
                None,
                [1, 1],
                [1, 1],
                [1, 1],
                1,
                l16owner,
                l16mask.clone().requires_grad_(),
                TASK,
            ),
        ),
        (
            "masked_conv2d_grad_input",
            (randn(1, 16, 4, 4).half(), l16w, l16bits, [1, 16, 4, 4], [1, 1], [1, 1], [1, 1], 1),
        ),
        ("grad_epilogue", (randn(6, 37).bfloat16(), w, owner, TASK, True)),
        (
            "masked_conv2d_multitask",
            (randn(2, 1, 3, 8, 8, grad=True), cgw, torch.stack([cgbits] * 2), cgbias, *CONV),
        ),
    ]


@pytest.mark.parametrize("index", range(len(samples("cpu"))))
def test_opcheck_on_every_backend(backend, index):
    with backend.context():
        name, args = samples(backend.device)[index]
        torch.library.opcheck(getattr(torch.ops.cpg, name).default, args)


# ------------------------------------------------------------- fake kernels


def _bad_calls():
    """(argument named in the error, call) pairs that the ops must reject."""
    w = torch.randn(6, 37)
    owner = random_owner((6, 37))
    bits = masks.active_bits(owner, TASK)
    x = torch.randn(5, 37)
    cw = torch.randn(4, 3, 3, 3)
    cbits = masks.pack(torch.rand(4, 3, 3, 3) < 0.5)
    cx = torch.randn(2, 3, 8, 8)
    ops = torch.ops.cpg
    return [
        ("x", lambda: ops.masked_linear(torch.randn(5, 36), w, bits)),
        ("x", lambda: ops.masked_linear(x.double(), w, bits)),
        ("bits", lambda: ops.masked_linear(x, w, bits[:, :1])),
        ("bits", lambda: ops.masked_linear(x, w, bits.long())),
        ("bias", lambda: ops.masked_linear(x, w, bits, torch.randn(5))),
        ("owner", lambda: ops.masked_linear(x, w, bits, None, owner.int(), None, TASK)),
        ("task", lambda: ops.masked_linear(x, w, bits, None, owner, None, 256)),
        ("mask", lambda: ops.masked_linear(x, w, bits, None, None, torch.rand(6, 37), 0)),
        ("mask", lambda: ops.masked_linear(x, w, bits, None, owner, torch.rand(6, 36), TASK)),
        ("weight", lambda: ops.masked_linear(x.long(), w.long(), bits)),
        ("grad_out", lambda: ops.masked_linear_grad_input(torch.randn(5, 7), w, bits)),
        (
            "grad_out",
            lambda: ops.masked_linear_weight_grad(torch.randn(4, 6), x, w, bits, owner, TASK),
        ),
        (
            "mask_grad",
            lambda: ops.masked_linear_weight_grad(torch.randn(5, 6), x, w, bits, None, 0, True),
        ),
        ("x", lambda: ops.masked_linear_multitask(x, w, bits)),
        ("bits", lambda: ops.masked_linear_multitask(x.expand(2, 5, 37), w, bits)),
        ("x", lambda: ops.masked_conv2d(torch.randn(2, 4, 8, 8), cw, cbits)),
        ("x", lambda: ops.masked_conv2d(torch.randn(3, 8, 8), cw, cbits)),
        ("stride", lambda: ops.masked_conv2d(cx, cw, cbits, None, [0, 1])),
        ("padding", lambda: ops.masked_conv2d(cx, cw, cbits, None, 1, [-1, 0])),
        ("groups", lambda: ops.masked_conv2d(cx, cw, cbits, None, 1, 0, 1, 0)),
        ("weight", lambda: ops.masked_conv2d(cx, cw, cbits, None, 1, 0, 1, 3)),
        ("bits", lambda: ops.masked_conv2d(cx, cw, bits)),
        (
            "input_size",
            lambda: ops.masked_conv2d_grad_input(torch.randn(2, 4, 6, 6), cw, cbits, [2, 4, 8, 8]),
        ),
        (
            "grad_out",
            lambda: ops.masked_conv2d_grad_input(torch.randn(2, 5, 6, 6), cw, cbits, [2, 3, 8, 8]),
        ),
        ("x", lambda: ops.masked_conv2d_multitask(cx, cw, cbits.expand(2, 4, 1))),
        ("task", lambda: ops.active_bits(owner, 0, None, None, 5e-3)),
        ("active_bits", lambda: ops.active_bits(owner, TASK, torch.rand(6, 37), bits, 5e-3)),
        ("owner", lambda: ops.owner_histogram(owner.int())),
        ("mask", lambda: ops.pack_bits(torch.rand(6, 37))),
        ("bits", lambda: ops.unpack_bits(bits, 70)),
        ("bits", lambda: ops.count_bits(bits.long())),
        ("grad", lambda: ops.grad_epilogue(torch.randn(6, 36), w, owner, TASK, True)),
        ("bits", lambda: ops.apply_bits(w, bits[:3])),
    ]


@pytest.mark.parametrize("index", range(len(_bad_calls())))
def test_fake_kernels_reject_what_the_kernels_reject(index):
    """The same ValueError naming the argument, eagerly and under torch.compile's fakes."""
    name, call = _bad_calls()[index]
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        call()
    with FakeTensorMode(allow_non_fake_inputs=True):
        with pytest.raises(ValueError, match=rf"^{name}\b"):
            call()


def test_fake_kernels_agree_with_the_kernels_on_shapes_and_layouts():
    for name, args in samples("cpu"):
        if name == "pack_bits":
            continue  # its fake is checked by opcheck; nothing layout-dependent
        op = getattr(torch.ops.cpg, name).default
        real = op(*args)
        with FakeTensorMode(allow_non_fake_inputs=True):
            fake = op(*args)
        for r, f in zip(
            real if isinstance(real, tuple) else (real,),
            fake if isinstance(fake, tuple) else (fake,),
            strict=True,
        ):
            assert (f.shape, f.dtype, f.stride()) == (r.shape, r.dtype, r.stride()), name


# ---------------------------------------------------------------- schemas


def test_schemas_default_the_optional_arguments():
    w, owner, mask, bits, bias = _layer((6, 37), "cpu", grad=False)
    x = torch.randn(5, 37)
    full = torch.ops.cpg.masked_linear(x, w, bits, None, None, None, 0)
    torch.testing.assert_close(torch.ops.cpg.masked_linear(x, w, bits), full)
    cw, _, _, cbits, _ = _layer((4, 3, 3, 3), "cpu", grad=False)
    cx = torch.randn(2, 3, 8, 8)
    full = torch.ops.cpg.masked_conv2d(
        cx, cw, cbits, None, [1, 1], [1, 1], [1, 1], 1, None, None, 0
    )
    # An int stands for a pair, as in aten's conv2d.
    torch.testing.assert_close(torch.ops.cpg.masked_conv2d(cx, cw, cbits, padding=1), full)
    torch.testing.assert_close(functional.masked_conv2d(cx, cw, cbits, None, 1, (1, 1)), full)
    schema = str(torch.ops.cpg.masked_linear.default._schema)
    assert "Tensor? bias=None" in schema and "int task=0" in schema, schema
