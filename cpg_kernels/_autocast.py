"""Autocast rules of the ``cpg`` ops, for CPU and CUDA, bfloat16 and float16.

Inside ``torch.autocast`` an op with no rule runs on whatever dtypes reach it,
so a 16-bit activation from an unconverted layer meets a CPG layer's fp32
weight and the op's dtype check refuses it. The rules here follow autocast's
own for the aten ops these replace:

* the layer ops (``masked_linear``, ``masked_conv2d``, their multi-task forms
  and their input-gradient ops) are autocast's "lower precision" kind, as
  ``linear`` and ``conv2d`` are: the activation, the weight and the bias are
  cast to the autocast dtype (``torch.get_autocast_dtype(device)``) and the
  op runs with autocast off; ``masked_linear_weight_grad`` (a backward piece
  as well) casts its gradient, activation and weight alike. The picking mask
  stays float32 (the ops require it: it is a training-only master copy), and
  so do the uint8 owners and the int32 bits. A float64 tensor is left alone,
  as autocast leaves it.
* except that the linear ops (``masked_linear``, ``masked_linear_multitask``
  and the backward pieces ``masked_linear_grad_input`` and
  ``masked_linear_weight_grad``) keep an fp32 weight as it is: they take it
  with 16-bit activations (their fp32-weight form) and give what the cast
  weight would give, the weight gradient in fp32. Up to 64 rows the CUDA
  streams read the fp32 weight and round it in registers, at inference and in
  the training step, so no weight-sized copy is made; elsewhere the op casts
  the weight itself (with grad, differentiably, as here). ``masked_conv2d``
  and ``masked_conv2d_grad_input`` keep it too: pointwise (NHWC 1x1) convs and
  the late layers of at most 64 output pixels read it in the weight streams,
  at inference and in the training step (whose weight gradient the gradient
  epilogue's fp32-weight form writes in fp32); elsewhere the op casts it (with
  grad, differentiably).
* ``grad_epilogue`` is elementwise: "promote", its gradient and weight meet
  at the wider of their two dtypes (called directly with a 16-bit gradient
  and an fp32 weight, outside autocast, it keeps them: its fp32-weight form).
* the mask ops (``pack_bits``, ``unpack_bits``, ``active_bits``, ``count_bits``,
  ``owner_histogram``) and ``apply_bits`` have one floating input or none, so
  they run in the dtype they get: autocast's fallthrough, no rule needed.

The cost, as with aten's ``conv2d`` under autocast: each call of a layer op
writes a 16-bit copy of the fp32 weight (2 bytes per weight, read back by the
kernel, and kept for the backward), but for the calls that the streams take.
The gradient reaches the fp32 weight through that cast, in fp32. The tiled and
direct conv kernels do not read an fp32 weight.

The rule is registered as ``torch.library.register_autocast`` does, which
cannot be used itself: it casts every floating tensor, the mask included, to
one fixed dtype, where autocast's dtype is chosen by the caller.
"""

from __future__ import annotations

import torch

_LOWER_PRECISION = (
    "masked_linear",
    "masked_conv2d",
    "masked_linear_multitask",
    "masked_conv2d_multitask",
    "masked_linear_grad_input",
    "masked_conv2d_grad_input",
    "masked_linear_weight_grad",
)
_PROMOTE = ("grad_epilogue",)
# The arguments a lower-precision op casts: activations, weight, bias; never the mask.
_CAST_ARGUMENTS = frozenset({"x", "grad_out", "weight", "bias"})
# The ops that take an fp32 weight with 16-bit activations (their fp32-weight form): the
# linear forwards and backward pieces (a backward run inside autocast calls them), and the
# conv forward and input gradient.
_F32_WEIGHT_OPS = frozenset(
    {
        "masked_linear",
        "masked_linear_multitask",
        "masked_linear_grad_input",
        "masked_linear_weight_grad",
        "masked_conv2d",
        "masked_conv2d_grad_input",
    }
)
_CASTABLE = (torch.float32, torch.float16, torch.bfloat16)
DEVICES = ("cpu", "cuda")

_lib = torch.library.Library("cpg", "IMPL")


def _lower_precision_cast(names, device_type: str, keep_f32_weight: bool = False):
    def cast(args, kwargs):
        dtype = torch.get_autocast_dtype(device_type)

        def to(value, name):
            if (
                name in _CAST_ARGUMENTS
                and isinstance(value, torch.Tensor)
                and value.dtype in _CASTABLE
                and value.dtype != dtype
                and not (keep_f32_weight and name == "weight" and value.dtype == torch.float32)
            ):
                return value.to(dtype)
            return value

        # Trailing arguments left at their defaults are absent from args.
        return (
            [to(a, n) for a, n in zip(args, names, strict=False)],
            {n: to(v, n) for n, v in kwargs.items()},
        )

    return cast


def _promote_cast(names, device_type: str):
    def cast(args, kwargs):
        floating = [
            a
            for a in (*args, *kwargs.values())
            if isinstance(a, torch.Tensor) and a.is_floating_point()
        ]
        dtype = floating[0].dtype
        for a in floating[1:]:
            dtype = torch.promote_types(dtype, a.dtype)

        def to(value):
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                return value.to(dtype)
            return value

        return [to(a) for a in args], {n: to(v) for n, v in kwargs.items()}

    return cast


def _register(name: str, make_cast, device_type: str) -> None:
    op = getattr(torch.ops.cpg, name).default
    names = [a.name for a in op._schema.arguments]
    cast = make_cast(names, device_type)
    key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    key = getattr(torch._C.DispatchKey, key_name)

    def autocast_rule(*args, **kwargs):
        args, kwargs = cast(args, kwargs)
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            return op(*args, **kwargs)

    # Both the eager dispatcher and the Python dispatcher (torch.compile's tracing) see it.
    if op.has_kernel_for_dispatch_key(key):
        op.py_kernels.pop(key, None)
    op.py_impl(key)(autocast_rule)
    _lib.impl(
        name,
        lambda _keyset, *args, **kwargs: autocast_rule(*args, **kwargs),
        key_name,
        with_keyset=True,
    )


def register() -> None:
    """Give every floating-point ``cpg`` op its autocast rule on CPU and CUDA."""
    for device_type in DEVICES:
        for name in _LOWER_PRECISION:
            keep = name in _F32_WEIGHT_OPS
            _register(
                name,
                lambda names, dev, keep=keep: _lower_precision_cast(names, dev, keep),
                device_type,
            )
        for name in _PROMOTE:
            _register(name, _promote_cast, device_type)
