#!/usr/bin/env python3
"""The weight-gradient rule's threshold (csrc/ops/gemm_path.h), from the model's predictions.

    python3 benchmarks/perfmodel/weight_grad_path.py [--gpu h100-sxm] [-o OUT.md]

A linear layer's training step gets dW and the mask gradient either from the fused one-pass
kernel (gemm_weight_grad.cuh: the dW GEMM on the mma pipeline, the gradient rule in its
epilogue; its planned launches costed as predict.py costs every planned launch) or from the
two-pass path (cuBLAS writes G, grad_epilogue reads it back with W and the owners: the
library roofline plus one elementwise pass, as predict.py costs the training step's steps).
The fused kernel saves G's write and read (2 x 2 bytes per bf16 weight) but runs the GEMM on
mma.sync tiles, below cuBLAS's rate; the more batch rows, the more that costs.

For each linear layer of the benchmark grid and each tensor-core dtype (bf16, fp32 as TF32;
exact fp32 always takes the two-pass path: the kernel needs tensor cores), over a sweep of
batch rows, it predicts the device time both ways and picks the row threshold with the least
mean predicted loss against the per-shape better path. Every figure is predicted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BENCH))

import cases  # noqa: E402
import model  # noqa: E402

from perfmodel import kernels, plan, predict  # noqa: E402
from perfmodel.hardware import GPUS  # noqa: E402

ROWS = (1, 8, 32, 128, 256, 512, 768, 1024, 1536, 2048, 4096, 8192, 16384)
CANDIDATES = (128, 256, 512, 768, 1024, 1536, 2048, 4096, 8192, 16384)
DTYPES = ("bf16", "tf32")


def fused_seconds(ctx, case) -> float:
    lay = case.layer
    launches = plan._ext().plan_linear_weight_grad(
        plan.TORCH_DTYPE_NAME[case.dtype],
        case.batch,
        lay.out_ch,
        lay.in_ch,
        case.dtype == "tf32",
        ctx.gpu.sms,
        "emulator",
    )
    pieces = predict._launch_pieces(ctx, [plan.Launch.from_query(d) for d in launches], 1)
    return sum(p.cost.seconds for p in pieces)


def two_pass_seconds(ctx, case) -> float:
    c, e, lay = ctx.constants, case.element_bytes, case.layer
    gemm = kernels.vendor_gemm(lay.out_ch, lay.in_ch, case.batch, e, case.dtype, ctx.gpu, c)
    epilogue = kernels.elementwise(lay.out_ch * lay.in_ch * (3 * e + 1 + 4), ctx.gpu, c)
    return gemm.seconds + epilogue.seconds


def predictions(gpu):
    ctx = predict.context(gpu)
    out = []
    for dtype in DTYPES:
        for lay in cases.LINEAR_LAYERS:
            for rows in ROWS:
                case = cases.Case("linear", lay, rows, dtype, "training")
                out.append((case, fused_seconds(ctx, case), two_pass_seconds(ctx, case)))
    return out


def loss(preds, threshold: int) -> float:
    """Mean of (time under the rule / the better path's time - 1)."""
    total = 0.0
    for case, fused, two_pass in preds:
        chosen = two_pass if case.batch >= threshold else fused
        total += chosen / min(fused, two_pass) - 1.0
    return total / len(preds)


def report(gpu) -> str:
    preds = predictions(gpu)
    losses = {t: loss(preds, t) for t in CANDIDATES}
    best = min(CANDIDATES, key=lambda t: (losses[t], t))
    lines = [
        f"# The weight-gradient rule's threshold on {gpu.name} (predicted)",
        "",
        "`python3 benchmarks/perfmodel/weight_grad_path.py` (benchmarks/perfmodel/"
        "weight_grad_path.py says how). Device time of dW and the mask gradient of a linear "
        "layer's training step, bf16 and fp32 as TF32; every figure is predicted.",
        "",
        f"**Threshold: {best} batch rows** (least mean loss against the per-shape better path).",
        "",
        "| threshold | mean loss |",
        "|---:|---:|",
    ]
    lines += [f"| {t} | {100 * losses[t]:.1f}% |" for t in CANDIDATES]
    lines += [
        "",
        "| dtype | layer | rows | fused (µs) | two-pass (µs) | two-pass / fused | rule takes |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for case, fused, two_pass in preds:
        rule = "two-pass" if case.batch >= best else "fused"
        lines.append(
            f"| {case.dtype} | {case.layer.name} | {case.batch} | {fused * 1e6:.1f} | "
            f"{two_pass * 1e6:.1f} | {two_pass / fused:.2f}x | {rule} |"
        )
    return "\n".join(lines) + "\n"


def training_steps(gpu) -> str:
    """Every linear training case of the benchmark grid, the whole fused step (forward, input
    gradient, weight gradient, steps outside the plan; host time included) before (the
    two-pass weight gradient, as at the commit before the fused kernel) and after (the rule)."""
    measured = model._measured_records() if gpu.slug == "h100-sxm" else {}
    after = predict.context(gpu, measured=measured)
    before = predict.context(gpu, measured=measured)
    before.weight_grad_rule = False
    lines = [
        "## The linear training step, before and after (predicted)",
        "",
        "Before: the weight gradient in two passes (aten's mm, then grad_epilogue); after: the "
        "rule above. `x dense`: dense masking's step time over the fused step's (on the H100 "
        "the 2026-11-27 run's measured baseline where it has the case, as in the predicted "
        "report).",
        "",
        "| dtype | layer | batch | before (µs) | after (µs) | after / before | x dense before"
        " | x dense after |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case in cases.full_grid():
        if case.family != "linear" or case.mode != "training":
            continue
        t0, t1 = predict.fused(before, case).seconds, predict.fused(after, case).seconds
        dense = predict.baselines(after, case)["dense_masking"]
        lines.append(
            f"| {case.dtype} | {case.layer.name} | {case.batch} | {t0 * 1e6:.1f} | "
            f"{t1 * 1e6:.1f} | {t1 / t0:.2f} | {dense / t0:.2f} | {dense / t1:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", default="h100-sxm", choices=sorted(GPUS))
    ap.add_argument("-o", "--out", type=Path)
    args = ap.parse_args()
    text = report(GPUS[args.gpu]) + "\n" + training_steps(GPUS[args.gpu])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
