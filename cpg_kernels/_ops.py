"""Loads the compiled `cpg` ops and registers their fake kernels and autograd.

The C++ side (csrc/ops/registration.cpp) defines the schemas and the CPU/CUDA
implementations; this module adds what torch.compile and autograd need.
"""
from __future__ import annotations

import torch

from . import _C  # noqa: F401  (registers torch.ops.cpg)

_lib = "cpg::"


def _words(k: int) -> int:
    return (k + 31) // 32


def _matrix_cols(t: torch.Tensor) -> int:
    k = 1
    for d in t.shape[1:]:
        k *= d
    return k


# ---------------------------------------------------------------- fake kernels

@torch.library.register_fake(_lib + "pack_bits")
def _(mask):
    return mask.new_empty((mask.shape[0], _words(_matrix_cols(mask))), dtype=torch.int32)


@torch.library.register_fake(_lib + "unpack_bits")
def _(bits, K):
    return bits.new_empty((bits.shape[0], K), dtype=torch.bool)


@torch.library.register_fake(_lib + "active_bits")
def _(owner, task, mask, pick_bits, threshold):
    return owner.new_empty((owner.shape[0], _words(_matrix_cols(owner))), dtype=torch.int32)


@torch.library.register_fake(_lib + "owner_histogram")
def _(owner):
    return owner.new_empty((256,), dtype=torch.int64)


@torch.library.register_fake(_lib + "count_bits")
def _(bits):
    return bits.new_empty((bits.shape[0],), dtype=torch.int64)


@torch.library.register_fake(_lib + "apply_bits")
def _(weight, bits):
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


@torch.library.register_fake(_lib + "grad_epilogue")
def _(grad, weight, owner, task, mask_grad):
    grad_w = torch.empty_like(grad, memory_format=torch.contiguous_format)
    shape = grad.shape if mask_grad else (0,)
    return grad_w, grad.new_empty(shape, dtype=torch.float32)


@torch.library.register_fake(_lib + "masked_linear")
def _(x, weight, bits, bias, owner, mask, task):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.register_fake(_lib + "masked_linear_grad_input")
def _(grad_out, weight, bits):
    return grad_out.new_empty((*grad_out.shape[:-1], weight.shape[1]))


@torch.library.register_fake(_lib + "masked_linear_multitask")
def _(x, weight, bits, bias):
    return x.new_empty((x.shape[0], x.shape[1], weight.shape[0]))


def _conv_out(size, k, stride, pad, dil):
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def _conv_output(x, weight, stride, padding, dilation):
    """The empty output of a conv of x [images, C, H, W], in the layout the op promises:
    channels_last where x is channels_last and not also plain contiguous."""
    ho = _conv_out(x.shape[2], weight.shape[2], stride[0], padding[0], dilation[0])
    wo = _conv_out(x.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and \
        not x.is_contiguous() else torch.contiguous_format
    return x.new_empty((x.shape[0], weight.shape[0], ho, wo)).contiguous(memory_format=fmt)


@torch.library.register_fake(_lib + "masked_conv2d")
def _(x, weight, bits, bias, stride, padding, dilation, groups, owner, mask, task):
    return _conv_output(x, weight, stride, padding, dilation)


@torch.library.register_fake(_lib + "masked_conv2d_multitask")
def _(x, weight, bits, bias, stride, padding, dilation, groups):
    y = _conv_output(x.flatten(0, 1), weight, stride, padding, dilation)
    return y.view(x.shape[0], x.shape[1], *y.shape[1:])


@torch.library.register_fake(_lib + "masked_conv2d_grad_input")
def _(grad_out, weight, bits, input_size, stride, padding, dilation, groups):
    fmt = torch.channels_last if grad_out.is_contiguous(memory_format=torch.channels_last) and \
        not grad_out.is_contiguous() else torch.contiguous_format
    return grad_out.new_empty(input_size).contiguous(memory_format=fmt)


# -------------------------------------------------------------------- autograd

def _weight_and_mask_grads(G, weight, bits, owner, task, need_mask):
    """grad_W (and grad_m) from G = dL/dW_eff in one fused pass."""
    if owner is None:  # inference form: the gradient of W . bits
        return torch.ops.cpg.apply_bits(G, bits), None
    grad_w, grad_m = torch.ops.cpg.grad_epilogue(G, weight, owner, task, need_mask)
    return grad_w, (grad_m if need_mask else None)


def _setup_linear(ctx, inputs, output):
    x, weight, bits, bias, owner, mask, task = inputs
    ctx.save_for_backward(x, weight, bits, owner)
    ctx.task = task


def _backward_linear(ctx, grad_y):
    x, weight, bits, owner = ctx.saved_tensors
    need_x, need_w, _, need_b, _, need_m, _ = ctx.needs_input_grad
    n, k = weight.shape
    dx = dw = db = dm = None
    if need_x:
        dx = torch.ops.cpg.masked_linear_grad_input(grad_y, weight, bits)
    if need_w or need_m:
        G = grad_y.reshape(-1, n).t().mm(x.reshape(-1, k))  # dL/dW_eff, no mask on operands
        dw, dm = _weight_and_mask_grads(G, weight, bits, owner, ctx.task, need_m)
        dw = dw if need_w else None
    if need_b:
        db = grad_y.reshape(-1, n).sum(0)
    return dx, dw, None, db, None, dm, None


torch.library.register_autograd(_lib + "masked_linear", _backward_linear,
                                setup_context=_setup_linear)


def _setup_conv(ctx, inputs, output):
    x, weight, bits, bias, stride, padding, dilation, groups, owner, mask, task = inputs
    ctx.save_for_backward(x, weight, bits, owner)
    ctx.conv = (list(stride), list(padding), list(dilation), groups)
    ctx.task = task


def _backward_conv(ctx, grad_y):
    x, weight, bits, owner = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv
    need = ctx.needs_input_grad
    need_x, need_w, need_b, need_m = need[0], need[1], need[3], need[9]
    dx = dw = db = dm = None
    if need_x:
        dx = torch.ops.cpg.masked_conv2d_grad_input(grad_y, weight, bits, list(x.shape), stride,
                                                    padding, dilation, groups)
    if need_w or need_m:
        # dL/dW_eff from the library; only the weight's shape matters here.
        G = torch.ops.aten.convolution_backward(grad_y, x, weight, None, stride, padding, dilation,
                                                False, [0, 0], groups, [False, True, False])[1]
        dw, dm = _weight_and_mask_grads(G, weight, bits, owner, ctx.task, need_m)
        dw = dw if need_w else None
    if need_b:
        db = grad_y.sum((0, 2, 3))
    return dx, dw, None, db, None, None, None, None, None, dm, None


torch.library.register_autograd(_lib + "masked_conv2d", _backward_conv, setup_context=_setup_conv)


def _setup_multitask(ctx, inputs, output):
    x, weight, bits, bias = inputs
    ctx.save_for_backward(x, weight, bits)


def _backward_multitask(ctx, grad_y):
    x, weight, bits = ctx.saved_tensors
    need_x, need_w, _, need_b = ctx.needs_input_grad
    tasks = range(x.shape[0])
    dx = dw = db = None
    if need_x:
        dx = torch.stack([torch.ops.cpg.masked_linear_grad_input(grad_y[t], weight, bits[t])
                          for t in tasks])
    if need_w:
        dw = sum(torch.ops.cpg.apply_bits(grad_y[t].t().mm(x[t]), bits[t]) for t in tasks)
    if need_b:
        db = grad_y.sum((0, 1))
    return dx, dw, None, db


torch.library.register_autograd(_lib + "masked_linear_multitask", _backward_multitask,
                                setup_context=_setup_multitask)


def _setup_conv_multitask(ctx, inputs, output):
    x, weight, bits, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(x, weight, bits)
    ctx.conv = (stride, padding, dilation, groups)


def _backward_conv_multitask(ctx, grad_y):
    x, weight, bits = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv
    need_x, need_w, _, need_b = ctx.needs_input_grad[:4]
    tasks = range(x.shape[0])
    dx = dw = db = None
    if need_x:
        dx = torch.stack([torch.ops.cpg.masked_conv2d_grad_input(
            grad_y[t], weight, bits[t], list(x.shape[1:]), stride, padding, dilation, groups)
            for t in tasks])
    if need_w:
        # Each task's dL/dW_eff through its own bits, summed over the tasks.
        dw = sum(torch.ops.cpg.apply_bits(torch.ops.aten.convolution_backward(
            grad_y[t], x[t], weight, None, stride, padding, dilation, False, [0, 0], groups,
            [False, True, False])[1], bits[t]) for t in tasks)
    if need_b:
        db = grad_y.sum((0, 1, 3, 4))
    return dx, dw, None, db, None, None, None, None


torch.library.register_autograd(_lib + "masked_conv2d_multitask", _backward_conv_multitask,
                                setup_context=_setup_conv_multitask)
