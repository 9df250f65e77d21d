#!/usr/bin/env python3
"""Issue 14's targets for the weight stream (gemm_stream.cuh), predicted before and after.

    python3 benchmarks/perfmodel/stream_targets.py [--gpu h100-sxm] [--gpu h200-sxm]

Both sides are this checkout's model, constants and resource table; "before" plans every
forward that the stream takes on the small-batch kernel instead, as the dispatcher did before
it (``calibrate.old_small_batch``). Cases: every bf16 linear and conv inference case up to
batch 16 whose forward the stream takes, and the multi-task T = 8, batch 1 cases.

Prints a markdown table of predicted figures per GPU: the fused call's time (and its device
time) on each side, and the after side's ratios against the pre-masked weight (>= 0.9 wanted;
in brackets against the fused call's device time alone, as if the host cost nothing) and dense
masking (>= 3, or >= 7 against eight passes at T = 8). "target met" reads the call's ratios.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BENCH))

import cases  # noqa: E402
import model  # noqa: E402

from perfmodel import calibrate, plan, predict  # noqa: E402
from perfmodel.hardware import GPUS, H100  # noqa: E402

STREAM = "weight_stream::"


def chosen(sms: int) -> list:
    out = []
    for case in cases.full_grid(("bf16",)):
        if case.mode != "inference" or case.batch > 16:
            continue
        if case.family == "multitask":
            if case.tasks == 8 and case.batch == 1:
                out.append(case)
        elif any(launch.kernel.startswith(STREAM) for launch in plan.forward_launches(case, sms)):
            out.append(case)
    return out


def records(gpu, picked, old: bool) -> dict:
    """case id -> predicted record on gpu (old: the small-batch dispatch)."""
    measured = model._measured_records()
    ref = predict.context(H100, measured=measured)
    ctx = ref if gpu is H100 else predict.context(gpu)
    if old:
        for c in {id(ref): ref, id(ctx): ctx}.values():
            c.rewrite_plan = lambda case, what, launches, sms=c.gpu.sms: calibrate.old_small_batch(
                case, what, launches, sms=sms
            )
    return {c.id: predict.record(ctx, c, None if gpu is H100 else ref) for c in picked}


def _us(r: dict) -> str:
    return f"{r['variants']['fused']['ms'] * 1e3:.1f} ({r['predicted']['device_ms'] * 1e3:.1f})"


def table(before: dict, after: dict) -> list[str]:
    lines = [
        "| case | before us (device) | after us (device) | after x pre-masked "
        "(device) | after x dense | target met | after bound |",
        "|---|---|---|---|---|---|---|",
    ]
    for rid, a in after.items():
        b, s = before[rid], a["speedup"]
        multi = a["family"] == "multitask"
        dense = s.get("dense_masking") or 0.0
        if multi:
            ratio, met = "-", dense >= 7
        else:
            device = a["variants"]["premasked"]["ms"] / a["predicted"]["device_ms"]
            ratio = f"{s['premasked']:.2f} ({device:.2f})"
            met = s["premasked"] >= 0.9 and dense >= 3
        lines.append(
            f"| {rid} | {_us(b)} | {_us(a)} | {ratio} | {dense:.2f} | "
            f"{'yes' if met else 'no'} | {a['predicted']['bound']} |"
        )
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="append", choices=sorted(GPUS))
    args = p.parse_args(argv)
    for slug in args.gpu or ["h100-sxm", "h200-sxm"]:
        gpu = GPUS[slug]
        picked = chosen(gpu.sms)
        print(f"\n{gpu.name}, predicted (before: gemm_small_batch.cuh; after: gemm_stream.cuh)\n")
        print("\n".join(table(records(gpu, picked, True), records(gpu, picked, False))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
