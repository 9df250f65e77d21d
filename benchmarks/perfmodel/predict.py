"""Predicted times of every variant of a benchmark case (bench_ops.py) on one GPU.

A call's time, issued back to back from Python as the benchmarks do, is the larger of its host
time and its device time: the host enqueues while the device works. Fused: the planned launches
(plan.py, the C++ dispatchers' own choice) costed by kernels.py, plus the training step's steps
outside the plan. Baselines: the measured run's own figures where it has them (H100); for other
cases and for the H200, the same library roofline (cuBLAS/cuDNN GEMM, elementwise passes) whose
constants are fitted on those figures; on the H200 a measured H100 baseline is scaled by the
model's H200/H100 ratio for that case.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cases import Case, floor_seconds, speed_ratio

from . import kernels, plan, resources
from .hardware import H100, Gpu
from .kernels import Constants, Cost

CONSTANTS = Path(__file__).resolve().parent / "constants.json"


def load_constants(path: Path = CONSTANTS) -> Constants:
    """The fitted constants (model.py calibrate writes them), or the defaults."""
    if not Path(path).exists():
        return Constants()
    fitted = json.loads(Path(path).read_text())["constants"]
    return Constants().replace(
        **{k: v for k, v in fitted.items() if k in Constants.__dataclass_fields__}
    )


@dataclass
class Context:
    """What a prediction reads: GPU, constants, resource table, measured baselines."""

    gpu: Gpu
    constants: Constants
    table: dict  # resources.load_table()
    measured: dict = field(default_factory=dict)  # case id -> H100 record (baselines only)
    plans: dict = field(default_factory=dict)  # cache: (case id, what, sms) -> launches
    # A launch-plan rewrite (e.g. the dispatcher of an older commit); identity by default.
    rewrite_plan: object = None

    def res(self, kernel: str) -> dict | None:
        return self.table.get("kernels", {}).get(kernel)


@dataclass
class Piece:
    label: str
    cost: Cost
    resources: str  # "sass", "estimated", "missing", or "-" for steps outside the plan


def _launches(ctx: Context, case: Case, what: str, tasks: int | None = None):
    key = (case.id, what, tasks, ctx.gpu.sms)
    if key not in ctx.plans:
        if what == "forward":
            launches = plan.forward_launches(case, ctx.gpu.sms, tasks)
        else:
            launches = plan.grad_input_launches(case, ctx.gpu.sms)
        if ctx.rewrite_plan is not None:
            launches = ctx.rewrite_plan(case, what, launches)
        ctx.plans[key] = launches
    return ctx.plans[key]


def _launch_pieces(ctx: Context, launches, taps: int) -> list[Piece]:
    pieces = []
    for launch in launches:
        res = ctx.res(launch.kernel)
        single = ctx.res(launch.kernel.replace(",true>", ",false>"))
        cost = kernels.launch_cost(launch, res, ctx.gpu, ctx.constants, taps, single)
        src = cost.detail.get("instructions_from", "-") if res else "missing"
        pieces.append(Piece(launch.kernel, cost, src))
    return pieces


def _step_pieces(ctx: Context, case: Case) -> list[Piece]:
    gpu, c, e = ctx.gpu, ctx.constants, case.element_bytes
    dtype = case.dtype
    out = []
    for s in plan.training_steps(case):
        if s.kind == "active_bits":
            cost = kernels.elementwise(s.elems * (1 + 4 + 1 / 8), gpu, c, 160)
        elif s.kind == "grad_epilogue":
            cost = kernels.elementwise(s.elems * (3 * e + 1 + 4), gpu, c, 80)
        elif s.kind == "wgrad_gemm":
            cost = kernels.vendor_gemm(s.n, s.k, s.m, e, dtype, gpu, c, conv=s.conv)
        else:  # bias_grad
            cost = kernels.elementwise(s.elems * e, gpu, c, 16)
        out.append(Piece(s.kind, cost, "-"))
    return out


@dataclass
class FusedPrediction:
    seconds: float
    host_s: float
    device_s: float
    pieces: list[Piece]

    @property
    def bound(self) -> str:
        if self.host_s >= self.device_s:
            return "host"
        return max(self.pieces, key=lambda p: p.cost.seconds).cost.bound


def fused(ctx: Context, case: Case, tasks: int | None = None) -> FusedPrediction:
    """The fused op of ``case`` (``tasks`` tasks in one call; default the case's own)."""
    c = ctx.constants
    taps = max(case.layer.kernel, 1) ** 2
    pieces = _launch_pieces(ctx, _launches(ctx, case, "forward", tasks), taps)
    n_launches = len(pieces)
    host = c.host_fused_us
    if case.mode == "training":
        pieces += _launch_pieces(ctx, _launches(ctx, case, "grad_input"), taps)
        n_launches = len(pieces)
        pieces += _step_pieces(ctx, case)
        # a plain layer's step (the custom op and its Python backward stand in for
        # F.linear/F.conv2d and theirs), plus two ops of its own: active_bits, grad_epilogue.
        # Not calibrated: the run's fused steps ran other kernels (calibrate.py).
        host = c.host_train_us + 2 * c.host_torch_op_us
    host_s = (host + max(n_launches - 1, 0) * c.host_launch_us) * 1e-6
    device_s = sum(p.cost.seconds for p in pieces)
    return FusedPrediction(max(host_s, device_s), host_s, device_s, pieces)


# ------------------------------------------------------------------------------ baselines


def _gemm_shape(case: Case) -> tuple[int, int, int]:
    lay = case.layer
    rows = case.batch if lay.is_linear else case.batch * lay.out_hw * lay.out_hw
    return rows, lay.out_ch, lay.k


def library_forward(ctx: Context, case: Case) -> float:
    """F.linear / F.conv2d on a dense weight (device seconds)."""
    m, n, k = _gemm_shape(case)
    return kernels.vendor_gemm(
        m,
        n,
        k,
        case.element_bytes,
        case.dtype,
        ctx.gpu,
        ctx.constants,
        conv=not case.layer.is_linear,
    ).seconds


def modeled_baselines(ctx: Context, case: Case) -> dict[str, float]:
    """Each baseline variant's predicted seconds from the library roofline alone."""
    gpu, c, e = ctx.gpu, ctx.constants, case.element_bytes
    m, n, k = _gemm_shape(case)
    elems = n * k
    op = c.host_torch_op_us * 1e-6
    fwd = library_forward(ctx, case)
    unpack = kernels.elementwise(elems * 1 + elems / 8, gpu, c).seconds
    multiply = kernels.elementwise(elems * (2 * e + 1), gpu, c).seconds
    if case.family == "multitask":
        t = case.tasks
        single = Case(
            "linear" if case.layer.is_linear else "conv",
            case.layer,
            case.batch,
            case.dtype,
            "inference",
        )
        # the benchmark's loop indexes x[t] and bits[t] before each call
        index = 2 * c.host_index_us * 1e-6
        one = fused(ctx, single)
        return {
            "separate_fused": t * max(one.host_s + index, one.device_s),
            "dense_masking": t * max(3 * op, unpack + multiply + fwd),
            "dense_masking_cached": t * max(2 * op, multiply + fwd),
        }
    if case.mode == "inference":
        return {
            "dense_masking": max(3 * op, unpack + multiply + fwd),
            "dense_masking_cached": max(2 * op, multiply + fwd),
            "premasked": max(op, fwd),
        }
    conv = not case.layer.is_linear
    dgrad = kernels.vendor_gemm(m, k, n, e, case.dtype, gpu, c, conv=conv).seconds
    wgrad = kernels.vendor_gemm(n, k, m, e, case.dtype, gpu, c, conv=conv).seconds
    gemms = fwd + dgrad + wgrad
    host = c.host_train_us * 1e-6
    masking = kernels.elementwise(c.dense_train_passes * elems * e, gpu, c).seconds
    return {"dense_masking": max(host + 16 * op, gemms + masking), "premasked": max(host, gemms)}


def baselines(ctx: Context, case: Case, reference: Context | None = None) -> dict[str, float]:
    """Baselines: measured where the run has them (on the measured GPU), else modeled; with
    ``reference`` (the measured GPU's context), a measured figure scaled by the model's ratio
    of this GPU to that one."""
    modeled = modeled_baselines(ctx, case)
    rec = (reference or ctx).measured.get(case.id)
    if not rec:
        return modeled
    out = {}
    for name, seconds in modeled.items():
        v = rec["variants"].get(name)
        if v is None:
            out[name] = seconds
        elif reference is None:
            out[name] = v["ms"] * 1e-3
        else:
            there = modeled_baselines(reference, case)[name]
            out[name] = v["ms"] * 1e-3 * seconds / there
    return out


# ------------------------------------------------------------------------------- records


def record(ctx: Context, case: Case, reference: Context | None = None) -> dict:
    """A bench_ops.py-style record of predicted times (report.py renders it)."""
    gpu = ctx.gpu
    f = fused(ctx, case)
    times = {"fused": f.seconds, **baselines(ctx, case, reference)}
    measured_names = set()
    rec_m = (reference or ctx).measured.get(case.id)
    if rec_m:
        measured_names = {n for n in times if n != "fused" and n in rec_m["variants"]}
    peak = gpu.peak_tflops[case.dtype] * 1e12
    floor_s, bound = floor_seconds(case.flops(), case.min_bytes(), gpu.dram_gbps * 1e9, peak)
    lay = case.layer
    r = {
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
        "flops": case.flops(),
        "bytes": case.min_bytes(),
        "weight_bytes": case.weight_bytes,
        "floor_ms": floor_s * 1e3,
        "floor_bound": bound,
        "variants": {n: {"ms": s * 1e3} for n, s in times.items()},
        "errors": {},
        "predicted": {
            "baselines_from_measurement": sorted(measured_names),
            "host_ms": f.host_s * 1e3,
            "device_ms": f.device_s * 1e3,
            "bound": f.bound,
            "launches": [_piece_json(p) for p in f.pieces],
        },
    }
    r["speedup"] = {n: speed_ratio(v, times["fused"]) for n, v in times.items() if n != "fused"}
    r["fused_tflops"] = case.flops() / f.seconds / 1e12
    r["fused_gbps"] = case.min_bytes() / f.seconds / 1e9
    r["fused_of_floor"] = floor_s / f.seconds
    return r


_DETAIL = ("occupancy", "waves", "units_per_block", "instructions_per_unit", "dram_bytes")


def _piece_json(p: Piece) -> dict:
    out = {
        "kernel": p.label,
        "us": p.cost.seconds * 1e6,
        "bound": p.cost.bound,
        "resources": p.resources,
    }
    out.update({k: p.cost.detail[k] for k in _DETAIL if k in p.cost.detail})
    return out


def context(
    gpu: Gpu = H100,
    constants: Constants | None = None,
    table: dict | None = None,
    measured: dict | None = None,
) -> Context:
    return Context(
        gpu,
        constants or load_constants(),
        table if table is not None else resources.load_table(),
        measured or {},
    )
