#!/usr/bin/env python3
"""Linear and late conv inference under autocast, before and after the fp32-weight stream.

    PYTHONPATH=. python3 benchmarks/perfmodel/autocast_inference.py [--gpu h100-sxm] [-o OUT.md]

Under ``torch.autocast`` a CPG layer's weight is an fp32 master copy and its activations are
16-bit. Before, the autocast rule cast the weight on every call (aten's ``to``: 4 bytes read and
2 written per weight, one more op of host time) and the 16-bit weight stream read the copy.
After, ``masked_linear`` takes the fp32 weight (its fp32-weight form) and, up to 64 rows, the
weight stream reads it and rounds it in registers (``masked_linear_f32_weight``'s planned
launches). Both are costed as predict.py costs every planned launch; the cast as one
elementwise pass. Dense masking under autocast: unpack the bits, ``W * M`` in fp32, autocast's
cast, cuBLAS; the limit: cuBLAS on a stored, pre-masked 16-bit weight. Host time as the
model's (one fused call; one torch op per further op). The late conv layers of the grid at
batches of at most 64 output pixels get the same before/after (``masked_conv2d``'s
fp32-weight form: the unfolded windows, then the stream reading the fp32 weight). Every
figure is predicted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BENCH))

import cases  # noqa: E402

from perfmodel import kernels, plan, predict  # noqa: E402
from perfmodel.hardware import GPUS  # noqa: E402

BATCHES = (1, 4, 16, 64)
DTYPE = "bf16"


def device_seconds(ctx, launches) -> float:
    """Predicted device time of planned launches (plan query dicts or plan.Launch)."""
    launches = [d if isinstance(d, plan.Launch) else plan.Launch.from_query(d) for d in launches]
    return sum(p.cost.seconds for p in predict._launch_pieces(ctx, launches, 1))


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
            host = predict.host_fused_us(ctx) * 1e-6
            stream16 = ext.plan_masked_linear("bfloat16", 1, m, n, k, False, False, gpu.sms)
            stream32 = ext.plan_masked_linear_f32_weight("bfloat16", 1, m, n, k, gpu.sms)
            cast = kernels.elementwise(elems * (4 + 2), gpu, c).seconds
            before_dev = cast + device_seconds(ctx, stream16)
            after_dev = device_seconds(ctx, stream32)
            case = cases.Case("linear", lay, m, DTYPE, "inference")
            fwd = predict.library_forward(ctx, case)
            unpack = kernels.elementwise(elems + elems / 8, gpu, c).seconds
            multiply = kernels.elementwise(elems * (2 * 4 + 1), gpu, c).seconds
            out.append(
                {
                    "layer": lay.name,
                    "batch": m,
                    "kernel": stream32[0]["kernel"] if stream32 else "-",
                    "before_device": before_dev,
                    "after_device": after_dev,
                    "before": max(host + op_s, before_dev),
                    "after": max(host, after_dev),
                    "dense": max(4 * op_s, unpack + multiply + cast + fwd),
                    "premasked": max(op_s, fwd),
                }
            )
    return out


def late_conv_cases(mode: str):
    """The grid's late conv layers at batch 1 and 4 in both layouts, as bf16 ``mode``
    ("inference" or "training") cases: those whose output pixels the fp32-weight form may
    take."""
    for lay in cases.CONV_LAYERS:
        if not lay.late:
            continue
        for m in (1, 4):
            for channels_last in (False, True):
                yield cases.Case("conv", lay, m, DTYPE, mode, channels_last=channels_last)


def conv_predictions(gpu) -> list[dict]:
    """The late conv layers (weight-bound at small batch) at batches whose output pixels the
    fp32-weight form takes (at most 64), both layouts: before, the cast and the bf16 conv's
    launches; after, the fp32-weight form's (the unfolded windows, or for a pointwise NHWC
    conv the linear stream)."""
    ctx = predict.context(gpu)
    c = ctx.constants
    op_s = c.host_torch_op_us * 1e-6
    out = []
    for case in late_conv_cases("inference"):
        mixed = plan.query_conv(case, 1, False, gpu.sms, f32_weight=True)
        if not mixed:
            continue
        host = predict.host_fused_us(ctx) * 1e-6
        cast = kernels.elementwise(case.layer.out_ch * case.layer.k * (4 + 2), gpu, c).seconds
        before_dev = cast + device_seconds(ctx, plan.query_conv(case, 1, False, gpu.sms))
        after_dev = device_seconds(ctx, mixed)
        out.append(
            {
                "layer": f"{case.layer.net} {case.layer.name}",
                "batch": case.batch,
                "layout": "NHWC" if case.channels_last else "NCHW",
                "before_device": before_dev,
                "after_device": after_dev,
                "before": max(host + op_s, before_dev),
                "after": max(host, after_dev),
            }
        )
    return out


def report(gpu) -> str:
    lines = [
        f"# Linear inference under bf16 autocast on {gpu.name}: the fp32-weight stream (predicted)",
        "",
        "`PYTHONPATH=. python3 benchmarks/perfmodel/autocast_inference.py` (its docstring says "
        "how). Before: autocast casts the fp32 weight, the bf16 stream reads the copy; after: "
        "the stream reads the fp32 weight. Device time, and the call's time (the larger of "
        "host and device time). `x dense`: dense masking under autocast over the call; "
        "`/ limit`: the call over cuBLAS on a pre-masked bf16 weight. Every figure is "
        "predicted; no GPU has run either kernel.",
        "",
        "| layer | batch | device before (µs) | device after (µs) | after / before | "
        "call before (µs) | call after (µs) | x dense after | after / limit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in predictions(gpu):
        lines.append(
            f"| {r['layer']} | {r['batch']} | {r['before_device'] * 1e6:.1f} | "
            f"{r['after_device'] * 1e6:.1f} | {r['after_device'] / r['before_device']:.2f} | "
            f"{r['before'] * 1e6:.1f} | {r['after'] * 1e6:.1f} | "
            f"{r['dense'] / r['after']:.2f} | {r['after'] / r['premasked']:.2f} |"
        )
    lines += [
        "",
        "## Late conv layers (at most 64 output pixels)",
        "",
        "Before: the cast, then the bf16 conv (the unfolded windows and the bf16 stream); "
        "after: the windows and the stream reading the fp32 weight.",
        "",
        *conv_table(conv_predictions(gpu), "call"),
    ]
    return "\n".join(lines) + "\n"


def conv_table(rows: list[dict], what: str) -> list[str]:
    """The late conv layers' table of conv_predictions (here) or of autocast_training.py's:
    device time before and after, and the `what` ("call" or "step") time."""
    lines = [
        "| layer | batch | layout | device before (µs) | device after (µs) | after / before | "
        f"{what} before (µs) | {what} after (µs) |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['batch']} | {r['layout']} | {r['before_device'] * 1e6:.1f} | "
            f"{r['after_device'] * 1e6:.1f} | {r['after_device'] / r['before_device']:.2f} | "
            f"{r['before'] * 1e6:.1f} | {r['after'] * 1e6:.1f} |"
        )
    return lines


def main(make_report=report, doc: str = __doc__) -> None:
    """The command line of this script and autocast_training.py: one GPU's report, to stdout
    and optionally to a file."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--gpu", default="h100-sxm", choices=sorted(GPUS))
    ap.add_argument("-o", "--out", type=Path)
    args = ap.parse_args()
    text = make_report(GPUS[args.gpu])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
