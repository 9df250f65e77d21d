#!/usr/bin/env python3
"""Summarize a scripts/gpu_check.sh run into OUT/gpu_check.md and OUT/gpu_check.json.

    gpu_check_summary.py STEPS_TSV LOG_DIR OUT TOTAL_S

STEPS_TSV holds one line per step: name, status, exit code, seconds; LOG_DIR
holds each step's output as NAME.log; OUT holds the junit XML and bench.json.
A step's status is sharpened here from its output: a sanitizer run is ``ok``
only with a zero error summary and every driver call passing; a pytest run
that collected nothing is ``empty``, one that skipped every test ``all skipped``.
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from report import verdict_lines  # noqa: E402

KEY_LINES = 6  # at most this many lines of a step's output in the summary


def junit_counts(path: Path) -> dict | None:
    """Counts and the first failing tests of a junit XML file."""
    if not path.exists():
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {
        k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")
    }
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed_tests"] = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in root.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ][:20]
    return counts


def progress_counts(text: str) -> dict:
    """Counts from ``pytest -q`` progress lines (``..F.s  [ 40%]``): all there is of a run
    killed before it wrote its junit XML."""
    marks = "".join(re.findall(r"^([.FEsxX]+)(?:\s*\[\s*\d+%\])?\s*$", text, re.M))
    counts = {
        "passed": marks.count(".") + marks.count("X"),
        "failures": marks.count("F"),
        "errors": marks.count("E"),
        "skipped": marks.count("s") + marks.count("x"),
    }
    return {"tests": len(marks), **counts, "partial": True}


def grep(text: str, pattern: str, limit: int = KEY_LINES) -> list[str]:
    return [line.strip() for line in text.splitlines() if re.search(pattern, line)][:limit]


def tail(text: str, n: int = 3) -> list[str]:
    return [line.strip() for line in text.strip().splitlines()[-n:]]


def sanitizer(text: str, tool: str) -> tuple[dict, list[str]]:
    """Error counts of a compute-sanitizer log, and the lines that say so."""
    driver = re.findall(r"^(\d+) calls failed", text, re.M)
    counts = {"driver_calls_failed": int(driver[-1]) if driver else None}
    if tool == "racecheck":
        found = re.findall(
            r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, "
            r"(\d+) warnings?\)",
            text,
        )
        counts["hazards"] = sum(int(h) for h, _, _ in found) if found else None
        counts["errors"] = sum(int(e) for _, e, _ in found) if found else None
        lines = grep(text, r"RACECHECK SUMMARY|Race reported|calls failed")
    else:
        found = re.findall(r"ERROR SUMMARY: (\d+) errors?", text)
        counts["errors"] = sum(int(e) for e in found) if found else None
        lines = grep(text, r"ERROR SUMMARY|Invalid|out of bounds|calls failed")
    return counts, lines


def is_sanitizer(step: str) -> bool:
    """memcheck, racecheck, or one of their per-group runs (racecheck-conv)."""
    return step.split("-")[0] in ("memcheck", "racecheck")


def summarize(name: str, status: str, text: str, out: Path) -> tuple[str, list[str], dict]:
    """(status, key lines, counts) of one step."""
    counts: dict = {}
    if name == "environment":
        lines = grep(text, r"^torch |release \d|Compute Sanitizer|Driver Version")
    elif name == "build":
        lines = grep(text, r"error|falling back|Successfully installed") or tail(text)
    elif name == "driver":
        lines = grep(text, r"^FAIL|calls failed")
    elif name.startswith("pytest-"):
        counts = junit_counts(out / f"junit-{name.removeprefix('pytest-')}.xml") or progress_counts(
            text
        )
        lines = grep(text, r"(passed|failed|error|skipped|no tests ran).* in [\d.]+s") or tail(text)
        if re.search(r"no tests ran|collected 0 items", text) and status == "failed":
            status = "empty"
        elif status == "ok" and counts.get("tests") and counts["skipped"] == counts["tests"]:
            status = "all skipped"  # e.g. the CUDA kernels were not built
    elif is_sanitizer(name):
        counts, lines = sanitizer(text, name.split("-")[0])
        clean = counts["errors"] == 0 and counts["driver_calls_failed"] == 0
        if status == "ok" and not clean:
            status = "failed"
        if counts["errors"] is None:
            lines.append("no sanitizer summary in the output")
    elif name == "kernels":  # the per-kernel breakdown stays in the log
        lines = grep(text, r"^FAIL|cases failed") + ["per-kernel times: gpu_check.log"]
    elif name == "bench":
        lines = grep(
            text,
            r"^device:|^copy |cases( \(.*\))? in .* s;|budget of|context lost|"
            r"Traceback|Error|wrote ",
        )
    else:
        lines = []
    if status != "ok":  # the end of the output says why
        lines += [line for line in tail(text, 2) if line not in lines]
    return status, lines or tail(text), counts


def main(argv: list[str]) -> int:
    steps_tsv, log_dir, out, total_s = Path(argv[1]), Path(argv[2]), Path(argv[3]), int(argv[4])
    steps = []
    for row in steps_tsv.read_text().splitlines():
        name, status, rc, seconds = row.split("\t")
        log = log_dir / f"{name}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        status, lines, counts = summarize(name, status, text, out)
        steps.append(
            {
                "step": name,
                "status": status,
                "rc": None if rc == "-" else int(rc),
                "seconds": int(seconds),
                "key_lines": lines,
                "counts": counts,
            }
        )

    bench = out / "bench.json"
    records = json.loads(bench.read_text())["records"] if bench.exists() else []
    doc = {
        "total_s": total_s,
        "steps": steps,
        "files": sorted(p.name for p in out.iterdir() if p.is_file()),
    }
    (out / "gpu_check.json").write_text(json.dumps(doc, indent=1))

    md = [
        "# GPU check",
        "",
        f"Total {total_s} s. Full output: `gpu_check.log`.",
        "",
        "| step | status | seconds | key lines |",
        "|---|---|---|---|",
    ]
    for s in steps:
        key = "<br>".join(line.replace("|", "\\|") for line in s["key_lines"])
        md.append(f"| {s['step']} | **{s['status']}** | {s['seconds']} | {key} |")
    tests = [(s["step"], s["counts"]) for s in steps if s["step"].startswith("pytest-")]
    if tests:
        md += [
            "",
            "## Tests",
            "",
            "| run | tests | passed | failed | errors | skipped |",
            "|---|---|---|---|---|---|",
        ]
        md += [
            f"| {name}{' (partial: no junit XML)' if c.get('partial') else ''} | "
            f"{c.get('tests', '-')} | {c.get('passed', '-')} | {c.get('failures', '-')} | "
            f"{c.get('errors', '-')} | {c.get('skipped', '-')} |"
            for name, c in tests
        ]
        for name, c in tests:
            if c.get("failed_tests"):
                md += ["", f"Failing in {name}:", ""] + [f"- `{t}`" for t in c["failed_tests"]]
    sans = [(s["step"], s["counts"]) for s in steps if is_sanitizer(s["step"])]
    if sans:
        md += [
            "",
            "## compute-sanitizer",
            "",
            "| tool | errors | hazards | driver calls failed |",
            "|---|---|---|---|",
        ]
        md += [
            f"| {name} | {c.get('errors', '-')} | {c.get('hazards', '-')} | "
            f"{c.get('driver_calls_failed', '-')} |"
            for name, c in sans
        ]
        md += [
            "",
            "racecheck covers only the project's kernels (names containing `cpg`). "
            "`None`: no summary line in the output (the run did not finish).",
        ]
    if records:
        md += [
            "",
            "## Benchmark verdicts",
            "",
            "Tables and plot: the device report beside this file.",
            "",
        ]
        md += verdict_lines(records)
    (out / "gpu_check.md").write_text("\n".join(md) + "\n")
    print("\n".join(f"{s['step']:<14} {s['status']:<8} {s['seconds']:>4} s" for s in steps))
    print(f"wrote {out / 'gpu_check.md'} and {out / 'gpu_check.json'}")
    return 0 if all(s["status"] == "ok" for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
