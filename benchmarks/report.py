#!/usr/bin/env python3
"""Turn bench_ops.py JSON into one markdown report per device, judged against issue 8's targets.

    python3 benchmarks/report.py bench.json [more.json ...] --out benchmarks/results

writes ``OUT/<device-slug>.md`` (tables per family, a verdict per target) and,
where matplotlib imports, ``OUT/<device-slug>.png`` (speed-up against batch).
Several files of one device are merged; a case measured twice keeps the later
file's record.

The JSON of ``benchmarks/model.py predict`` renders the same way as a **predicted** report:
every table says so, and a baseline taken from a measured run is marked ``*``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import BATCHES, CONV_LAYERS, DTYPES, LINEAR_LAYERS  # noqa: E402

MIB = 1 << 20


# ------------------------------------------------------------------------------ targets


@dataclass(frozen=True)
class Target:
    text: str
    metric: str  # a baseline of record["speedup"], or "memory" (bytes saved / weight bytes)
    threshold: float
    family: tuple[str, ...]
    mode: str
    batch: tuple[int, int]  # inclusive range
    late_only: bool = False
    tasks: int = 1

    def applies(self, r: dict) -> bool:
        if self.metric == "memory" and "peak_bytes" not in r:
            return False  # measured on CUDA only
        return (
            r["family"] in self.family
            and r["mode"] == self.mode
            and self.batch[0] <= r["batch"] <= self.batch[1]
            and (r["late"] or not self.late_only)
            and r["tasks"] == self.tasks
        )

    def value(self, r: dict) -> float | None:
        if self.metric == "memory":
            return memory_saving(r)
        return r.get("speedup", {}).get(self.metric)


def memory_saving(r: dict) -> float | None:
    """Peak memory of a dense-masking training step minus fused's, in weight sizes."""
    peak = r.get("peak_bytes", {})
    if "fused" not in peak or "dense_masking" not in peak:
        return None
    return (peak["dense_masking"] - peak["fused"]) / r["weight_bytes"]


_GEMM = ("linear", "conv")
_ANY = (1, 1 << 30)
TARGETS = [
    Target(
        "Inference, batch 1-16, linear and late conv layers: fused >= 2.5x dense masking",
        "dense_masking",
        2.5,
        _GEMM,
        "inference",
        (1, 16),
        late_only=True,
    ),
    Target(
        "Inference, batch 1-16, linear and late conv layers: fused >= 0.85x pre-masked",
        "premasked",
        0.85,
        _GEMM,
        "inference",
        (1, 16),
        late_only=True,
    ),
    Target(
        "Inference, batch >= 128: fused >= 1.0x dense masking",
        "dense_masking",
        1.0,
        _GEMM,
        "inference",
        (128, _ANY[1]),
    ),
    Target(
        "Inference, batch >= 128: fused >= 0.9x pre-masked",
        "premasked",
        0.9,
        _GEMM,
        "inference",
        (128, _ANY[1]),
    ),
    Target(
        "Training step, batch <= 32: fused >= 1.3x dense masking",
        "dense_masking",
        1.3,
        _GEMM,
        "training",
        (1, 32),
    ),
    Target(
        "Training step, batch >= 128: fused >= 1.0x dense masking",
        "dense_masking",
        1.0,
        _GEMM,
        "training",
        (128, _ANY[1]),
    ),
    Target(
        "Training step peak memory: below dense masking's by >= one weight-sized temporary "
        "(value: bytes saved / weight bytes)",
        "memory",
        1.0,
        _GEMM,
        "training",
        _ANY,
    ),
    Target(
        "Multi-task, T = 8, batch 1: fused >= 5x 8 dense-masking passes",
        "dense_masking",
        5.0,
        ("multitask",),
        "inference",
        (1, 1),
        tasks=8,
    ),
]


def limiting_factor(r: dict) -> str:
    """What holds a case back, read off its floor (and, predicted, the model's bound)."""
    text = _measured_limit(r)
    if r.get("predicted"):
        text += f" (model: {r['predicted']['bound']}-bound)"
    return text


def _measured_limit(r: dict) -> str:
    fused_us = r["variants"]["fused"]["ms"] * 1e3
    of_floor = r["fused_of_floor"]
    bound = r["floor_bound"]
    if of_floor >= 0.8:
        return f"fused at {of_floor:.0%} of the {bound} floor: near this device's limit"
    if fused_us < 20 and of_floor < 0.3:
        return (
            f"launch/overhead-bound: fused takes {fused_us:.1f} us against a "
            f"{r['floor_ms'] * 1e3:.1f} us {bound} floor"
        )
    return f"kernel efficiency: fused at {of_floor:.0%} of the {bound} floor"


def judge(target: Target, records: list[dict], dtype: str) -> dict:
    """Verdict of one target in one precision: MET only if every case it covers meets it.

    Also the median and worst value with the worst case and, if that case misses, what
    limits it; ``notes`` counts cases that could not be judged on their numbers.
    """
    cases = [r for r in records if r["dtype"] == dtype and target.applies(r)]
    if not cases:
        return {"verdict": "NOT RUN", "cases": 0}
    values = [(target.value(r), r) for r in cases if target.value(r) is not None]
    checked = [
        (v, r) for v, r in values if r.get("predicted") or r.get("check", {}).get("ok", False)
    ]
    passed = [r for v, r in checked if v >= target.threshold]
    out = {
        "verdict": "MET" if len(passed) == len(cases) else "MISSED",
        "cases": len(cases),
        "passed": len(passed),
        "notes": [],
    }
    if len(values) < len(cases):
        out["notes"].append(f"{len(cases) - len(values)} without a number (a variant failed)")
    if len(checked) < len(values):
        out["notes"].append(f"{len(values) - len(checked)} failed the output check")
    if values:
        out["median"] = statistics.median(v for v, _ in values)
        out["worst"], worst = min(values, key=lambda vr: vr[0])
        out["worst_case"] = worst["id"]
        if out["worst"] < target.threshold:
            out["limit"] = (
                memory_text(worst) if target.metric == "memory" else limiting_factor(worst)
            )
    return out


def memory_text(r: dict) -> str:
    peak = r["peak_bytes"]
    return (
        f"peak {peak['fused'] / MIB:.3g} MiB fused vs {peak['dense_masking'] / MIB:.3g} MiB "
        f"dense, weight {r['weight_bytes'] / MIB:.3g} MiB"
    )


# ----------------------------------------------------------------------------- loading


def load(paths: list[Path]) -> dict[str, dict]:
    """Runs grouped by device slug: ``{slug: {"runs": [doc, ...], "records": [...]}}``."""
    devices: dict[str, dict] = {}
    for path in paths:
        doc = json.loads(path.read_text())
        dev = devices.setdefault(doc["meta"]["device_slug"], {"runs": [], "by_id": {}})
        dev["predicted"] = bool(doc["meta"].get("predicted"))
        dev["runs"].append(doc)
        for r in doc["records"]:
            dev["by_id"][r["id"]] = r
    for dev in devices.values():
        dev["records"] = sorted(dev.pop("by_id").values(), key=_order)
    return devices


_LAYER_ORDER = {(lay.net, lay.name): i for i, lay in enumerate(LINEAR_LAYERS + CONV_LAYERS)}


def _order(r: dict) -> tuple:
    return (
        DTYPES.index(r["dtype"]) if r["dtype"] in DTYPES else len(DTYPES),
        _LAYER_ORDER.get((r["net"], r["layer"]), len(_LAYER_ORDER)),
        r.get("layout") == "nhwc",
        r["tasks"],
        r["batch"],
    )


def _layer(r: dict) -> str:
    """The layer column: channels_last conv cases say so."""
    return r["layer"] + (" (NHWC)" if r.get("layout") == "nhwc" else "")


# ---------------------------------------------------------------------------- markdown


def _ms(r: dict, name: str) -> str:
    if name in r["variants"]:
        measured = name in r.get("predicted", {}).get("baselines_from_measurement", ())
        return f"{r['variants'][name]['ms']:.4g}" + ("*" if measured else "")
    return "error" if name in r["errors"] else "-"


def _x(r: dict, name: str) -> str:
    v = r.get("speedup", {}).get(name)
    return "-" if v is None else f"{v:.2f}"


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _check_text(r: dict) -> str:
    c = r.get("check")
    if c is None:
        return "-"
    return f"{'ok' if c['ok'] else 'FAIL'} {c['rel_err']:.1e}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(row) + " |" for row in rows
    ]


def _floor(r: dict) -> str:
    return f"{r['floor_ms']:.4g} ({r['floor_bound'][:3]})"


def _rates(r: dict) -> list[str]:
    return [
        _num(r.get("fused_tflops"), ".3g"),
        _num(r.get("fused_gbps"), ".0f"),
        _num(r.get("fused_of_floor") and 100 * r["fused_of_floor"], ".0f"),
    ]


def inference_table(records: list[dict]) -> list[str]:
    header = [
        "layer",
        "batch",
        "dtype",
        "fused ms",
        "dense ms",
        "dense cached ms",
        "premasked ms",
        "floor ms",
        "x dense",
        "x cached",
        "x premasked",
        "TFLOP/s",
        "GB/s",
        "% floor",
        "check",
    ]
    rows = [
        [
            _layer(r),
            str(r["batch"]),
            r["dtype"],
            _ms(r, "fused"),
            _ms(r, "dense_masking"),
            _ms(r, "dense_masking_cached"),
            _ms(r, "premasked"),
            _floor(r),
            _x(r, "dense_masking"),
            _x(r, "dense_masking_cached"),
            _x(r, "premasked"),
            *_rates(r),
            _check_text(r),
        ]
        for r in records
    ]
    return _table(header, rows)


def training_table(records: list[dict]) -> list[str]:
    header = [
        "layer",
        "batch",
        "dtype",
        "fused ms",
        "dense ms",
        "premasked ms",
        "floor ms",
        "x dense",
        "x premasked",
        "TFLOP/s",
        "GB/s",
        "% floor",
        "peak fused MiB",
        "peak dense MiB",
        "saved / weight",
        "check",
    ]
    rows = []
    for r in records:
        peak = r.get("peak_bytes", {})
        rows.append(
            [
                _layer(r),
                str(r["batch"]),
                r["dtype"],
                _ms(r, "fused"),
                _ms(r, "dense_masking"),
                _ms(r, "premasked"),
                _floor(r),
                _x(r, "dense_masking"),
                _x(r, "premasked"),
                *_rates(r),
                _num(peak.get("fused") and peak["fused"] / MIB, ".3g"),
                _num(peak.get("dense_masking") and peak["dense_masking"] / MIB, ".3g"),
                _num(memory_saving(r), ".2f"),
                _check_text(r),
            ]
        )
    return _table(header, rows)


def multitask_table(records: list[dict]) -> list[str]:
    header = [
        "layer",
        "T",
        "batch",
        "dtype",
        "fused ms",
        "T fused ms",
        "T dense ms",
        "T dense cached ms",
        "floor ms",
        "x T fused",
        "x T dense",
        "x T cached",
        "GB/s",
        "% floor",
        "check",
    ]
    rows = [
        [
            r["layer"],
            str(r["tasks"]),
            str(r["batch"]),
            r["dtype"],
            _ms(r, "fused"),
            _ms(r, "separate_fused"),
            _ms(r, "dense_masking"),
            _ms(r, "dense_masking_cached"),
            _floor(r),
            _x(r, "separate_fused"),
            _x(r, "dense_masking"),
            _x(r, "dense_masking_cached"),
            *_rates(r)[1:],
            _check_text(r),
        ]
        for r in records
    ]
    return _table(header, rows)


SECTIONS = [  # title, selection, table
    (
        "Linear layers, inference",
        lambda r: r["family"] == "linear" and r["mode"] == "inference",
        inference_table,
    ),
    (
        "Linear layers, training step",
        lambda r: r["family"] == "linear" and r["mode"] == "training",
        training_table,
    ),
    (
        "VGG16-BN conv layers (CIFAR, 32x32), inference",
        lambda r: r["family"] == "conv" and r["net"] == "vgg16bn" and r["mode"] == "inference",
        inference_table,
    ),
    (
        "VGG16-BN conv layers (CIFAR, 32x32), training step",
        lambda r: r["family"] == "conv" and r["net"] == "vgg16bn" and r["mode"] == "training",
        training_table,
    ),
    (
        "ResNet-50 conv layers (ImageNet, 224x224), inference",
        lambda r: r["family"] == "conv" and r["net"] == "resnet50" and r["mode"] == "inference",
        inference_table,
    ),
    (
        "ResNet-50 conv layers (ImageNet, 224x224), training step",
        lambda r: r["family"] == "conv" and r["net"] == "resnet50" and r["mode"] == "training",
        training_table,
    ),
    (
        "Multi-task inference (T tasks, one shared weight)",
        lambda r: r["family"] == "multitask",
        multitask_table,
    ),
]


PREDICTED_NOTE = (
    "*Predicted by the performance model (benchmarks/model.py), not measured. "
    "Baselines marked \\* are the measured H100 figures (scaled to the H200 by the "
    "model on that GPU; for an NHWC row, its NCHW case's figure where that is "
    "faster than the model's roofline).*"
)


def _predicted_run_lines(doc: dict) -> list[str]:
    m, c = doc["meta"], doc["calibration"]
    peaks = ", ".join(f"{d} {p:.3g}" for d, p in c["peak_tflops"].items())
    return [
        f"- **{m['device']}**: commit `{m['git_commit']}`, predicted {m['started']} from the "
        f"plan query of this build, the kernels' {m.get('resources')} resource table and the "
        "constants fitted by `benchmarks/model.py calibrate`"
        + (
            f"; host time of a fused call {m['host_fused_us']:.1f} us"
            if "host_fused_us" in m
            else ""
        ),
        *(
            [
                f"  - **what-if `{m['what_if']}`**: {m['what_if_text']} (a kernel that does not "
                "exist; benchmarks/perfmodel/whatif.py)"
            ]
            if m.get("what_if")
            else []
        ),
        f"  - assumed: copy {c['copy_gbps']:.0f} GB/s (read + write); matmul peak {peaks} TFLOP/s",
        f"  - {len(doc['records'])} cases predicted",
    ]


def _run_lines(doc: dict) -> list[str]:
    if doc["meta"].get("predicted"):
        return _predicted_run_lines(doc)
    m, c, s = doc["meta"], doc["calibration"], doc["settings"]
    peaks = ", ".join(f"{d} {p:.3g}" for d, p in c["peak_tflops"].items())
    return [
        f"- **{m['device']}**, torch {m['torch']}, CUDA {m['cuda']}, cuDNN {m['cudnn']}, "
        f"commit `{m['git_commit']}`, started {m['started']}, {doc.get('elapsed_s', 0):.0f} s",
        f"  - measured: copy {c['copy_gbps']:.0f} GB/s (read + write); matmul peak "
        f"({c['matmul_n']}^3) {peaks} TFLOP/s",
        f"  - {len(doc['records'])} cases run, {len(doc['not_run'])} not run"
        + (f" (time budget {s['budget_s']:.0f} s)" if s.get("budget_s") else "")
        + f"; {s['repeats']} timed repeats per variant"
        + (
            ""
            if s.get("cudnn_benchmark") is None
            else f"; cuDNN autotuning {'on' if s['cudnn_benchmark'] else 'off'}"
        )
        + ("; **quick mode**" if s.get("quick") else "")
        + (f"; **aborted**: {doc['aborted']}" if doc.get("aborted") else ""),
    ]


def verdict_lines(records: list[dict]) -> list[str]:
    rows = []
    for t in TARGETS:
        for dtype in DTYPES:
            j = judge(t, records, dtype)
            if j["verdict"] == "NOT RUN" and not any(r["dtype"] == dtype for r in records):
                continue  # a precision this run did not measure at all (e.g. tf32 on a CPU)
            if j["verdict"] == "NOT RUN" and any(r.get("predicted") for r in records):
                j["verdict"] = "NOT PREDICTED"  # e.g. peak memory: the model has no figure
            why = "; ".join(([j["limit"]] if "limit" in j else []) + j.get("notes", []))
            rows.append(
                [
                    t.text,
                    dtype,
                    f"**{j['verdict']}**",
                    f"{j.get('passed', 0)}/{j['cases']}",
                    _num(j.get("median"), ".2f"),
                    _num(j.get("worst"), ".2f"),
                    f"`{j['worst_case']}`" if "worst_case" in j else "-",
                    why.replace("|", "\\|") or "-",
                ]
            )
    return _table(
        [
            "target",
            "dtype",
            "verdict",
            "cases met",
            "median",
            "worst",
            "worst case",
            "limiting factor of the worst case; cases not judged",
        ],
        rows,
    )


def markdown(dev: dict, plot: str | None) -> str:
    records = dev["records"]
    predicted = dev.get("predicted", False)
    label = [PREDICTED_NOTE, ""] if predicted else []
    title = f"# cpg-kernels benchmarks: {dev['runs'][-1]['meta']['device']}"
    out = [title + (" -- PREDICTED, not measured" if predicted else ""), ""]
    for doc in dev["runs"]:
        out += _run_lines(doc)
    out += [
        "",
        "How to read this: [benchmarks/README.md](../README.md). `x dense` is how many "
        "times faster the fused op runs than dense masking (> 1: fused wins); `% floor` is "
        "the floor over fused's time.",
        "",
        "## Verdict against the targets of issue 8" + (" (predicted)" if predicted else ""),
        "",
        *label,
        "A target is MET in a precision only if every case it covers meets it (with a "
        "passing output check); the median and worst ratio show by how much.",
        "",
    ]
    out += verdict_lines(records)
    out += ["", plot or "(No plot: matplotlib is not installed where this report was made.)", ""]
    for title, select, table in SECTIONS:
        chosen = [r for r in records if select(r)]
        if chosen:
            out += [f"## {title}" + (" (predicted)" if predicted else ""), "", *label]
            out += table(chosen) + [""]
    problems = [(r["id"], name, err) for r in records for name, err in r["errors"].items()]
    problems += [
        (r["id"], "check", _check_text(r))
        for r in records
        if r.get("check") and not r["check"]["ok"]
    ]
    if problems:
        out += ["## Errors and failed output checks", ""]
        out += _table(
            ["case", "variant", "error"],
            [[f"`{i}`", n, e.replace("|", "\\|")] for i, n, e in problems],
        ) + [""]
    measured = {r["id"] for r in records}
    not_run = {i for doc in dev["runs"] for i in doc["not_run"]} - measured
    if not_run:
        groups = defaultdict(int)
        for i in not_run:
            parts = i.split("/")  # family/layer[/T]/batch/dtype/mode
            groups[(parts[0], parts[-2], parts[-1])] += 1
        out += ["## Not run (time budget)", ""]
        out += [
            f"- {family} {dtype} {mode}: {n} cases"
            for (family, dtype, mode), n in sorted(groups.items())
        ] + [""]
    return "\n".join(out)


# -------------------------------------------------------------------------------- plot


def plot(records: list[dict], path: Path, predicted: bool = False) -> bool:
    """Median speed-up over layers against batch, per family; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import ScalarFormatter
    except ImportError:
        return False
    families = [
        ("linear", lambda r: r["family"] == "linear"),
        ("VGG16-BN conv", lambda r: r["net"] == "vgg16bn"),
        ("ResNet-50 conv", lambda r: r["net"] == "resnet50"),
    ]
    baselines = [("dense_masking", "x dense masking"), ("premasked", "x pre-masked")]
    fig, axes = plt.subplots(len(baselines), len(families), figsize=(15, 8), squeeze=False)
    for row, (baseline, ylabel) in enumerate(baselines):
        for col, (title, select) in enumerate(families):
            ax = axes[row][col]
            for dtype in DTYPES:
                for mode, style in (("inference", "-o"), ("training", "--s")):
                    by_batch = defaultdict(list)
                    for r in records:
                        v = r.get("speedup", {}).get(baseline)
                        if v is not None and select(r) and (r["dtype"], r["mode"]) == (dtype, mode):
                            by_batch[r["batch"]].append(v)
                    if by_batch:
                        batches = sorted(by_batch)
                        ax.plot(
                            batches,
                            [statistics.median(by_batch[b]) for b in batches],
                            style,
                            label=f"{dtype} {mode}",
                        )
            ax.axhline(1.0, color="grey", linewidth=0.8)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log", base=2)
            ax.set_xticks(BATCHES, [str(b) for b in BATCHES])
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.set_title(title)
            ax.set_xlabel("batch")
            if col == 0:
                ax.set_ylabel(ylabel)
            if ax.has_data():
                ax.legend(fontsize=7)
    fig.suptitle(
        ("PREDICTED (performance model): " if predicted else "")
        + "Fused op against batch, median over layers (above 1: fused is faster)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", nargs="+", type=Path, help="bench_ops.py --json output(s)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for slug, dev in load(args.json).items():
        png = args.out / f"{slug}.png"
        drawn = plot(dev["records"], png, dev.get("predicted", False))
        link = f"![fused speed-up against batch]({png.name})" if drawn else None
        md = args.out / f"{slug}.md"
        md.write_text(markdown(dev, link))
        print(f"wrote {md}" + (f" and {png}" if link else " (no plot: matplotlib missing)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
