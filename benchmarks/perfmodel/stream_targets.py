#!/usr/bin/env python3
"""Issue 14's targets for the weight stream (gemm_stream.cuh), before and after, from two
``model.py predict`` files of one GPU: every linear and conv inference case up to batch 16
whose forward the stream takes in AFTER, and the multi-task T = 8, batch 1 cases.

    python3 benchmarks/perfmodel/stream_targets.py BEFORE.json AFTER.json

Prints a markdown table of predicted figures: the fused call's time (and its device time) on
each side, and AFTER's ratios against the pre-masked weight (>= 0.9 wanted) and dense masking
(>= 3, or >= 7 against eight passes at T = 8).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

STREAM = "weight_stream::"


def _records(path: str) -> dict:
    doc = json.loads(Path(path).read_text())
    if not doc["meta"].get("predicted"):
        raise ValueError(f"{path}: not a predicted file (model.py predict)")
    return {r["id"]: r for r in doc["records"]}


def _streamed(record: dict) -> bool:
    return any(launch["kernel"].startswith(STREAM)
               for launch in record["predicted"].get("launches", []))


def chosen(after: dict) -> list[str]:
    out = []
    for rid, r in after.items():
        if r["mode"] != "inference" or r["batch"] > 16:
            continue
        if r["family"] == "multitask":
            if r["tasks"] == 8 and r["batch"] == 1:
                out.append(rid)
        elif _streamed(r):
            out.append(rid)
    return out


def _us(r: dict) -> str:
    return f"{r['variants']['fused']['ms'] * 1e3:.1f} ({r['predicted']['device_ms'] * 1e3:.1f})"


def table(before: dict, after: dict) -> list[str]:
    lines = ["| case | before us (device) | after us (device) | after x pre-masked | "
             "after x dense | target met | after bound |", "|---|---|---|---|---|---|---|"]
    for rid in chosen(after):
        a, b = after[rid], before.get(rid)
        s = a["speedup"]
        multi = a["family"] == "multitask"
        other = s.get("separate_fused") if multi else s.get("premasked")
        dense = s.get("dense_masking") or 0.0
        met = dense >= 7 if multi else (other or 0) >= 0.9 and dense >= 3
        lines.append(f"| {rid} | {_us(b) if b else '-'} | {_us(a)} | "
                     f"{'-' if multi else f'{other:.2f}'} | {dense:.2f} | "
                     f"{'yes' if met else 'no'} | {a['predicted']['bound']} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before")
    p.add_argument("after")
    args = p.parse_args(argv)
    print("\n".join(table(_records(args.before), _records(args.after))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
