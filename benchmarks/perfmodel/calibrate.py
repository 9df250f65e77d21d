"""Calibration: the model against every measured GPU run, fitted on half, judged on the rest.

Which measured cases can calibrate today's model, from git history (``git log`` of csrc/cuda):

* **2026-11-27 H100** (``benchmarks/results/2026-11-27-h100``). The run's tree was commit
  6f4f751 plus the work committed right after it (its NOTES.md), i.e. the kernels of d6fc611.
  Since then:

  - ``gemm_small_batch.cuh`` changed only in how a block finds its x rows (bfcdfe8: groups of
    16 rows of one task, NCHW outputs): the **small-batch forward is unchanged** for linear
    inference at batch 1 and 8 and for all multi-task cases (the fused call and the T
    separate calls). Today the dispatcher sends the 16-bit and TF32 forwards of those cases
    to the weight-streaming kernel instead (gemm_stream.cuh), so they are compared with the
    small-batch launch the run made (:func:`old_small_batch`). Group ``unchanged``.
  - ``gemm_mma.cuh`` / ``gemm_simt.cuh`` became generic over views (d09d806) and gained
    split-K (6751915, 57e1068): the **per-stage code is the same**, the launch shape is not.
    Linear inference at batch 32-256 is compared with the run's own launch shape (no split:
    :func:`no_split_k`), except 16-bit and TF32 at batch 32, which now take the weight stream
    (not comparable). Group ``mainloop``.
  - The baselines (cuBLAS, cuDNN, torch elementwise ops, the Python reference) are not this
    project's kernels: every measured baseline figure calibrates the library roofline. Group
    ``baselines``.
  - Not calibrated: training steps (the input gradient took the tiled kernels then; now the
    small-batch-grad kernel or split-K), and every fused conv case (conv then ran through
    decoded tiles plus cuDNN; the fused conv kernels came later).

* **Later runs** (any other ``bench.json`` under benchmarks/results, or given on the command
  line): a run whose ``meta.git_commit`` has the same ``csrc/cuda`` as the working tree
  calibrates every fused case (group ``unchanged``) and its baselines; otherwise its baselines
  only. Runs on a GPU the model does not know are skipped with a message.

The split: a (case, variant) pair is held out when the first byte of sha256 of
``"<case id>:<variant>"`` is odd. Constants are fitted on the even half (Nelder-Mead on the mean
|log error|, each constant within a physical range, the two kernel groups together since they
share the latency and issue constants, the baselines apart); the errors printed for the odd half
say how well the model *predicts*.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import statistics
import subprocess
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import cases as bench_cases

from . import predict, resources
from .hardware import MEASURED_DEVICES
from .plan import Launch

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
KNOWN_RUNS = {"2026-11-27-h100": "d6fc611"}  # runs whose bench.json lacks its commit

# Physical ranges the fit keeps each constant in.
BOUNDS = {
    "mem_latency_ns": (300, 2000),
    "cpi": (1, 8),
    "issue_efficiency": (0.2, 1.0),
    "fma_issue_efficiency": (0.05, 1.0),
    "host_fused_us": (5, 60),
    "host_index_us": (0.5, 30),
    "tile_sync_clk": (0, 5000),
    "simt_sync_clk": (0, 5000),
    "tile_issue_efficiency": (0.2, 1.0),
    "host_torch_op_us": (2, 60),
    "vendor_gemm_eff": (0.1, 1.0),
    "vendor_bw_eff": (0.1, 1.0),
    "vendor_conv_eff": (0.05, 1.0),
    "vendor_conv_us": (0.1, 60),
    "host_train_us": (20, 1000),
    "dense_train_passes": (4, 80),
}

# The constants each group fits (kernels.Constants), in fitting order.
FITTED = {
    "unchanged": (
        "mem_latency_ns",
        "cpi",
        "issue_efficiency",
        "fma_issue_efficiency",
        "host_fused_us",
        "host_index_us",
    ),
    "mainloop": ("tile_sync_clk", "simt_sync_clk", "tile_issue_efficiency"),
    "baselines": (
        "host_torch_op_us",
        "vendor_gemm_eff",
        "vendor_bw_eff",
        "vendor_conv_eff",
        "vendor_conv_us",
        "host_train_us",
        "dense_train_passes",
    ),
}


@dataclass(frozen=True)
class Point:
    run: str
    group: str  # unchanged, mainloop, baselines
    case: bench_cases.Case
    variant: str
    measured_s: float

    @property
    def held_out(self) -> bool:
        return held_out(self.case.id, self.variant)


def held_out(case_id: str, variant: str) -> bool:
    """The split: odd first byte of sha256("<case id>:<variant>")."""
    return hashlib.sha256(f"{case_id}:{variant}".encode()).digest()[0] % 2 == 1


def case_from_record(r: dict) -> bench_cases.Case | None:
    layers = {
        (lay.net, lay.name): lay for lay in bench_cases.LINEAR_LAYERS + bench_cases.CONV_LAYERS
    }
    lay = layers.get((r["net"], r["layer"]))
    if lay is None:
        return None
    return bench_cases.Case(
        r["family"],
        lay,
        r["batch"],
        r["dtype"],
        r["mode"],
        r["tasks"],
        channels_last=r.get("layout") == "nhwc",
    )


def no_split_k(case, what, launches: list[Launch]) -> list[Launch]:
    """The launch shape of the 2026-11-27 dispatcher: the tiled kernels without split-K."""
    out = []
    for launch in launches:
        if launch.family in ("split_k::reduce_splits_kernel",):
            continue
        p = dict(launch.params)
        splits = p.get("splits", 1)
        if (
            launch.family in ("mma::masked_gemm_mma_kernel", "simt::masked_gemm_simt_kernel")
            and splits > 1
        ):
            kernel = launch.kernel.replace("split_k::StageSplit<", "", 1).replace(
                "split_k::ReductionSplit<", "", 1
            )
            kernel = kernel[:-1] if kernel.endswith(">>") else kernel
            p["splits"] = 1
            if "stages_per_split" in p:
                p["stages_per_split"] = p["stages"]
            if "per_split" in p:
                p["per_split"] = p["slices"] * p["tile_k"]
            grid = (launch.grid[0], launch.grid[1], launch.grid[2] // splits)
            launch = replace(launch, kernel=kernel, grid=grid, workspace_bytes=0, params=p)
        out.append(launch)
    return out


def small_batch_plan(elem: str, tasks: int, m: int, n: int, k: int, sms: int) -> Launch:
    """The launch of ``gemm_small_batch.cuh`` for a forward GEMM, as its C++ plan() computes it
    (test_model.py checks the two agree where the dispatcher still picks it)."""
    e = {"f32": 4, "f16": 2, "bf16": 2}[elem]
    warps, rows_per_warp, max_rows, budget = 8, 2, 16, 48 * 1024
    warp_chunk = 32 * 4 * (16 // e)
    if tasks == 1:
        group_rows, multitask = min(m, max_rows), False
        x_rows = next(r for r in (1, 2, 4, 8, 16) if m <= r or r == 16)
    else:
        group_rows, multitask = min(tasks, max_rows // m) * m, True
        x_rows = 4 if group_rows <= 4 else 16
    groups = math.ceil(tasks * m / group_rows)
    k_chunks = math.ceil(k / warp_chunk)
    static = 4 * warps * rows_per_warp * x_rows
    slices = 1
    while (
        slices < warps
        and 2 * slices <= k_chunks
        and x_rows * 2 * slices * warp_chunk * e + static <= budget
        and math.ceil(n / (warps // slices * rows_per_warp)) * groups < 2 * sms
    ):
        slices *= 2
    rows_per_block = warps // slices * rows_per_warp
    stage_width = slices * warp_chunk
    params = {
        "M": m,
        "N": n,
        "K": k,
        "tasks": tasks,
        "x_rows": x_rows,
        "group_rows": group_rows,
        "slices": slices,
        "rows_per_block": rows_per_block,
        "stage_width": stage_width,
        "chunks": math.ceil(k / stage_width),
        "static_smem": static,
    }
    kernel = (
        f"small_batch::masked_linear_small_batch_kernel<{elem},{x_rows},"
        f"{'true' if multitask else 'false'}>"
    )
    return Launch(
        kernel,
        (math.ceil(n / rows_per_block), groups, 1),
        256,
        x_rows * slices * warp_chunk * e,
        0,
        params,
    )


def old_small_batch(case, what, launches: list[Launch], sms: int) -> list[Launch]:
    """The 2026-11-27 dispatcher's forward at M <= 16: every dtype on gemm_small_batch.cuh,
    where today 16-bit and TF32 forwards take the weight-streaming kernel (gemm_stream.cuh)."""
    out = []
    for launch in launches:
        if launch.family == "weight_stream::sum_splits_kernel":
            continue
        if launch.family == "weight_stream::masked_linear_stream_kernel":
            p = launch.params
            elem = re.search(r"<(bf16|f16|f32),", launch.kernel).group(1)
            launch = small_batch_plan(elem, p["tasks"], p["M"], p["N"], p["K"], sms)
        out.append(launch)
    return out


def _same_kernels(commit: str | None) -> bool:
    """Whether a run's commit had this checkout's csrc/cuda (a dirty run tree: unknown, no)."""
    if not commit or commit.endswith("-dirty"):
        return False
    r = subprocess.run(
        ["git", "diff", "--quiet", commit, "--", "csrc/cuda"], cwd=ROOT, capture_output=True
    )
    return r.returncode == 0


def points_of_run(path: Path) -> tuple[str, object, list[Point]]:
    """The calibration points of one bench.json, and the GPU it ran on (None: unknown)."""
    doc = json.loads(path.read_text())
    run = path.parent.name
    gpu = MEASURED_DEVICES.get(doc["meta"].get("device"))
    points = []
    known = run in KNOWN_RUNS
    same = not known and _same_kernels(doc["meta"].get("git_commit"))
    for r in doc["records"]:
        case = case_from_record(r)
        if case is None:
            continue
        for name, v in r["variants"].items():
            if name == "fused" or name == "separate_fused":
                if known:
                    if case.family == "multitask" or (
                        case.family == "linear" and case.mode == "inference" and case.batch <= 16
                    ):
                        group = "unchanged"
                    elif case.family == "linear" and case.mode == "inference":
                        if case.batch <= 64 and case.dtype != "fp32":
                            continue  # now the weight stream, which no run has measured
                        group = "mainloop"
                    else:
                        continue
                elif same:
                    group = "unchanged"
                else:
                    continue
            else:
                group = "baselines"
            points.append(Point(run, group, case, name, v["ms"] * 1e-3))
    return run, gpu, points


def predicted_seconds(ctx: predict.Context, p: Point) -> float:
    if p.variant == "fused":
        return predict.fused(ctx, p.case).seconds
    return predict.modeled_baselines(ctx, p.case)[p.variant]


def _contexts(runs, constants, table):
    out = {}
    for run, gpu, _ in runs:
        # A known run measured the host cost of its own code (the fitted host_fused_us); a
        # later run with today's kernels, today's (host_now)
        now = run not in KNOWN_RUNS
        ctx = predict.context(gpu, constants, table, host_now=now)
        ctx_hist = predict.context(gpu, constants, table, host_now=now)
        ctx_hist.rewrite_plan = no_split_k
        ctx_small = predict.context(gpu, constants, table, host_now=now)
        if run in KNOWN_RUNS:
            ctx_small.rewrite_plan = partial(old_small_batch, sms=gpu.sms)
        out[run] = (ctx, ctx_hist, ctx_small)
    return out


def _predict_all(points, ctxs, constants):
    preds = []
    for p in points:
        ctx, hist, small = ctxs[p.run]
        use = hist if p.group == "mainloop" else small if p.group == "unchanged" else ctx
        use.constants = constants
        preds.append(predicted_seconds(use, p))
    return preds


def _loss(points, preds) -> float:
    errs = [abs(math.log(pr / p.measured_s)) for p, pr in zip(points, preds, strict=True)]
    return statistics.fmean(errs) if errs else 0.0


def fit(points: list[Point], ctxs, constants, names, iterations: int = 1500):
    """Nelder-Mead over the log of ``names``, minimizing the mean |log error| of ``points``."""
    from scipy.optimize import minimize  # noqa: PLC0415 (scikit-learn's dependency)

    start = [math.log(max(getattr(constants, n), 1e-3)) for n in names]

    def values(x):
        return {
            n: min(max(math.exp(v), BOUNDS[n][0]), BOUNDS[n][1])
            for n, v in zip(names, x, strict=True)
        }

    def loss(x):
        return _loss(points, _predict_all(points, ctxs, constants.replace(**values(x))))

    best = minimize(
        loss,
        start,
        method="Nelder-Mead",
        options={
            "maxiter": iterations,
            "xatol": 1e-3,
            "fatol": 1e-5,
            "initial_simplex": [start]
            + [
                [v + (0.7 if i == j else 0.0) for j, v in enumerate(start)]
                for i in range(len(start))
            ],
        },
    )
    return constants.replace(**values(best.x)), best.fun


def spearman(a: list[float], b: list[float]) -> float | None:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    if len(a) < 3:
        return None
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    num = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    den = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return num / den if den else None


def summary(points, preds) -> dict:
    errs = [abs(pr - p.measured_s) / p.measured_s for p, pr in zip(points, preds, strict=True)]
    return {
        "count": len(points),
        "median_abs_error": statistics.median(errs) if errs else None,
        "rank_correlation": spearman([p.measured_s for p in points], preds),
    }


def default_runs() -> list[Path]:
    return sorted(p for p in RESULTS.glob("*/bench.json"))


def calibrate(
    paths: list[Path] | None = None,
    table: dict | None = None,
    verbose: bool = True,
    write: Path | None = predict.CONSTANTS,
) -> dict:
    """Fit the constants and report the held-out error; returns the report."""
    table = table if table is not None else resources.load_table()
    runs = []
    for path in paths or default_runs():
        run, gpu, pts = points_of_run(Path(path))
        if gpu is None:
            print(f"calibrate: {path}: a GPU the model does not describe; skipped")
            continue
        runs.append((run, gpu, pts))
    points = [p for _, _, pts in runs for p in pts]
    constants = predict.kernels.Constants()
    ctxs = _contexts(runs, constants, table)
    # The fused groups share the kernels' constants (latency, issue): fitted together.
    for groups, names in (
        (("unchanged", "mainloop"), FITTED["unchanged"] + FITTED["mainloop"]),
        (("baselines",), FITTED["baselines"]),
    ):
        train = [p for p in points if p.group in groups and not p.held_out]
        if train:
            constants, _ = fit(train, ctxs, constants, names)
    preds = _predict_all(points, ctxs, constants)
    report = {
        "constants": {k: getattr(constants, k) for names in FITTED.values() for k in names},
        "runs": [run for run, _, _ in runs],
        "groups": {},
    }
    for group in (*FITTED, "all"):
        sel = [i for i, p in enumerate(points) if group in ("all", p.group)]
        for split in ("fit", "held_out"):
            idx = [i for i in sel if points[i].held_out == (split == "held_out")]
            report["groups"].setdefault(group, {})[split] = summary(
                [points[i] for i in idx], [preds[i] for i in idx]
            )
    report["points"] = [
        {
            "run": p.run,
            "group": p.group,
            "case": p.case.id,
            "variant": p.variant,
            "held_out": p.held_out,
            "measured_us": p.measured_s * 1e6,
            "predicted_us": pr * 1e6,
        }
        for p, pr in zip(points, preds, strict=True)
    ]
    if verbose:
        print_report(report)
    if write is not None:
        doc = {k: report[k] for k in ("constants", "runs", "groups")}
        if Path(write).exists():  # model.py host's block is no fitted constant: kept
            old = json.loads(Path(write).read_text())
            doc.update({k: old[k] for k in ("host_now",) if k in old})
        Path(write).write_text(json.dumps(doc, indent=1) + "\n")
    return report


def print_report(report: dict, cases_shown: int = 400) -> None:
    print(f"{'case':<56} {'variant':<20} {'group':<10} {'meas us':>9} {'pred us':>9} {'err':>6}")
    shown = [p for p in report["points"] if p["held_out"]][:cases_shown]
    for p in shown:
        err = (p["predicted_us"] - p["measured_us"]) / p["measured_us"]
        print(
            f"{p['case'][:56]:<56} {p['variant']:<20} {p['group']:<10} "
            f"{p['measured_us']:9.1f} {p['predicted_us']:9.1f} {err:+6.0%}"
        )
    print()
    print("held-out cases (sha256 of 'case:variant' odd); constants fitted on the others")
    print(f"{'group':<10} {'split':<9} {'count':>5} {'median |err|':>12} {'rank corr':>9}")
    for group, splits in report["groups"].items():
        for split, s in splits.items():
            med = "-" if s["median_abs_error"] is None else f"{s['median_abs_error']:.1%}"
            rho = "-" if s["rank_correlation"] is None else f"{s['rank_correlation']:.3f}"
            print(f"{group:<10} {split:<9} {s['count']:>5} {med:>12} {rho:>9}")
    print("fitted constants: " + ", ".join(f"{k}={v:.4g}" for k, v in report["constants"].items()))
