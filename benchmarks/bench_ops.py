#!/usr/bin/env python3
"""Time the fused CPG ops against dense masking and against the hardware floor.

For every case (layer, batch, precision, inference or training) it times:

* ``fused``: our op (``masked_linear`` / ``masked_conv2d`` from a task's packed
  bits; ``cpg_linear`` / ``cpg_conv2d`` forward+backward from owner and the
  real-valued picking mask; ``masked_linear_multitask`` / ``masked_conv2d_multitask`` for T
  tasks);
* ``dense_masking``: what a user does from the same stored state: unpack the
  bits to a bool mask, ``W * mask``, then ``F.linear`` / ``F.conv2d``
  (training: ``cpg_kernels.reference``, the paper's way, through autograd);
* ``dense_masking_cached``: the same with the bool mask kept in memory;
* ``premasked``: ``F.linear`` / ``F.conv2d`` on a prebuilt ``W_eff`` (the limit
  for compute-bound cases);
* multi-task only: ``separate_fused``, T calls of the single-task fused op.

Times are medians over repeats of CUDA-event-timed loops (host clock on the
CPU), after warm-up, rotating among several input sets so the caches do not
flatter. The run also measures copy bandwidth and matmul peak to give each case
its floor. Usage: see benchmarks/README.md, or ``--help``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # an in-place build works without installing; an install still wins

from cases import (  # noqa: E402
    DTYPES,
    Case,
    floor_seconds,
    full_grid,
    quick_grid,
    speed_ratio,
)

TASK = 3  # the task whose active set the single-task cases use
THRESHOLD = 5e-3
TORCH_DTYPE = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}
# ||fused - premasked|| / ||premasked|| above this flags a case: both sides round differently.
CHECK_TOLERANCE = {"fp32": 1e-4, "tf32": 5e-3, "bf16": 2e-2}
CPU_CACHE_BYTES = 32 << 20  # nominal last-level cache on the host: sizes the rotation only


@dataclass(frozen=True)
class Settings:
    warmup: int  # calls before timing (at least one per input set)
    repeats: int  # timed loops; the median is reported
    min_repeat_s: float  # each timed loop runs at least this long
    max_sets: int  # input sets rotated through
    cache_bytes: int  # rotate until the sets' footprint is twice this


@dataclass(frozen=True)
class Timing:
    median_s: float
    min_s: float
    max_s: float
    repeats: int
    iters: int

    def to_json(self) -> dict:
        return {
            "ms": self.median_s * 1e3,
            "ms_min": self.min_s * 1e3,
            "ms_max": self.max_s * 1e3,
            "repeats": self.repeats,
            "iters": self.iters,
        }


class Clock:
    """Times work on one device: CUDA events on the GPU, the host clock on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn) -> float:
        """Seconds that ``fn()`` takes on the device."""
        if not self.cuda:
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3


def measure(run, n_sets: int, clock: Clock, cfg: Settings) -> Timing:
    """Median time per call of ``run(i)``, ``i`` cycling through the input sets."""

    def calls(first: int, count: int) -> None:
        for i in range(first, first + count):
            run(i % n_sets)

    calls(0, max(cfg.warmup, n_sets))
    clock.sync()
    per_call = clock.time(lambda: calls(0, n_sets)) / n_sets
    iters = max(1, math.ceil(cfg.min_repeat_s / max(per_call, 1e-7)))
    samples = [clock.time(lambda r=r: calls(r * iters, iters)) / iters for r in range(cfg.repeats)]
    return Timing(statistics.median(samples), min(samples), max(samples), cfg.repeats, iters)


@contextmanager
def precision(dtype: str):
    """TF32 tensor cores for the "tf32" cases only (the ops read the same switches as torch)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    allow = dtype == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# -------------------------------------------------------------------------- calibration


def copy_bandwidth(nbytes: int, device: torch.device, clock: Clock, cfg: Settings) -> float:
    """Bytes read plus written per second by a device-to-device copy of ``nbytes``."""
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / measure(lambda i: dst.copy_(src), 1, clock, cfg).median_s


def matmul_peak(n: int, dtype: str, device: torch.device, clock: Clock, cfg: Settings) -> float:
    """Flop/s of an ``n``-cubed matmul in the precision of ``dtype``."""
    with precision(dtype):
        a = torch.randn(n, n, device=device, dtype=TORCH_DTYPE[dtype])
        b = torch.randn(n, n, device=device, dtype=TORCH_DTYPE[dtype])
        return 2 * n**3 / measure(lambda i: a @ b, 1, clock, cfg).median_s


def calibrate(device: torch.device, dtypes, clock: Clock, cfg: Settings) -> dict:
    """The two ceilings of the floor, measured on this device in this run."""
    cuda = device.type == "cuda"
    nbytes, n = (1 << 30, 8192) if cuda else (64 << 20, 1024)
    return {
        "copy_bytes": nbytes,
        "copy_gbps": copy_bandwidth(nbytes, device, clock, cfg) / 1e9,
        "matmul_n": n,
        "peak_tflops": {d: matmul_peak(n, d, device, clock, cfg) / 1e12 for d in dtypes},
    }


# ---------------------------------------------------------------------------- case inputs


class Api:
    """The ops under test, imported once: fails with one clear line if the extension is missing."""

    def __init__(self):
        try:
            from cpg_kernels import functional, masks, reference
        except ImportError as e:
            sys.exit(
                f"bench_ops: cannot import the cpg_kernels extension ({e}); build it first: "
                "pip install --no-build-isolation -e ."
            )
        self.fn, self.masks, self.ref = functional, masks, reference


def _random_state(shape, device, gen):
    """``owner`` (10% free, 50% older tasks, 40% the current one) and a picking mask
    that picks about half of the older weights."""
    u = torch.rand(shape, device=device, generator=gen)
    older = torch.randint(1, TASK, shape, device=device, generator=gen)
    owner = torch.where(u < 0.1, 0, torch.where(u < 0.6, older, TASK)).to(torch.uint8)
    mask = torch.rand(shape, device=device, generator=gen) * (2 * THRESHOLD)
    return owner, mask


def make_sets(case: Case, n_sets: int, device: torch.device, api: Api) -> list[dict]:
    """``n_sets`` independent inputs for every variant of ``case``. Multi-task: each task's
    active set is a random 60% of the weights."""
    gen = torch.Generator(device=device).manual_seed(zlib.crc32(case.id.encode()))
    lay, dt = case.layer, TORCH_DTYPE[case.dtype]

    def randn(*shape, scale=1.0):
        return (torch.randn(shape, device=device, generator=gen) * scale).to(dt)

    if lay.is_linear:
        x_shape = (case.batch, lay.in_ch)
    else:
        x_shape = (case.batch, lay.in_ch, lay.hw, lay.hw)
    sets = []
    for _ in range(n_sets):
        w = randn(*lay.weight_shape, scale=lay.k**-0.5)
        s = {"w": w, "b": randn(lay.out_ch) if lay.bias else None}
        if case.family == "multitask":
            s["x"] = randn(case.tasks, *x_shape)
            s["active"] = torch.stack(
                [
                    torch.rand(lay.weight_shape, device=device, generator=gen) < 0.6
                    for _ in range(case.tasks)
                ]
            )
            s["bits"] = torch.stack([api.masks.pack(a) for a in s["active"]])
            sets.append(s)
            continue
        s["x"] = _layout(case, randn(*x_shape))
        s["owner"], s["mask"] = _random_state(lay.weight_shape, device, gen)
        active = api.ref.active_mask(s["owner"], TASK, s["mask"], THRESHOLD)
        s["w_eff"] = w * active
        if case.mode == "inference":
            s["active"], s["bits"] = active, api.masks.pack(active)
        else:
            s["gy"] = _layout(case, randn(*_output_shape(case)))
            for key in ("x", "w", "mask", "w_eff", "b"):
                if s[key] is not None:
                    s[key].requires_grad_(True)
        sets.append(s)
    return sets


def _layout(case: Case, t: torch.Tensor) -> torch.Tensor:
    """An activation in the case's layout (channels_last cases: torch.channels_last)."""
    return t.contiguous(memory_format=torch.channels_last) if case.channels_last else t


def _output_shape(case: Case) -> tuple[int, ...]:
    lay = case.layer
    if lay.is_linear:
        return (case.batch, lay.out_ch)
    return (case.batch, lay.out_ch, lay.out_hw, lay.out_hw)


# ------------------------------------------------------------------------------ variants


def variants(case: Case, api: Api) -> dict:
    """name -> ``f(set) -> output``; ``fused`` first, the check's reference is ``premasked``
    (multi-task: ``dense_masking_cached``). Training outputs are ``(y, dL/dx, ...)``."""
    lay, fn, masks, ref = case.layer, api.fn, api.masks, api.ref
    conv_args = {} if lay.is_linear else {"stride": lay.stride, "padding": lay.padding}

    def dense(x, w, b):
        return F.linear(x, w, b) if lay.is_linear else F.conv2d(x, w, b, **conv_args)

    def fused_one(s, x, bits):  # our op for one task's input and packed bits
        if lay.is_linear:
            return fn.masked_linear(x, s["w"], bits, s["b"])
        return fn.masked_conv2d(x, s["w"], bits, s["b"], **conv_args)

    if case.family == "multitask":

        def per_task(s, weight_of):
            return [dense(s["x"][t], weight_of(s, t), s["b"]) for t in range(case.tasks)]

        def fused(s):
            if lay.is_linear:
                return fn.masked_linear_multitask(s["x"], s["w"], s["bits"], s["b"])
            return fn.masked_conv2d_multitask(s["x"], s["w"], s["bits"], s["b"], **conv_args)

        return {
            "fused": fused,
            "separate_fused": lambda s: [
                fused_one(s, s["x"][t], s["bits"][t]) for t in range(case.tasks)
            ],
            "dense_masking": lambda s: per_task(
                s, lambda s, t: s["w"] * masks.unpack(s["bits"][t], s["w"].shape)
            ),
            "dense_masking_cached": lambda s: per_task(s, lambda s, t: s["w"] * s["active"][t]),
        }

    if case.mode == "inference":
        return {
            "fused": lambda s: fused_one(s, s["x"], s["bits"]),
            "dense_masking": lambda s: dense(
                s["x"], s["w"] * masks.unpack(s["bits"], s["w"].shape), s["b"]
            ),
            "dense_masking_cached": lambda s: dense(s["x"], s["w"] * s["active"], s["b"]),
            "premasked": lambda s: dense(s["x"], s["w_eff"], s["b"]),
        }

    def step(forward, params):
        def run(s):
            y = forward(s)
            wrt = [s[p] for p in params if s[p] is not None]
            return (y, *torch.autograd.grad(y, wrt, s["gy"]))

        return run

    if lay.is_linear:

        def fused_fwd(s):
            return fn.cpg_linear(s["x"], s["w"], s["owner"], TASK, s["mask"], s["b"], THRESHOLD)

        def dense_fwd(s):
            return ref.linear(s["x"], s["w"], s["owner"], TASK, s["mask"], s["b"], THRESHOLD)
    else:

        def fused_fwd(s):
            return fn.cpg_conv2d(
                s["x"],
                s["w"],
                s["owner"],
                TASK,
                s["mask"],
                s["b"],
                threshold=THRESHOLD,
                **conv_args,
            )

        def dense_fwd(s):
            return ref.conv2d(
                s["x"],
                s["w"],
                s["owner"],
                TASK,
                s["mask"],
                s["b"],
                threshold=THRESHOLD,
                **conv_args,
            )

    return {
        "fused": step(fused_fwd, ("x", "w", "mask", "b")),
        "dense_masking": step(dense_fwd, ("x", "w", "mask", "b")),
        "premasked": step(lambda s: dense(s["x"], s["w_eff"], s["b"]), ("x", "w_eff", "b")),
    }


def relative_error(case: Case, out, ref) -> float:
    """``||out - ref|| / ||ref||`` over the forward output (training: and dL/dx)."""
    if case.family == "multitask":  # fused gives [T, B, N], the per-task baselines a list
        out, ref = [out], [torch.stack(ref)]
    elif case.mode == "training":
        out, ref = out[:2], ref[:2]
    else:
        out, ref = [out], [ref]
    errs = []
    for o, r in zip(out, ref, strict=True):
        o, r = o.detach().double(), r.detach().double()
        errs.append(float((o - r).norm() / r.norm().clamp_min(1e-30)))
    return max(errs)


def peak_bytes(run, s, device: torch.device) -> int:
    """Memory a training step allocates above what is already held."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = run(s)
    torch.cuda.synchronize(device)
    del out
    return torch.cuda.max_memory_allocated(device) - base


# ----------------------------------------------------------------------------- one case


class DeviceLost(RuntimeError):
    """The CUDA context is unusable (e.g. after an illegal address): no later case can run."""


def _error_text(e: BaseException) -> str:
    """The exception's type and the first line of its message."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


def _check_device(device: torch.device) -> None:
    if device.type == "cuda":
        try:
            torch.cuda.synchronize(device)
        except Exception as e:  # noqa: BLE001 (any failure here means the context is gone)
            raise DeviceLost(_error_text(e)) from e


def run_case(
    case: Case, api: Api, device: torch.device, clock: Clock, cfg: Settings, calib: dict
) -> dict:
    """Time every variant of ``case`` and derive ratios, rates and the floor."""
    n_sets = max(2, min(cfg.max_sets, math.ceil(2 * cfg.cache_bytes / case.min_bytes())))
    bandwidth = calib["copy_gbps"] * 1e9
    peak = calib["peak_tflops"][case.dtype] * 1e12
    floor_s, bound = floor_seconds(case.flops(), case.min_bytes(), bandwidth, peak)
    lay = case.layer
    rec = {
        "id": case.id,
        "family": case.family,
        "net": lay.net,
        "layer": lay.name,
        "late": lay.late,
        "mode": case.mode,
        "dtype": case.dtype,
        "batch": case.batch,
        "tasks": case.tasks,
        "weight_shape": list(lay.weight_shape),
        "conv": None
        if lay.is_linear
        else {"hw": lay.hw, "stride": lay.stride, "padding": lay.padding},
        "layout": case.layout,
        "flops": case.flops(),
        "bytes": case.min_bytes(),
        "weight_bytes": case.weight_bytes,
        "floor_ms": floor_s * 1e3,
        "floor_bound": bound,
        "rotation_sets": n_sets,
        "rotation_over_cache": n_sets * case.min_bytes() / cfg.cache_bytes,
        "variants": {},
        "errors": {},
    }
    with precision(case.dtype):
        try:
            sets = make_sets(case, n_sets, device, api)
        except Exception as e:  # noqa: BLE001 (one case's failure must not end the run)
            _check_device(device)
            rec["errors"]["inputs"] = _error_text(e)
            return rec
        outputs = {}
        for name, run in variants(case, api).items():
            try:
                timing = measure(lambda i, run=run: run(sets[i]), n_sets, clock, cfg)
                outputs[name] = run(sets[0])
                rec["variants"][name] = timing.to_json()
                if case.mode == "training" and device.type == "cuda":
                    rec.setdefault("peak_bytes", {})[name] = peak_bytes(run, sets[0], device)
            except Exception as e:  # noqa: BLE001 (record it and go on with the other variants)
                _check_device(device)
                rec["errors"][name] = _error_text(e)
        check_ref = "dense_masking_cached" if case.family == "multitask" else "premasked"
        if "fused" in outputs and check_ref in outputs:
            err = relative_error(case, outputs["fused"], outputs[check_ref])
            tol = CHECK_TOLERANCE[case.dtype]
            rec["check"] = {
                "against": check_ref,
                "rel_err": err,
                "tol": tol,
                "ok": bool(math.isfinite(err) and err <= tol),
            }
    fused = rec["variants"].get("fused")
    if fused:
        t = fused["ms"] / 1e3
        rec["speedup"] = {
            name: speed_ratio(v["ms"], fused["ms"])
            for name, v in rec["variants"].items()
            if name != "fused"
        }
        rec["fused_tflops"] = case.flops() / t / 1e12
        rec["fused_gbps"] = case.min_bytes() / t / 1e9
        rec["fused_of_floor"] = floor_s / t
    return rec


# ------------------------------------------------------------------------------- output


def environment(device: torch.device) -> dict:
    """What the numbers hold for: device, software versions, commit."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "python": platform.python_version(),
        "host": platform.node(),
        "git_commit": _git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            device=props.name,
            sm_count=props.multi_processor_count,
            memory_bytes=props.total_memory,
            l2_bytes=props.L2_cache_size,
            capability=f"{props.major}.{props.minor}",
        )
    else:
        info.update(
            device=f"cpu {platform.machine()} ({os.cpu_count()} cores, "
            f"{torch.get_num_threads()} threads)"
        )
    info["device_slug"] = device_slug(device)
    return info


def device_slug(device: torch.device) -> str:
    """A file-name-safe name of the device: ``nvidia-h100-80gb-hbm3``, ``cpu-x86-64``."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu {platform.machine()}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _git_commit() -> str | None:
    """HEAD of the checkout (with ``-dirty`` if tracked files changed), or ``$CPG_GIT_COMMIT``
    where the tree was copied without its git metadata."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        if head.returncode == 0:
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=10,
            )
            return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("CPG_GIT_COMMIT")


_COLUMNS = (
    "case",
    "fused",
    "dense",
    "dense$",
    "prem|sep",
    "floor",
    "x dense",
    "x p|s",
    "TFLOP/s",
    "GB/s",
    "%floor",
    "check",
)
_ROW = "{:<54} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7} {:>7} {:>6} {:>5}"


def table_header() -> str:
    return _ROW.format(*_COLUMNS) + "\n" + "-" * 150


def table_row(rec: dict) -> str:
    v, s = rec["variants"], rec.get("speedup", {})

    def ms(name):
        return f"{v[name]['ms']:.4f}" if name in v else ("ERR" if name in rec["errors"] else "-")

    def num(x, fmt):
        return format(x, fmt) if x is not None else "-"

    check = rec.get("check")
    return _ROW.format(
        rec["id"][:54],
        ms("fused"),
        ms("dense_masking"),
        ms("dense_masking_cached"),
        ms("premasked") if rec["family"] != "multitask" else ms("separate_fused"),
        f"{rec['floor_ms']:.4f}",
        num(s.get("dense_masking"), ".2f"),
        num(s.get("premasked", s.get("separate_fused")), ".2f"),
        num(rec.get("fused_tflops"), ".3g"),
        num(rec.get("fused_gbps"), ".0f"),
        num(rec.get("fused_of_floor") and 100 * rec["fused_of_floor"], ".0f"),
        "-" if check is None else ("ok" if check["ok"] else "BAD"),
    )


def write_json(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


# --------------------------------------------------------------------------------- main


def resumed_records(path: Path, device: torch.device) -> list[dict]:
    """The records of an earlier run on the same kind of device (each keeps the floor of its
    own run's calibration); a run on another device is refused, not mixed in."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"bench_ops: --resume {path}: {e}")
    here, there = environment(device)["device"], earlier.get("meta", {}).get("device")
    if here != there:
        sys.exit(f"bench_ops: --resume {path}: its records are from {there!r}, this is {here!r}")
    return list(earlier.get("records", []))


def select(cases: list[Case], args) -> list[Case]:
    return [
        c
        for c in cases
        if (not args.family or c.family in args.family)
        and (not args.dtype or c.dtype in args.dtype)
        and (not args.mode or c.mode in args.mode)
        and (not args.batch or c.batch in args.batch)
    ]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a few small cases with short timing loops (CI: under a minute on a CPU)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="start no case after this many seconds (cases run most important first)",
    )
    p.add_argument("--json", type=Path, default=None, help="write the records here")
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="JSON",
        help="an earlier run's records on this device: keep them and run only the "
        "cases they lack (a grid too large for one run's budget)",
    )
    p.add_argument("--family", action="append", choices=("linear", "conv", "multitask"))
    p.add_argument("--dtype", action="append", choices=DTYPES)
    p.add_argument("--mode", action="append", choices=("inference", "training"))
    p.add_argument("--batch", action="append", type=int)
    p.add_argument("--repeats", type=int, default=None, help="timed loops per variant")
    p.add_argument(
        "--cudnn-benchmark",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="let cuDNN autotune the baselines' convolutions (default: on)",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    t_start = time.monotonic()
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_ops: --device cuda, but torch sees no CUDA device")
    api = Api()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    dtypes = DTYPES if device.type == "cuda" else ("bf16", "fp32")  # TF32 is a GPU mode
    cache = (
        torch.cuda.get_device_properties(device).L2_cache_size
        if device.type == "cuda"
        else CPU_CACHE_BYTES
    )
    if args.quick:
        cfg = Settings(
            warmup=1, repeats=args.repeats or 3, min_repeat_s=2e-3, max_sets=2, cache_bytes=cache
        )
        cases = quick_grid(tuple(d for d in ("fp32", "bf16") if d in dtypes))
    else:
        cfg = Settings(
            warmup=3, repeats=args.repeats or 15, min_repeat_s=2e-3, max_sets=64, cache_bytes=cache
        )
        cases = full_grid(dtypes)
    cases = select(cases, args)
    earlier = resumed_records(args.resume, device) if args.resume else []
    done = {r["id"] for r in earlier}
    cases = [c for c in cases if c.id not in done]
    clock = Clock(device)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)

    doc = {
        "meta": environment(device),
        "calibration": None,
        "records": list(earlier),
        "not_run": [],
        "settings": {
            **cfg.__dict__,
            "quick": args.quick,
            "budget_s": args.budget_s,
            "cudnn_benchmark": args.cudnn_benchmark if device.type == "cuda" else None,
            "argv": sys.argv[1:],
        },
    }
    if args.resume:
        doc["resumed"] = {"from": str(args.resume), "records": len(earlier)}
    print(
        f"device: {doc['meta']['device']}  torch {torch.__version__}  "
        f"CUDA {torch.version.cuda}  commit {doc['meta']['git_commit']}",
        flush=True,
    )
    if earlier:
        print(
            f"resuming: {len(earlier)} cases kept from {args.resume}, {len(cases)} to run",
            flush=True,
        )
    doc["calibration"] = calibrate(device, dtypes, clock, cfg)
    cal = doc["calibration"]
    print(
        f"copy {cal['copy_gbps']:.0f} GB/s; matmul peak "
        + ", ".join(f"{d} {p:.3g}" for d, p in cal["peak_tflops"].items())
        + " TFLOP/s",
        flush=True,
    )
    print(table_header(), flush=True)

    last_write = time.monotonic()
    for i, case in enumerate(cases):
        if args.budget_s is not None and time.monotonic() - t_start >= args.budget_s:
            doc["not_run"] = [c.id for c in cases[i:]]
            print(
                f"budget of {args.budget_s:.0f} s spent: {len(cases) - i} of {len(cases)} "
                "cases not run",
                flush=True,
            )
            break
        try:
            rec = run_case(case, api, device, clock, cfg, cal)
        except DeviceLost as e:
            doc["aborted"] = f"{case.id}: {e}"
            doc["not_run"] = [c.id for c in cases[i:]]
            print(f"CUDA context lost at {case.id}: {e}; stopping", flush=True)
            break
        doc["records"].append(rec)
        print(table_row(rec), flush=True)
        for name, err in rec["errors"].items():
            print(f"    {name}: {err}", flush=True)
        if args.json and time.monotonic() - last_write > 10:
            write_json(args.json, doc)  # keep what is done if the run is killed
            last_write = time.monotonic()

    doc["elapsed_s"] = time.monotonic() - t_start
    if args.json:
        write_json(args.json, doc)
    failed = sum(1 for r in doc["records"] if r["errors"] or not r.get("check", {}).get("ok"))
    kept = f" ({len(earlier)} kept from {args.resume})" if earlier else ""
    print(
        f"{len(doc['records'])} cases{kept} in {doc['elapsed_s']:.0f} s; {failed} with errors "
        f"or a failed output check; {len(doc['not_run'])} not run",
        flush=True,
    )
    return 1 if "aborted" in doc else 0


if __name__ == "__main__":
    sys.exit(main())
