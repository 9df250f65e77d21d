#!/usr/bin/env python3
"""Seeded-bug probe: does the test suite catch the bugs it should?

Copies the working tree (the files git tracks or would track) to a work folder, builds it
once (USE_CUDA=0 with ccache: the emulator runs the CUDA kernels' source, so kernel bugs
show without a GPU), then for each bug of scripts/seeded_bugs.py: applies its source patch
(a search/replace that must match exactly as often as the bug says, or the probe stops: a
bug list that no longer applies is a broken probe, not a pass), rebuilds if it touched C++,
runs the bug's tests, and restores the file. A bug whose tests all pass SURVIVED.

    python scripts/bug_probe.py                  every bug
    python scripts/bug_probe.py --only ID ...    some of them (--list shows the ids)

Exit status: 0 when every bug is caught, 1 when some survive, 2 when the probe itself
failed (a patch does not apply, the build or the unpatched tests fail). The unpatched run
also reports the largest error-to-bound ratio of the op tests per precision
(cpg_kernels.testing). Incremental: the work folder (default /tmp/cpg-bug-probe) keeps the
build between runs, and ccache keeps every patched object, so a second run takes minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from seeded_bugs import BUGS, Bug  # noqa: E402

CPP_SUFFIXES = {".cpp", ".h", ".cu", ".cuh", ".inc"}


class ProbeError(Exception):
    """The probe cannot judge: a patch no longer applies, a build or the baseline failed."""


def tree_files(root: Path) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    return sorted({p for p in out.decode().split("\0") if p and (root / p).is_file()})


def sync_tree(src: Path, dst: Path) -> None:
    """Makes dst's source files those of src, touching only files that differ (so that the
    incremental build of the previous run stays valid); build outputs in dst are kept."""
    files = tree_files(src)
    dst.mkdir(parents=True, exist_ok=True)
    wanted = set(files)
    for rel in files:
        a, b = src / rel, dst / rel
        if b.is_file() and b.read_bytes() == a.read_bytes():
            continue
        b.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(a, b)
    if (dst / ".git").exists():
        return
    for rel in tree_files_or_empty(dst):
        if rel not in wanted:
            (dst / rel).unlink()


def tree_files_or_empty(dst: Path) -> list[str]:
    """Source files left in dst from an earlier run (dst is no git tree: walk it)."""
    skip = {"build", "__pycache__", ".pytest_cache", ".hypothesis", ".eggs"}
    found = []
    for path in dst.rglob("*"):
        rel = path.relative_to(dst)
        if (
            path.is_file()
            and not (set(rel.parts) & skip)
            and not path.name.endswith(".so")
            and not rel.parts[0].endswith(".egg-info")
        ):
            found.append(str(rel))
    return found


def environment(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        USE_CUDA="0",
        MAX_JOBS=env.get("MAX_JOBS", "2"),
        PYTHONPATH=str(tree),
        CCACHE_BASEDIR=str(tree),
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.pop("FORCE_CUDA", None)
    if Path("/usr/lib/ccache").is_dir():
        env["PATH"] = "/usr/lib/ccache:" + env["PATH"]
    return env


def build(tree: Path, env: dict[str, str], log: Path) -> float:
    start = time.time()
    with open(log, "a") as f:
        proc = subprocess.run(
            [sys.executable, "setup.py", "build_ext", "--inplace"],
            cwd=tree,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    if proc.returncode != 0:
        raise ProbeError(f"the build of {tree} failed: see {log}")
    return time.time() - start


def check_imports_the_copy(tree: Path, env: dict[str, str]) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import cpg_kernels._C as c; print(c.__file__)"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0 or not Path(out.stdout.strip()).resolve().is_relative_to(tree):
        raise ProbeError(f"tests would not import the copy in {tree}: {out.stdout}{out.stderr}")


def run_tests(tree: Path, env: dict[str, str], bug: Bug, extra_env=None) -> tuple[int, str]:
    env = {**env, "CPG_TEST_BACKENDS": bug.backends, **(extra_env or {})}
    if bug.sanitizer:
        cmd = ["bash", "scripts/sanitized_emulator.sh", *bug.tests]
        env["CPG_SANITIZED_DIR"] = str(tree / "build" / "sanitized")
    else:
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            "-rf",
            *bug.tests,
        ]
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def first_failure(output: str) -> str:
    m = re.search(r"^(FAILED|ERROR) (\S+)", output, re.M)
    if m:
        return m.group(2)
    for needle in ("AddressSanitizer", "runtime error", "Segmentation fault", "Fatal Python"):
        if needle in output:
            return f"crash: {needle}"
    return "(no test named)"


def apply(tree: Path, bug: Bug) -> str:
    path = tree / bug.file
    text = path.read_text()
    found = text.count(bug.search)
    if found != bug.count:
        raise ProbeError(
            f"bug {bug.id}: the patch no longer applies to {bug.file} (its search "
            f"text occurs {found} times, expected {bug.count}); update "
            "scripts/seeded_bugs.py"
        )
    path.write_text(text.replace(bug.search, bug.replace))
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="ID", help="probe these bugs only")
    parser.add_argument("--list", action="store_true", help="list the bugs and exit")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cpg-bug-probe"))
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the run of every bug's tests on the unpatched tree",
    )
    parser.add_argument(
        "--skip-build",
        action="store_true",
        help="trust the extension already in the work tree (for bugs that "
        "touch no C++, e.g. a second probe beside a running one)",
    )
    args = parser.parse_args(argv)
    if args.list:
        for bug in BUGS:
            print(f"{bug.id:28s} {bug.file}: {bug.what}")
        return 0
    bugs = BUGS
    if args.only:
        unknown = set(args.only) - {b.id for b in BUGS}
        if unknown:
            parser.error(f"unknown bug ids: {sorted(unknown)}")
        bugs = [b for b in BUGS if b.id in args.only]

    tree = args.workdir.resolve() / "tree"
    log = args.workdir.resolve() / "build.log"
    args.workdir.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    start = time.time()
    try:
        sync_tree(ROOT, tree)
        env = environment(tree)
        if args.skip_build:
            if any(Path(b.file).suffix in CPP_SUFFIXES and not b.sanitizer for b in bugs):
                parser.error("--skip-build: some of these bugs patch C++")
            print(f"tree copied to {tree}; its extension is used as it is", flush=True)
        else:
            print(f"tree copied to {tree}; building (USE_CUDA=0) ...", flush=True)
            print(f"  built in {build(tree, env, log):.0f} s", flush=True)
        check_imports_the_copy(tree, env)
        if not args.no_baseline:
            baseline(tree, env, bugs)
        results = [probe(tree, env, log, bug) for bug in bugs]
    except ProbeError as err:
        print(f"PROBE FAILED: {err}", file=sys.stderr)
        return 2
    survivors = [b for b, (caught, _, _) in zip(bugs, results, strict=True) if not caught]
    print(
        f"\n{len(bugs) - len(survivors)} of {len(bugs)} seeded bugs caught, "
        f"{len(survivors)} survived ({time.time() - start:.0f} s)"
    )
    for bug in survivors:
        print(f"  SURVIVED: {bug.id}: {bug.what}")
    return 1 if survivors else 0


def baseline(tree: Path, env: dict[str, str], bugs: list[Bug]) -> None:
    """Every bug's tests pass on the unpatched tree (else a 'catch' would mean nothing)."""
    plain = [b for b in bugs if not b.sanitizer]
    for backends in sorted({b.backends for b in plain}):
        tests = sorted({t for b in plain if b.backends == backends for t in b.tests})
        report = tree / "build" / f"bounds-{backends.replace(',', '-')}.json"
        report.parent.mkdir(exist_ok=True)
        probe_bug = Bug("baseline", "", "", "", tests, "", backends=backends)
        started = time.time()
        rc, out = run_tests(tree, env, probe_bug, {"CPG_BOUND_REPORT": str(report)})
        if rc != 0:
            raise ProbeError(f"the unpatched tests fail (backends {backends}):\n{out[-3000:]}")
        ratios = json.loads(report.read_text()) if report.exists() else {}
        shown = ", ".join(f"{k} {v:.3f}" for k, v in sorted(ratios.items())) or "none"
        print(
            f"baseline passes ({backends}, {len(tests)} test ids, {time.time() - started:.0f}"
            f" s); largest error / bound: {shown}",
            flush=True,
        )
    if any(b.sanitizer for b in bugs):
        tests = sorted({t for b in bugs if b.sanitizer for t in b.tests})
        rc, out = run_tests(tree, env, Bug("baseline", "", "", "", tests, "", sanitizer=True))
        if rc != 0:
            raise ProbeError(f"the unpatched sanitizer tests fail:\n{out[-3000:]}")
        print("baseline passes under the sanitizers", flush=True)


def probe(tree: Path, env: dict[str, str], log: Path, bug: Bug) -> tuple[bool, str, float]:
    started = time.time()
    original = apply(tree, bug)
    path = tree / bug.file
    rebuild = path.suffix in CPP_SUFFIXES and not bug.sanitizer
    try:
        if rebuild:
            build(tree, env, log)
        rc, out = run_tests(tree, env, bug)
    finally:
        path.write_text(original)
        if rebuild:  # back to the unpatched extension (a ccache hit)
            build(tree, env, log)
    seconds = time.time() - started
    caught = rc != 0
    if rc in (2, 3, 4, 5) and "failed" not in out and not bug.sanitizer:
        caught = False  # collection errors or no tests: that catches nothing
        verdict = f"PROBE ERROR (pytest exit {rc})"
        print(out[-2000:])
    else:
        verdict = f"caught by {first_failure(out)}" if caught else "SURVIVED"
    print(f"{bug.id:28s} {verdict}  [{seconds:.0f} s]", flush=True)
    return caught, verdict, seconds


if __name__ == "__main__":
    sys.exit(main())
