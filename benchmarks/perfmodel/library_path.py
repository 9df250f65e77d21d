#!/usr/bin/env python3
"""The library path's thresholds (csrc/ops/gemm_path.h), from the model's predictions.

    python3 benchmarks/perfmodel/library_path.py [--gpu h100-sxm] [-o OUT.md]

For every linear and conv case of the benchmark grid (inference and training; multi-task cases
stay fused), the model predicts the call both ways: fused (the planned kernels, as predict.py
costs them) and library (``predict.library_path``: each GEMM of the forward and of the input
gradient after one apply_bits decode of the weight, cuBLAS/cuDNN costed as the model costs the
pre-masked baseline). Per dtype class (tensor cores: bf16 and TF32; exact fp32), it picks
the GEMM-row threshold with the least mean predicted loss against the per-case better path, on
the inference cases, and prints every batch >= 128 case's ratios under that rule against dense
masking (>= 1.0 wanted) and the pre-masked weight (>= 0.9 wanted). Every figure is predicted.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BENCH))

import cases  # noqa: E402
import model  # noqa: E402

from perfmodel import predict  # noqa: E402
from perfmodel.hardware import GPUS, H100  # noqa: E402

CANDIDATE_ROWS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
TENSOR_CORE = ("bf16", "tf32")


@dataclass
class Both:
    case: cases.Case
    rows: int  # GEMM rows of the forward
    fused: float
    library: float
    dense: float
    premasked: float


def predictions(gpu) -> list[Both]:
    measured = model._measured_records()
    ref = predict.context(H100, measured=measured)
    ctx = ref if gpu is H100 else predict.context(gpu)
    ctx.library_rule = ref.library_rule = False  # the fused side: the kernels alone
    reference = None if gpu is H100 else ref
    out = []
    for case in cases.full_grid():
        if case.family == "multitask":
            continue
        base = predict.baselines(ctx, case, reference)
        out.append(
            Both(
                case,
                predict._gemm_shape(case)[0],
                predict.fused(ctx, case).seconds,
                predict.library_path(ctx, case, reference).seconds,
                base["dense_masking"],
                base["premasked"],
            )
        )
    return out


def tensor_core_class(dtype: str) -> bool:
    return dtype in TENSOR_CORE


def fit(preds: list[Both], tensor_core: bool) -> tuple[int, dict[int, float]]:
    """The row threshold with the least mean loss on the inference cases of one dtype class,
    and each candidate's mean loss (time over the per-case better path's, minus one)."""
    sub = [
        p
        for p in preds
        if p.case.mode == "inference" and tensor_core_class(p.case.dtype) == tensor_core
    ]
    losses = {}
    for rows in CANDIDATE_ROWS:
        total = 0.0
        for p in sub:
            pick = p.library if p.rows >= rows else p.fused
            total += pick / min(p.fused, p.library) - 1
        losses[rows] = total / len(sub)
    return min(losses, key=losses.get), losses


def chosen_seconds(p: Both, thresholds: dict[bool, int]) -> tuple[float, str]:
    if p.rows >= thresholds[tensor_core_class(p.case.dtype)]:
        return p.library, "library"
    return p.fused, "fused"


def report(gpu) -> str:
    preds = predictions(gpu)
    thresholds, lines = {}, []
    lines.append(f"## {gpu.name} (predicted)\n")
    for tc in (True, False):
        best, losses = fit(preds, tc)
        thresholds[tc] = best
        label = "bf16 / TF32" if tc else "exact fp32"
        table = ", ".join(f"{r}: {100 * v:.1f}%" for r, v in losses.items())
        lines.append(f"- {label}: threshold **{best}** GEMM rows. Mean loss by threshold: {table}.")
    lines.append("")
    lines.append(
        "| case | GEMM rows | fused µs | library µs | path | vs dense masking | vs pre-masked |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    met_dense = met_pre = total = 0
    for p in preds:
        if p.case.batch < 128:
            continue
        t, path = chosen_seconds(p, thresholds)
        dense, pre = p.dense / t, p.premasked / t
        total += 1
        met_dense += dense >= 1.0
        met_pre += pre >= 0.9
        lines.append(
            f"| {p.case.id} | {p.rows} | {1e6 * p.fused:.1f} | {1e6 * p.library:.1f} | {path} | "
            f"{dense:.2f} | {pre:.2f} |"
        )
    fused_dense = sum(p.dense / p.fused >= 1.0 for p in preds if p.case.batch >= 128)
    fused_pre = sum(p.premasked / p.fused >= 0.9 for p in preds if p.case.batch >= 128)
    lines.insert(
        len(thresholds) + 1,
        f"- Batch >= 128 ({total} cases): >= 1.0x dense masking in {met_dense} with the rule "
        f"({fused_dense} fused only); >= 0.9x pre-masked in {met_pre} ({fused_pre} fused only).",
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpu", action="append", choices=sorted(GPUS))
    ap.add_argument("-o", "--out", type=Path)
    args = ap.parse_args()
    text = "# The library path's thresholds (predicted)\n\n"
    text += "`python3 benchmarks/perfmodel/library_path.py " + " ".join(
        f"--gpu {g}" for g in (args.gpu or ["h100-sxm"])
    )
    text += "`; every figure is the performance model's prediction.\n\n"
    for name in args.gpu or ["h100-sxm"]:
        text += report(GPUS[name]) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
