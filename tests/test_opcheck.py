"""torch.library.opcheck on every op, and torch.compile through the ops."""

from __future__ import annotations

import pytest
import torch

from cpg_kernels import functional, masks
from cpg_kernels.testing import random_mask, random_owner


def _layer(n=6, k=37, dtype=torch.float32, grad=False):
    w = torch.randn(n, k, dtype=dtype, requires_grad=grad)
    owner = random_owner((n, k))
    mask = random_mask((n, k)).requires_grad_(grad)
    return w, owner, mask


def _conv_layer(grad=False):
    w = torch.randn(4, 3, 3, 3, requires_grad=grad)
    owner = random_owner(w.shape)
    mask = random_mask(w.shape).requires_grad_(grad)
    return w, owner, mask


def op_samples():
    """(op name, args) pairs covering every op and its optional arguments."""
    w, owner, mask = _layer()
    bits = masks.active_bits(owner, 3, mask=mask)
    x = torch.randn(5, 37)
    cw, cowner, cmask = _conv_layer()
    cbits = masks.active_bits(cowner, 3, mask=cmask)
    cx = torch.randn(2, 3, 8, 8)
    gw, gowner, gmask = _layer(grad=True)
    gbits = masks.active_bits(gowner, 3, mask=gmask.detach())
    gx = torch.randn(5, 37, requires_grad=True)
    cgw, cgowner, cgmask = _conv_layer(grad=True)
    cgbits = masks.active_bits(cgowner, 3, mask=cgmask.detach())
    cgx = torch.randn(2, 3, 8, 8, requires_grad=True)
    bias = torch.randn(6, requires_grad=True)
    conv_args = ([1, 1], [1, 1], [1, 1], 1)
    return [
        ("pack_bits", (torch.rand(6, 37) < 0.5,)),
        ("unpack_bits", (bits, 37)),
        ("active_bits", (owner, 3, mask, None, 5e-3)),
        ("active_bits", (owner, 3, None, bits, 5e-3)),
        ("active_bits", (owner, 3, None, None, 5e-3)),
        ("owner_histogram", (owner,)),
        ("count_bits", (bits,)),
        ("apply_bits", (w, bits)),
        ("grad_epilogue", (torch.randn(6, 37), w, owner, 3, True)),
        ("grad_epilogue", (torch.randn(6, 37), w, owner, 3, False)),
        ("masked_linear", (x, w, bits, None, None, None, 0)),
        ("masked_linear", (gx, gw, gbits, bias, gowner, gmask, 3)),
        ("masked_linear", (gx, gw, gbits, None, None, None, 0)),
        ("masked_linear_grad_input", (torch.randn(5, 6), w, bits)),
        ("masked_linear_weight_grad", (torch.randn(5, 6), x, w, bits, owner, 3, True)),
        (
            "masked_linear_weight_grad",
            (torch.randn(2, 3, 6), torch.randn(2, 3, 37), w, bits, None, 0, False),
        ),
        ("masked_linear_multitask", (torch.randn(2, 3, 37), w, torch.stack([bits, bits]), None)),
        (
            "masked_linear_multitask",
            (torch.randn(2, 3, 37, requires_grad=True), gw, torch.stack([gbits, gbits]), bias),
        ),
        ("masked_conv2d", (cx, cw, cbits, None, *conv_args, None, None, 0)),
        ("masked_conv2d", (cgx, cgw, cgbits, None, *conv_args, cgowner, cgmask, 3)),
        (
            "masked_conv2d_grad_input",
            (torch.randn(2, 4, 8, 8), cw, cbits, [2, 3, 8, 8], *conv_args),
        ),
        (
            "masked_conv2d_multitask",
            (torch.randn(2, 2, 3, 8, 8), cw, torch.stack([cbits, cbits]), None, *conv_args),
        ),
        (
            "masked_conv2d_multitask",
            (
                torch.randn(3, 1, 3, 8, 8, requires_grad=True).contiguous(),
                cgw,
                torch.stack([cgbits] * 3),
                torch.randn(4, requires_grad=True),
                *conv_args,
            ),
        ),
        # channels_last activations: the fake kernels must promise the layout the ops return.
        ("masked_conv2d", (nhwc(cx), cw, cbits, None, *conv_args, None, None, 0)),
        (
            "masked_conv2d",
            (
                nhwc(cgx.detach()).requires_grad_(),
                cgw,
                cgbits,
                None,
                *conv_args,
                cgowner,
                cgmask,
                3,
            ),
        ),
        (
            "masked_conv2d_grad_input",
            (nhwc(torch.randn(2, 4, 8, 8)), cw, cbits, [2, 3, 8, 8], *conv_args),
        ),
        (
            "masked_conv2d_multitask",
            (
                nhwc(torch.randn(4, 3, 8, 8)).view(2, 2, 3, 8, 8),
                cw,
                torch.stack([cbits, cbits]),
                None,
                *conv_args,
            ),
        ),
    ]


def nhwc(t):
    return t.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("index", range(len(op_samples())))
def test_opcheck(index):
    name, args = op_samples()[index]
    torch.library.opcheck(getattr(torch.ops.cpg, name), args)


def test_channels_last_samples_are_channels_last():
    """The layout samples above really are NHWC (not also plain contiguous)."""
    layouts = [args[0] for name, args in op_samples() if name.startswith("masked_conv2d")]
    nhwc_only = [
        t
        for t in layouts
        if t.flatten(0, t.dim() - 4).is_contiguous(memory_format=torch.channels_last)
        and not t.is_contiguous()
    ]
    assert len(nhwc_only) == 4


def test_every_op_has_an_opcheck_sample():
    covered = {name for name, _ in op_samples()}
    registered = {name for name in dir(torch.ops.cpg) if not name.startswith("_")}
    registered = {
        n for n in registered if isinstance(getattr(torch.ops.cpg, n), torch._ops.OpOverloadPacket)
    }
    assert registered <= covered, registered - covered


class _TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_w = torch.nn.Parameter(torch.randn(4, 3, 3, 3))
        self.fc_w = torch.nn.Parameter(torch.randn(5, 4 * 6 * 6))
        self.register_buffer("conv_owner", random_owner(self.conv_w.shape))
        self.register_buffer("fc_owner", random_owner(self.fc_w.shape))
        self.conv_mask = torch.nn.Parameter(random_mask(self.conv_w.shape))

    def forward(self, x):
        h = functional.cpg_conv2d(x, self.conv_w, self.conv_owner, 4, mask=self.conv_mask)
        return functional.cpg_linear(torch.relu(h).flatten(1), self.fc_w, self.fc_owner, 4)


def test_torch_compile_matches_eager():
    torch._dynamo.reset()
    net = _TinyNet()
    x = torch.randn(2, 3, 8, 8)
    eager = net(x)
    eager.sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager)
    for p, g in zip(net.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g)
