#!/usr/bin/env python3
"""The performance model: predicted benchmark times on H100/H200 without a GPU.

    python3 benchmarks/model.py predict --json OUT.json [--gpu h100-sxm] [--quick] [filters]
    python3 benchmarks/model.py predict --what-if wgmma [filters]    # a kernel not built
    python3 benchmarks/model.py calibrate [RUN/bench.json ...]
    python3 benchmarks/model.py compare BEFORE AFTER [--gpu ...] [filters]
    python3 benchmarks/model.py resources [--so PATH]
    python3 benchmarks/model.py host OVERHEAD.json     # today's host cost, from bench_overhead

``predict`` writes bench_ops.py-style JSON (one file per GPU, records marked predicted) that
report.py renders as a predicted report. ``calibrate`` fits the model's constants on half of the
measured runs' cases and prints its error on the other half (benchmarks/perfmodel/calibrate.py
says which cases and why). ``compare`` prints a kernel change's before and after: each side is a
``predict`` JSON, a resource table, a built ``_C*.so`` or ``git:REF`` (the table committed at
REF); tables and builds are predicted with this checkout's plan and constants. ``resources``
regenerates the committed register/shared-memory/SASS table from a FORCE_CUDA=1 build.
``--what-if`` costs the tiled tensor-core launches as a hypothetical main loop
(perfmodel/whatif.py); its JSON and report say so. ``host`` sets the model's host cost of a
fused call from a ``bench_overhead.py --json`` run (constants.json ``host_now``).
How it works: benchmarks/README.md ("The performance model").
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parent))  # an in-place build of cpg_kernels; an install still wins

import cases  # noqa: E402
from perfmodel import calibrate, predict, resources, whatif  # noqa: E402
from perfmodel.hardware import GPUS, H100  # noqa: E402


def _measured_records() -> dict:
    """The H100 run's records by case id (the baselines' measured figures)."""
    out = {}
    for path in calibrate.default_runs():
        doc = json.loads(path.read_text())
        if doc["meta"].get("device") in ("NVIDIA H100 80GB HBM3",):
            out.update({r["id"]: r for r in doc["records"]})
    return out


def select(all_cases, args):
    return [
        c
        for c in all_cases
        if (not args.family or c.family in args.family)
        and (not args.dtype or c.dtype in args.dtype)
        and (not args.mode or c.mode in args.mode)
        and (not args.batch or c.batch in args.batch)
        and (not args.layer or c.layer.name in args.layer)
        and (not args.layout or c.layout in args.layout)
    ]


def grid(args):
    if args.quick:
        return cases.quick_grid(("bf16", "fp32"))
    return cases.full_grid()


def _git_commit() -> str | None:
    r = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], cwd=HERE.parent, capture_output=True, text=True
    )
    if r.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=HERE.parent,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return r.stdout.strip() + ("-dirty" if dirty else "")


def predict_doc(gpu, chosen, table=None, constants=None, what_if=None) -> dict:
    """A bench_ops.py-style document of predicted records for ``chosen`` cases on ``gpu``
    (``what_if``: the tiled tensor-core launches as a hypothetical main loop, whatif.py)."""
    measured = _measured_records()
    table = table if table is not None else resources.load_table()
    ref = predict.context(H100, constants, table, measured, what_if=what_if)
    ctx = ref if gpu is H100 else predict.context(gpu, constants, table, what_if=what_if)
    records = [predict.record(ctx, c, None if gpu is H100 else ref) for c in chosen]
    label = f" (predicted, what-if {what_if})" if what_if else " (predicted)"
    slug = f"predicted-{gpu.slug}" + (f"-whatif-{what_if}" if what_if else "")
    return {
        "meta": {
            "device": gpu.name + label,
            "device_slug": slug,
            "what_if": what_if,
            "what_if_text": whatif.SCENARIOS.get(what_if),
            "host_fused_us": predict.host_fused_us(ctx),
            "predicted": True,
            "git_commit": _git_commit(),
            "gpu": gpu.slug,
            "sm_count": gpu.sms,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "resources": table.get("arch"),
            "constants": ctx.constants.__dict__,
        },
        "calibration": {
            "copy_gbps": gpu.dram_gbps,
            "matmul_n": 8192,
            "peak_tflops": dict(gpu.peak_tflops),
        },
        "records": records,
        "not_run": [],
        "settings": {"repeats": 0, "budget_s": None, "quick": False, "predicted": True},
    }


# ---------------------------------------------------------------------------- commands

DATASHEET_TFLOPS = {"bf16": whatif.DENSE_BF16_TFLOPS, "tf32": whatif.DENSE_BF16_TFLOPS / 2}


def summary_rows(records: list[dict], gpu) -> list[str]:
    """Per group (family or net, precision, mode, layout): cases, the median share of the dense
    peak (data sheet; and of the measured cuBLAS 8192^3 rate), the fastest case, and how many
    cases meet issue 15's batch >= 128 targets (>= 1.0x dense masking, >= 0.9x pre-masked);
    then the cases that meet both."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        key = (
            r["net"] if r["family"] == "conv" else r["family"],
            r["dtype"],
            r["mode"],
            r.get("layout") or "-",
        )
        groups.setdefault(key, []).append(r)
    out = [
        f"{'group':<34} {'cases':>5} {'med TFLOP/s':>11} {'% sheet':>7} {'% cuBLAS':>8} "
        f"{'max TFLOP/s':>11} {'>=1.0x dense':>12} {'>=0.9x prem':>11} {'both':>5}"
    ]
    met = []
    for key, rs in sorted(groups.items()):
        tf = statistics.median(r["fused_tflops"] for r in rs)
        top = max(r["fused_tflops"] for r in rs)
        sheet = DATASHEET_TFLOPS.get(key[1])
        dense = sum((r["speedup"].get("dense_masking") or 0) >= 1.0 for r in rs)
        prem = sum((r["speedup"].get("premasked") or 0) >= 0.9 for r in rs)
        both = sum(
            (r["speedup"].get("dense_masking") or 0) >= 1.0
            and (r["speedup"].get("premasked") or 0) >= 0.9
            for r in rs
        )
        out.append(
            f"{' '.join(key):<34} {len(rs):>5} {tf:>11.1f} "
            f"{(f'{tf / sheet:.1%}' if sheet else '-'):>7} "
            f"{tf / gpu.peak_tflops[key[1]]:>8.1%} {top:>11.1f} {dense:>12} {prem:>11} "
            f"{both:>5}"
        )
        met += [
            r["id"]
            for r in rs
            if (r["speedup"].get("dense_masking") or 0) >= 1.0
            and (r["speedup"].get("premasked") or 0) >= 0.9
        ]
    return out + ["both targets met by:"] + [f"  {i}" for i in met]


def cmd_predict(args) -> int:
    chosen = select(grid(args), args)
    for slug in args.gpu:
        gpu = GPUS[slug]
        if args.l2_gbps:  # a sensitivity check of the model's L2 assumption, never a report
            gpu = replace(gpu, l2_gbps=args.l2_gbps, name=f"{gpu.name}, L2 {args.l2_gbps:g} GB/s")
        doc = predict_doc(gpu, chosen, what_if=args.what_if)
        if args.json:
            out = Path(args.json)
            if len(args.gpu) > 1:
                out = out.with_name(f"{out.stem}-{slug}{out.suffix}")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(doc, separators=(",", ":")) + "\n")  # compact: large
            print(f"wrote {out}: {len(doc['records'])} cases predicted on {gpu.name}")
        if args.summary:
            print(f"# {doc['meta']['device']}: summary")
            print("\n".join(summary_rows(doc["records"], gpu)))
        if args.print or not (args.json or args.summary):
            print(f"# {doc['meta']['device']}")
            print(f"{'case':<56} {'fused us':>9} {'x dense':>7} {'x prem|sep':>10} {'bound':>8}")
            for r in doc["records"]:
                s = r["speedup"]
                other = s.get("premasked", s.get("separate_fused"))
                print(
                    f"{r['id'][:56]:<56} {r['variants']['fused']['ms'] * 1e3:9.1f} "
                    f"{s.get('dense_masking') or 0:7.2f} {other or 0:10.2f} "
                    f"{r['predicted']['bound']:>8}"
                )
    return 0


def cmd_calibrate(args) -> int:
    report = calibrate.calibrate(
        [Path(p) for p in args.runs] or None, write=None if args.no_write else predict.CONSTANTS
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    held = report["groups"]["unchanged"]["held_out"]
    limit = args.max_error
    if held["median_abs_error"] is not None and held["median_abs_error"] > limit:
        print(
            f"calibrate: held-out median error {held['median_abs_error']:.1%} of the "
            f"unchanged cases exceeds {limit:.0%}"
        )
        return 1
    return 0


def _side(spec: str, gpu, chosen) -> dict:
    """Predicted records (by id) for one side of ``compare``."""
    path = Path(spec)
    if spec.startswith("git:"):
        rel = resources.TABLE.relative_to(HERE.parent)
        text = subprocess.run(
            ["git", "show", f"{spec[4:]}:{rel}"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        table = json.loads(text)
    elif path.suffix == ".so":
        table = resources.extract(str(path))
    else:
        doc = json.loads(path.read_text())
        if "records" in doc:  # a predict JSON (or a measured run)
            return {r["id"]: r for r in doc["records"]}
        table = doc
    return {r["id"]: r for r in predict_doc(gpu, chosen, table)["records"]}


def cmd_compare(args) -> int:
    gpu = GPUS[args.gpu[0]]
    chosen = select(grid(args), args)
    before, after = _side(args.before, gpu, chosen), _side(args.after, gpu, chosen)
    ids = [c.id for c in chosen if c.id in before and c.id in after]
    print(f"# {gpu.name}, predicted: {args.before} -> {args.after}")
    print(f"{'case':<56} {'before us':>10} {'after us':>10} {'change':>7} {'x dense':>12}")
    ratios = []
    for i in ids:
        b, a = before[i]["variants"]["fused"]["ms"], after[i]["variants"]["fused"]["ms"]
        ratios.append(a / b)
        if args.all or abs(a / b - 1) > 0.005:
            xb = before[i]["speedup"].get("dense_masking") or 0
            xa = after[i]["speedup"].get("dense_masking") or 0
            print(
                f"{i[:56]:<56} {b * 1e3:10.1f} {a * 1e3:10.1f} {a / b - 1:+7.1%} "
                f"{xb:5.2f}->{xa:5.2f}"
            )
    if ratios:
        print(
            f"{len(ids)} cases; {sum(1 for r in ratios if abs(r - 1) > 0.005)} changed; "
            f"median after/before {statistics.median(ratios):.3f}"
        )
    return 0


def host_ratio(overhead: dict) -> dict:
    """Today's fused call in plain torch ops, from a bench_overhead.py JSON: its linear
    inference form (grad mode on, as bench_ops.py calls it), fused over F.linear, best times.
    The conv forms are not used: on a CPU their calls are mostly the convolution itself."""
    [r] = [r for r in overhead["records"] if (r["family"], r["form"]) == ("linear", "inference")]
    fused, plain = r["variants"]["fused"]["us_min"], r["variants"]["torch"]["us_min"]
    return {
        "fused_over_torch_op": fused / plain,
        "fused_us": fused,
        "torch_us": plain,
        "device": overhead["device"],
        "torch": overhead["torch"],
    }


def cmd_host(args) -> int:
    block = host_ratio(json.loads(Path(args.overhead).read_text()))
    block["from"] = (
        str(Path(args.overhead).resolve().relative_to(HERE.parent))
        if Path(args.overhead).resolve().is_relative_to(HERE.parent)
        else args.overhead
    )
    block["rule"] = (
        "host time of a fused inference call = fused_over_torch_op x "
        "host_torch_op_us (a plain torch op on the measured H100 host)"
    )
    doc = json.loads(predict.CONSTANTS.read_text())
    doc["host_now"] = block
    predict.CONSTANTS.write_text(json.dumps(doc, indent=1) + "\n")
    c = predict.load_constants()
    print(
        f"host_now: fused {block['fused_us']:.2f} us / F.linear {block['torch_us']:.2f} us "
        f"= {block['fused_over_torch_op']:.3f} on {block['device']}; a fused call on the H100 "
        f"host: {block['fused_over_torch_op'] * c.host_torch_op_us:.1f} us (was "
        f"{c.host_fused_us:.1f} us, fitted on the 2026-11-27 run)"
    )
    return 0


def cmd_resources(args) -> int:
    so = args.so or resources.built_extension()
    table = resources.extract(so)
    out = Path(args.out) if args.out else resources.TABLE
    resources.write_table(table, out)
    print(f"wrote {out}: {len(table['kernels'])} kernels from {so} ({table['cuobjdump']})")
    return 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def filters(q):
        q.add_argument("--gpu", action="append", choices=sorted(GPUS), default=None)
        q.add_argument("--quick", action="store_true", help="the quick grid of bench_ops.py")
        q.add_argument("--family", action="append", choices=("linear", "conv", "multitask"))
        q.add_argument("--dtype", action="append", choices=cases.DTYPES)
        q.add_argument("--mode", action="append", choices=("inference", "training"))
        q.add_argument("--batch", action="append", type=int)
        q.add_argument("--layer", action="append", help="layer name, e.g. 4096x4096, conv3_2")
        q.add_argument(
            "--layout",
            action="append",
            choices=("nchw", "nhwc"),
            help="conv cases' activation layout",
        )

    q = sub.add_parser("predict", help="predicted times of the benchmark cases")
    filters(q)
    q.add_argument("--json", help="write the predictions (one file per --gpu)")
    q.add_argument("--print", action="store_true", help="also print a table")
    q.add_argument(
        "--l2-gbps",
        type=float,
        help="assume this L2 -> SM bandwidth (a sensitivity check; the model's is 5500 GB/s)",
    )
    q.add_argument(
        "--summary",
        action="store_true",
        help="print per group the share of peak and issue 15's targets met",
    )
    q.add_argument(
        "--what-if",
        choices=sorted(whatif.SCENARIOS),
        help="cost the tiled tensor-core launches as a main loop not built (perfmodel/whatif.py)",
    )
    q = sub.add_parser("calibrate", help="fit on half the measured cases, report the rest")
    q.add_argument("runs", nargs="*", help="bench.json files (default: benchmarks/results/*)")
    q.add_argument("--json", help="write the full report (every point)")
    q.add_argument("--no-write", action="store_true", help="leave constants.json as it is")
    q.add_argument(
        "--max-error",
        type=float,
        default=0.25,
        help="fail above this held-out median error of the unchanged group",
    )
    q = sub.add_parser("compare", help="before/after predictions of a kernel change")
    q.add_argument("before")
    q.add_argument("after")
    q.add_argument("--all", action="store_true", help="print unchanged cases too")
    filters(q)
    q = sub.add_parser(
        "host", help="set today's host cost of a fused call from a bench_overhead.py --json run"
    )
    q.add_argument("overhead")
    q = sub.add_parser("resources", help="regenerate the sm_90 resource table")
    q.add_argument("--so", help="the built extension (default: cpg_kernels/_C*.so)")
    q.add_argument("--out", help=f"where to write (default {resources.TABLE})")
    args = p.parse_args(argv)
    if getattr(args, "gpu", None) is None and args.command in ("predict", "compare"):
        args.gpu = ["h100-sxm", "h200-sxm"] if args.command == "predict" else ["h100-sxm"]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return {
        "predict": cmd_predict,
        "calibrate": cmd_calibrate,
        "compare": cmd_compare,
        "resources": cmd_resources,
        "host": cmd_host,
    }[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
