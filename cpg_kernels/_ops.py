"""Loads the compiled `cpg` ops and registers their fake kernels.

The C++ side defines the schemas, the CPU/CUDA kernels and the autograd
formulas, each op in its family's file (csrc/ops/{mask,linear,conv}_ops.cpp),
so a call runs no Python below ``torch.ops``. The fake kernels here are what
torch.compile and ``torch.library.opcheck`` trace with: they check the
arguments as the C++ kernels do (``ValueError`` naming the argument, through
``torch._check_value`` so symbolic shapes become runtime asserts, not guards)
and return outputs of the right shape, dtype and layout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import _C  # noqa: F401  (registers torch.ops.cpg)
from .masks import MAX_TASK, rows_and_cols, words_per_row

_lib = "cpg::"
_FLOATING = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _check(cond, message: str) -> None:
    torch._check_value(cond, lambda: message)


def _check_shape(t: torch.Tensor, expected, name: str) -> None:
    _check(
        t.dim() == len(expected), f"{name}: expected shape {list(expected)}, got {list(t.shape)}"
    )
    for have, want in zip(t.shape, expected, strict=True):
        _check(have == want, f"{name}: expected shape {list(expected)}, got {list(t.shape)}")


def _check_floating(t: torch.Tensor, name: str) -> None:
    _check(
        t.dtype in _FLOATING,
        f"{name}: expected a floating-point tensor (float32, float16, "
        f"bfloat16 or float64), got {t.dtype}",
    )


def _check_like(t: torch.Tensor, ref: torch.Tensor, name: str, ref_name: str) -> None:
    """Same dtype and device as ``ref``."""
    _check(
        t.dtype == ref.dtype,
        f"{name}: expected dtype {ref.dtype} (the dtype of {ref_name}), got {t.dtype}",
    )
    _check(
        t.device == ref.device,
        f"{name}: expected a tensor on {ref.device} (the device of "
        f"{ref_name}), got one on {t.device}",
    )


def _check_bits(bits: torch.Tensor, weight: torch.Tensor, tasks=None) -> None:
    """int32 ``[N, ceil(K/32)]`` (``[tasks, N, ceil(K/32)]`` for the multi-task ops)."""
    _check(bits.dtype == torch.int32, f"bits: expected dtype int32, got {bits.dtype}")
    _check(bits.device == weight.device, "bits: expected the weight's device")
    n, k = rows_and_cols(weight.shape)
    _check_shape(bits, ((tasks,) if tasks is not None else ()) + (n, words_per_row(k)), "bits")


def _check_task(task: int) -> None:
    _check(
        1 <= task <= MAX_TASK,
        f"task: expected an id in 1..{MAX_TASK} (owner is uint8 and 0 means free), got {task}",
    )


def _check_owner(owner: torch.Tensor, weight: torch.Tensor) -> None:
    _check(owner.dtype == torch.uint8, f"owner: expected dtype uint8, got {owner.dtype}")
    _check(owner.device == weight.device, "owner: expected the weight's device")
    _check_shape(owner, weight.shape, "owner")


def _check_mask(mask: torch.Tensor, weight: torch.Tensor) -> None:
    _check(mask.dtype == torch.float32, f"mask: expected dtype float32, got {mask.dtype}")
    _check(mask.device == weight.device, "mask: expected the weight's device")
    _check_shape(mask, weight.shape, "mask")


def _check_training(weight, owner, mask, task) -> None:
    """The training form has owner and a task; the inference form has neither."""
    if owner is not None:
        _check_owner(owner, weight)
        _check_task(task)
    else:
        _check(mask is None, "mask: a picking mask needs owner and task (the training form)")
    if mask is not None:
        _check_mask(mask, weight)


def _check_bias(bias, weight, ref=None, ref_name: str = "weight") -> None:
    if bias is not None:
        _check_like(bias, weight if ref is None else ref, "bias", ref_name)
        _check_shape(bias, (weight.shape[0],), "bias")


def _f32_weight_form(x, weight) -> bool:
    """The fp32-weight form of the linear and conv ops and the gradient epilogue: a 16-bit
    x (or grad_out, or grad) against an fp32 weight (autocast's); results, and the bias, are
    x's dtype, the weight gradient the weight's."""
    return weight.dtype == torch.float32 and x.dtype in (torch.float16, torch.bfloat16)


def _check_linear(x, weight, bits, x_name: str, f32_weight_ok: bool = False) -> None:
    _check_floating(weight, "weight")
    _check(
        weight.dim() == 2,
        f"weight: expected a 2-D linear weight [out, in], got {weight.dim()} dimensions",
    )
    _check_activation(x, weight, x_name, f32_weight_ok)
    _check_bits(bits, weight)


def _check_activation(x, weight, name: str, f32_weight_ok: bool) -> None:
    """x like the weight, or (where the op has the fp32-weight form) on its device."""
    if not (f32_weight_ok and _f32_weight_form(x, weight)):
        _check_like(x, weight, name, "weight")
        return
    _check(
        x.device == weight.device,
        f"{name}: expected a tensor on {weight.device} (the device of weight), "
        f"got one on {x.device}",
    )


def _check_linear_bias(bias, x, weight) -> None:
    if _f32_weight_form(x, weight):
        _check_bias(bias, weight, x, "x")
    else:
        _check_bias(bias, weight)


def _check_conv(weight, bits, stride, padding, dilation, groups, tasks=None) -> None:
    _check(
        len(stride) == 2 and all(s >= 1 for s in stride),
        f"stride: expected two positive ints, got {stride}",
    )
    _check(
        len(padding) == 2 and all(p >= 0 for p in padding),
        f"padding: expected two non-negative ints, got {padding}",
    )
    _check(
        len(dilation) == 2 and all(d >= 1 for d in dilation),
        f"dilation: expected two positive ints, got {dilation}",
    )
    _check(groups >= 1, f"groups: expected a positive int, got {groups}")
    _check_floating(weight, "weight")
    _check(
        weight.dim() == 4,
        f"weight: expected a 4-D conv2d weight [out, in/groups, kh, kw], "
        f"got {weight.dim()} dimensions",
    )
    _check(
        weight.shape[0] % groups == 0,
        f"weight: out_channels {weight.shape[0]} must be divisible by groups = {groups}",
    )
    _check_bits(bits, weight, tasks)


def _conv_layout(t: torch.Tensor) -> torch.memory_format:
    """The layout of a conv result computed from activation ``t`` (the rule of
    ``layout_of`` in csrc/ops/conv_ops.cpp): channels_last where ``t`` is
    channels_last and not also plain contiguous (size-1 dimensions make it both)."""
    if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _conv_output(x, weight, stride, padding, dilation, groups, f32_weight_ok: bool = False):
    """The empty output of a conv of ``x`` [images, C, H, W], in the layout the op promises.
    Its shape is aten's own (a conv on these fake tensors allocates nothing), the rule
    that csrc/core/conv_shape.h implements for the kernels; its dtype is x's."""
    _check(
        x.dim() == 4,
        f"x: expected a 4-D input [batch, channels, height, width], got {x.dim()} dimensions",
    )
    _check_activation(x, weight, "x", f32_weight_ok)
    _check(
        x.shape[1] == weight.shape[1] * groups,
        f"x: expected {weight.shape[1] * groups} "
        f"input channels (weight in/groups = {weight.shape[1]}, groups = {groups}), got "
        f"{x.shape[1]}",
    )
    for d in range(2):
        window = dilation[d] * (weight.shape[2 + d] - 1) + 1
        _check(
            x.shape[2 + d] + 2 * padding[d] >= window,
            f"x: input of spatial size "
            f"{x.shape[2]}x{x.shape[3]} is smaller than the dilated kernel",
        )
    shape = F.conv2d(x, weight.to(x.dtype), None, stride, padding, dilation, groups).shape
    return x.new_empty(shape).contiguous(memory_format=_conv_layout(x))


# ---------------------------------------------------------------- fake kernels


def _fake(name: str):
    """Registers the decorated function as the fake kernel of ``cpg::name``.

    torch leaves out a call's trailing arguments that equal their defaults; they are
    filled back from the schema (the defaults' one home), so each fake sees them all."""
    arguments = getattr(torch.ops.cpg, name).default._schema.arguments

    def register(fn):
        def fake(*args, **kwargs):
            rest = [kwargs.get(a.name, a.default_value) for a in arguments[len(args) :]]
            return fn(*args, *rest)

        torch.library.register_fake(_lib + name)(fake)
        return fn

    return register


@_fake("pack_bits")
def _(mask):
    _check(mask.dtype == torch.bool, f"mask: expected dtype bool, got {mask.dtype}")
    _check(mask.dim() >= 1, "mask: expected at least 1 dimension")
    n, k = rows_and_cols(mask.shape)
    return mask.new_empty((n, words_per_row(k)), dtype=torch.int32)


@_fake("unpack_bits")
def _(bits, K):
    _check(bits.dtype == torch.int32, f"bits: expected dtype int32, got {bits.dtype}")
    _check(bits.dim() == 2, f"bits: expected a 2-D tensor [N, words], got {bits.dim()} dimensions")
    _check(
        K >= 0 and bits.shape[1] == words_per_row(K),
        f"bits: expected {words_per_row(K)} words per row for K = {K}, got {bits.shape[1]}",
    )
    return bits.new_empty((bits.shape[0], K), dtype=torch.bool)


@_fake("active_bits")
def _(owner, task, mask, pick_bits, threshold):
    _check(owner.dtype == torch.uint8, f"owner: expected dtype uint8, got {owner.dtype}")
    _check(owner.dim() >= 1, "owner: expected at least 1 dimension")
    _check_task(task)
    _check(
        mask is None or pick_bits is None,
        "active_bits: give the picks either as a real mask or as pick_bits, not both",
    )
    if mask is not None:
        _check_mask(mask, owner)
    if pick_bits is not None:
        _check_bits(pick_bits, owner)
    n, k = rows_and_cols(owner.shape)
    return owner.new_empty((n, words_per_row(k)), dtype=torch.int32)


@_fake("owner_histogram")
def _(owner):
    _check(owner.dtype == torch.uint8, f"owner: expected dtype uint8, got {owner.dtype}")
    return owner.new_empty((256,), dtype=torch.int64)


@_fake("count_bits")
def _(bits):
    _check(bits.dtype == torch.int32, f"bits: expected dtype int32, got {bits.dtype}")
    _check(bits.dim() == 2, f"bits: expected a 2-D tensor [N, words], got {bits.dim()} dimensions")
    return bits.new_empty((bits.shape[0],), dtype=torch.int64)


@_fake("apply_bits")
def _(weight, bits):
    _check_floating(weight, "weight")
    _check(weight.dim() >= 2, "weight: expected at least 2 dimensions")
    _check_bits(bits, weight)
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


@_fake("grad_epilogue")
def _(grad, weight, owner, task, mask_grad):
    _check_floating(weight, "weight")
    _check_activation(grad, weight, "grad", f32_weight_ok=True)
    _check_shape(grad, weight.shape, "grad")
    _check_owner(owner, weight)
    _check_task(task)
    # The fp32-weight form (16-bit grad): the weight gradient is the weight's dtype.
    grad_w = torch.empty_like(grad, dtype=weight.dtype, memory_format=torch.contiguous_format)
    shape = grad.shape if mask_grad else (0,)
    return grad_w, grad.new_empty(shape, dtype=torch.float32)


@_fake("masked_linear")
def _(x, weight, bits, bias, owner, mask, task):
    _check_linear(x, weight, bits, "x", f32_weight_ok=True)
    _check_training(weight, owner, mask, task)
    _check(
        x.dim() >= 1 and x.shape[-1] == weight.shape[1],
        f"x: expected last dimension "
        f"{weight.shape[1]} (the weight's in_features), got shape {list(x.shape)}",
    )
    _check_linear_bias(bias, x, weight)
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@_fake("masked_linear_grad_input")
def _(grad_out, weight, bits):
    _check_linear(grad_out, weight, bits, "grad_out", f32_weight_ok=True)
    _check(
        grad_out.dim() >= 1 and grad_out.shape[-1] == weight.shape[0],
        f"grad_out: expected last dimension {weight.shape[0]} (the weight's out_features), "
        f"got shape {list(grad_out.shape)}",
    )
    return grad_out.new_empty((*grad_out.shape[:-1], weight.shape[1]))


@_fake("masked_linear_weight_grad")
def _(grad_out, x, weight, bits, owner=None, task=0, mask_grad=False):
    _check_linear(x, weight, bits, "x", f32_weight_ok=True)
    if _f32_weight_form(x, weight):
        _check_like(grad_out, x, "grad_out", "x")
    else:
        _check_like(grad_out, weight, "grad_out", "weight")
    n, k = weight.shape
    _check(
        x.dim() >= 1 and x.shape[-1] == k,
        f"x: expected last dimension {k} (the weight's in_features), got shape {list(x.shape)}",
    )
    _check(
        grad_out.dim() >= 1 and grad_out.shape[-1] == n,
        f"grad_out: expected last dimension {n} (the weight's out_features), "
        f"got shape {list(grad_out.shape)}",
    )
    rows = math.prod(x.shape[:-1])
    _check(
        math.prod(grad_out.shape[:-1]) == rows,
        f"grad_out: expected {rows} rows (as many as x), got shape {list(grad_out.shape)}",
    )
    if owner is not None:
        _check_owner(owner, weight)
        _check_task(task)
    _check(
        not mask_grad or owner is not None,
        "mask_grad: the mask gradient needs owner (the training form)",
    )
    grad_w = weight.new_empty((n, k))
    shape = (n, k) if mask_grad else (0,)
    return grad_w, weight.new_empty(shape, dtype=torch.float32)


@_fake("masked_linear_multitask")
def _(x, weight, bits, bias):
    _check_floating(weight, "weight")
    _check(
        weight.dim() == 2,
        f"weight: expected a 2-D linear weight [out, in], got {weight.dim()} dimensions",
    )
    _check_activation(x, weight, "x", f32_weight_ok=True)
    _check(
        x.dim() == 3 and x.shape[2] == weight.shape[1],
        f"x: expected shape [T, B, "
        f"{weight.shape[1]}] (tasks, batch, in_features), got {list(x.shape)}",
    )
    _check_bits(bits, weight, tasks=x.shape[0])
    _check_linear_bias(bias, x, weight)
    return x.new_empty((x.shape[0], x.shape[1], weight.shape[0]))


@_fake("masked_conv2d")
def _(x, weight, bits, bias, stride, padding, dilation, groups, owner, mask, task):
    _check_conv(weight, bits, stride, padding, dilation, groups)
    _check_training(weight, owner, mask, task)
    _check_linear_bias(bias, x, weight)
    return _conv_output(x, weight, stride, padding, dilation, groups, f32_weight_ok=True)


@_fake("masked_conv2d_multitask")
def _(x, weight, bits, bias, stride, padding, dilation, groups):
    _check(
        x.dim() == 5,
        f"x: expected a 5-D input [T, batch, channels, height, width] (tasks "
        f"first), got {x.dim()} dimensions",
    )
    _check_conv(weight, bits, stride, padding, dilation, groups, tasks=x.shape[0])
    _check_bias(bias, weight)
    y = _conv_output(x.flatten(0, 1), weight, stride, padding, dilation, groups)
    return y.view(x.shape[0], x.shape[1], *y.shape[1:])


@_fake("masked_conv2d_grad_input")
def _(grad_out, weight, bits, input_size, stride, padding, dilation, groups):
    _check_conv(weight, bits, stride, padding, dilation, groups)
    _check_activation(grad_out, weight, "grad_out", f32_weight_ok=True)
    _check(
        len(input_size) == 4 and input_size[1] == weight.shape[1] * groups,
        f"input_size: expected [batch, {weight.shape[1] * groups}, height, width], got "
        f"{list(input_size)}",
    )
    _check(
        grad_out.dim() == 4
        and grad_out.shape[0] == input_size[0]
        and grad_out.shape[1] == weight.shape[0],
        f"grad_out: expected shape [{input_size[0]}, "
        f"{weight.shape[0]}, Ho, Wo], got {list(grad_out.shape)}",
    )
    return grad_out.new_empty(input_size).contiguous(memory_format=_conv_layout(grad_out))


# ------------------------------------------------------------ autocast rules

from . import _autocast  # noqa: E402  (needs the ops registered above)

_autocast.register()
