#!/usr/bin/env python3
"""The linear and late conv training steps under autocast, before and after the fp32-weight
training kernels.

    PYTHONPATH=. python3 benchmarks/perfmodel/autocast_training.py [--gpu h100-sxm] [-o OUT.md]

Under ``torch.autocast`` a CPG layer's weight is an fp32 master copy and its activations are
16-bit. Before, the training step cast the weight (4 bytes read and 2 written per weight, one
op), the 16-bit forward and input-gradient streams read the copy, the fused weight gradient
wrote a 16-bit dW, and the cast's backward widened it (2 bytes read and 4 written, one op).
After, up to 64 rows, the forward, input-gradient and weight-gradient kernels read the fp32
weight and round it in registers, and dW is written as fp32 (the planned launches of
``plan_masked_linear_f32_weight`` and ``plan_linear_weight_grad(f32_weight=True)``). Where a
mixed plan is empty the op casts, so that piece costs what it did. Every launch is costed as
predict.py costs planned launches, the casts as elementwise passes; the step's time is the
larger of its device time and its host time (three fused calls, plus one torch op per cast).
The late conv layers' section (``conv_predictions``) is costed the same way. Every figure is
predicted.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BENCH))

import cases  # noqa: E402

from perfmodel import (  # noqa: E402
    autocast_inference,  # noqa: E402
    kernels,
    plan,
    predict,
)
from perfmodel.autocast_inference import (  # noqa: E402
    BATCHES,
    conv_table,
    device_seconds,
    late_conv_cases,
)


def predictions(gpu) -> list[dict]:
    ctx = predict.context(gpu)
    c = ctx.constants
    ext = plan._ext()
    op_s = c.host_torch_op_us * 1e-6
    out = []
    for lay in cases.LINEAR_LAYERS:
        n, k = lay.out_ch, lay.in_ch
        elems = n * k
        for m in BATCHES:
            fwd16 = ext.plan_masked_linear("bfloat16", 1, m, n, k, False, False, gpu.sms)
            dx16 = ext.plan_masked_linear("bfloat16", 1, m, n, k, True, False, gpu.sms)
            dw16 = ext.plan_linear_weight_grad("bfloat16", m, n, k, False, gpu.sms)
            fwd32 = ext.plan_masked_linear_f32_weight("bfloat16", 1, m, n, k, gpu.sms)
            dx32 = ext.plan_masked_linear_f32_weight(
                "bfloat16", 1, m, n, k, gpu.sms, grad_input=True
            )
            dw32 = ext.plan_linear_weight_grad("bfloat16", m, n, k, False, gpu.sms, f32_weight=True)
            cast = kernels.elementwise(elems * (4 + 2), gpu, c).seconds
            widen = kernels.elementwise(elems * (2 + 4), gpu, c).seconds
            before = {
                "cast": cast,
                "forward": device_seconds(ctx, fwd16),
                "grad_input": device_seconds(ctx, dx16),
                "weight_grad": device_seconds(ctx, dw16),
                "widen": widen,
            }
            if fwd32:  # the autograd kernel keeps the fp32 weight
                after = {
                    "cast": 0.0,
                    "forward": device_seconds(ctx, fwd32),
                    "grad_input": device_seconds(ctx, dx32)
                    if dx32
                    else cast + before["grad_input"],
                    "weight_grad": device_seconds(ctx, dw32),
                    "widen": 0.0,
                }
            else:
                after = dict(before)
            host = 3 * predict.host_fused_us(ctx) * 1e-6
            casts_after = (0 if fwd32 else 2) + (1 if fwd32 and not dx32 else 0)
            out.append(
                {
                    "layer": lay.name,
                    "batch": m,
                    "kernels": bool(fwd32) and bool(dx32),
                    "before_device": sum(before.values()),
                    "after_device": sum(after.values()),
                    "before": max(host + 2 * op_s, sum(before.values())),
                    "after": max(host + casts_after * op_s, sum(after.values())),
                    "pieces": (before, after),
                }
            )
    return out


def conv_predictions(gpu) -> list[dict]:
    """The late conv layers' training step at the batches whose output pixels the fp32-weight
    form takes (at most 64), both layouts, with owners and a picking mask. Before: the cast,
    the bf16 forward and input gradient, the library's weight gradient G, the bf16 epilogue
    (G, W, owner read; dW, dm written) and the widening. After, where the mixed plans are
    there (the autograd kernel keeps the fp32 weight): the fp32-weight forward and input
    gradient, the same G, and the mixed epilogue (W read and dW written as fp32)."""
    ctx = predict.context(gpu)
    c = ctx.constants
    op_s = c.host_torch_op_us * 1e-6
    e = 2
    out = []
    for case in late_conv_cases("training"):
        lay = case.layer
        fwd32 = plan.query_conv(case, 1, False, gpu.sms, f32_weight=True)
        dx32 = plan.query_conv(case, 1, True, gpu.sms, f32_weight=True)
        if not (fwd32 and dx32):
            continue
        elems = lay.out_ch * lay.k
        rows = case.batch * lay.out_hw * lay.out_hw
        wgrad = kernels.vendor_gemm(lay.out_ch, lay.k, rows, e, "bf16", gpu, c, True)
        epilogue16 = kernels.elementwise(elems * (3 * e + 1 + 4), gpu, c, 80).seconds
        epilogue32 = kernels.elementwise(elems * (e + 4 + 4 + 1 + 4), gpu, c, 80).seconds
        before = {
            "cast": kernels.elementwise(elems * (4 + 2), gpu, c).seconds,
            "forward": device_seconds(ctx, plan.query_conv(case, 1, False, gpu.sms)),
            "grad_input": device_seconds(ctx, plan.query_conv(case, 1, True, gpu.sms)),
            "weight_grad": wgrad.seconds + epilogue16,
            "widen": kernels.elementwise(elems * (2 + 4), gpu, c).seconds,
        }
        after = {
            "forward": device_seconds(ctx, fwd32),
            "grad_input": device_seconds(ctx, dx32),
            "weight_grad": wgrad.seconds + epilogue32,
        }
        # Calls: forward, dx and the epilogue (fused ops) and G (a library op), and before,
        # the cast's two ops.
        host = 3 * predict.host_fused_us(ctx) * 1e-6 + op_s
        out.append(
            {
                "layer": f"{lay.net} {lay.name}",
                "batch": case.batch,
                "layout": "NHWC" if case.channels_last else "NCHW",
                "before_device": sum(before.values()),
                "after_device": sum(after.values()),
                "before": max(host + 2 * op_s, sum(before.values())),
                "after": max(host, sum(after.values())),
            }
        )
    return out


def report(gpu) -> str:
    lines = [
        f"# Linear training step under bf16 autocast on {gpu.name}: the fp32-weight "
        "training kernels (predicted)",
        "",
        "`PYTHONPATH=. python3 benchmarks/perfmodel/autocast_training.py` (its docstring says "
        "how). Before: the step casts the fp32 weight, the bf16 kernels read the copy and the "
        "cast's backward widens dW; after: forward, input gradient and weight gradient read "
        "the fp32 weight, dW is written in fp32. Device time of the weight's pieces (cast, "
        "forward, dx, dW and dm, widening), and the step's time (the larger of host and device "
        "time). `mixed dx`: whether the fp32-weight input-gradient stream takes the shape (else "
        "the dx op casts). Every figure is predicted; no GPU has run these kernels.",
        "",
        "| layer | batch | mixed dx | device before (µs) | device after (µs) | after / before | "
        "step before (µs) | step after (µs) |",
        "|---|---:|:---:|---:|---:|---:|---:|---:|",
    ]
    for r in predictions(gpu):
        lines.append(
            f"| {r['layer']} | {r['batch']} | {'yes' if r['kernels'] else 'no'} | "
            f"{r['before_device'] * 1e6:.1f} | {r['after_device'] * 1e6:.1f} | "
            f"{r['after_device'] / r['before_device']:.2f} | {r['before'] * 1e6:.1f} | "
            f"{r['after'] * 1e6:.1f} |"
        )
    lines += [
        "",
        "## Late conv layers (at most 64 output pixels)",
        "",
        "Before: the cast, the bf16 conv and input gradient (the unfolded path's streams), "
        "the library's weight gradient G, the bf16 epilogue and the widening; after: the "
        "forward and input gradient read the fp32 weight, the same G, the epilogue's mixed "
        "form writes dW in fp32.",
        "",
        *conv_table(conv_predictions(gpu), "step"),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    autocast_inference.main(report, __doc__)
