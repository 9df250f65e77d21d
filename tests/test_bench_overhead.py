"""benchmarks/bench_overhead.py runs in its quick CPU mode and writes well-formed records.

Only the shape of the output is checked: speed targets live in the benchmark's report,
never in a timed test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_overhead.py"


def test_quick_cpu_run_writes_a_record_per_case(tmp_path):
    out = tmp_path / "overhead.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--device", "cpu", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "bench_overhead" and doc["device_type"] == "cpu"
    assert doc["threads"] == 1 and doc["quick"] is True
    cases = {(r["family"], r["form"]) for r in doc["records"]}
    assert cases == {
        (f, m) for f in ("linear", "conv") for m in ("inference", "inference_no_grad", "training")
    }
    for r in doc["records"]:
        assert set(r["variants"]) == {"fused", "dense_masking", "torch"}
        for t in r["variants"].values():
            assert 0 < t["us_min"] <= t["us_median"]
        want = r["variants"]["fused"]["us_min"] / r["variants"][r["baseline"]]["us_min"]
        assert abs(r["ratio"] - want) < 1e-9 and r["met"] == (r["ratio"] <= r["target"])
        # The table names every case.
        assert f"{r['family']} {r['form']}" in proc.stdout
