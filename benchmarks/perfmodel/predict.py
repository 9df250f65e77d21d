"""Predicted times of every variant of a benchmark case (bench_ops.py) on one GPU.

A call's time, issued back to back from Python as the benchmarks do, is the larger of its host
time and its device time: the host enqueues while the device works. Fused: the planned launches
(plan.py, the C++ dispatchers' own choice) costed by kernels.py, plus the training step's steps
outside the plan. Baselines: the measured run's own figures where it has them (H100); for other
cases and for the H200, the same library roofline (cuBLAS/cuDNN GEMM, elementwise passes) whose
constants are fitted on those figures; on the H200 a measured H100 baseline is scaled by the
model's H200/H100 ratio for that case. No run has measured a channels_last conv: its baselines
are the faster of the roofline and the NCHW case's figures (cuDNN's NHWC kernels are its native
ones, so it is taken to be at least as fast as on NCHW).

Host time of a fused inference call: today's (the autograd formula in C++, beside each op)
is ``host_now.fused_over_torch_op`` (constants.json, from a bench_overhead.py run on a CPU;
``model.py host`` writes it) times a plain torch op's host time on the measured H100 host
(``host_torch_op_us``, fitted on that run's baselines). The fitted ``host_fused_us`` is the
2026-11-27 run's own call (the Python autograd wrapper of then); calibration keeps it for that
run (``context(host_now=False)``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from cases import Case, floor_seconds, speed_ratio

from . import kernels, plan, resources, whatif
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
    # Today's fused call on the host, in plain torch ops (None: the fitted host_fused_us of the
    # 2026-11-27 run's code)
    host_fused_over_op: float | None = None
    # A hypothetical kernel costed in place of the planned one (whatif.SCENARIOS), or None
    what_if: str | None = None
    # This checkout's GEMM path rule (csrc/ops/gemm_path.h): large layers on the library path.
    # Off for the 2026-11-27 run's code (it had none) and for the fused kernels' own figures.
    library_rule: bool = True
    # The weight-gradient rule (gemm_path.h): the fused one-pass kernel below its threshold.
    # Off for the 2026-11-27 run's code (mm, then grad_epilogue).
    weight_grad_rule: bool = True

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
        kernel_scenario = whatif.kernel_scenario(ctx.what_if)
        if kernel_scenario and whatif.applies(launch):
            cost = whatif.mma_cost(kernel_scenario, launch, res, ctx.gpu, ctx.constants, taps)
        else:
            cost = kernels.launch_cost(launch, res, ctx.gpu, ctx.constants, taps, single)
        src = cost.detail.get("instructions_from", "-") if res else "missing"
        pieces.append(Piece(launch.kernel, cost, src))
    return pieces


def weight_grad_launches(ctx: Context, case: Case):
    """The fused weight gradient's planned launches where the op runs it (the weight-gradient
    rule of gemm_path.h; off with ``weight_grad_rule``), else []."""
    if not ctx.weight_grad_rule or case.mode != "training" or ctx.what_if is not None:
        return []
    key = (case.id, "weight_grad", None, ctx.gpu.sms)
    if key not in ctx.plans:
        ctx.plans[key] = plan.weight_grad_launches(case, ctx.gpu.sms)
    return ctx.plans[key]


# csrc/ops/linear_ops.cpp: on a GPU the two-pass weight gradient takes G in at most this many
# chunks, each an mm and a grad_epilogue.
MAX_DEVICE_WEIGHT_GRAD_CHUNKS = 4
DECODE_CHUNK_ELEMENTS = 1 << 20  # csrc/ops/chunking.cpp's default


def two_pass_extra_launches(ctx: Context, case: Case) -> int:
    """Launches the two-pass weight gradient of a linear training step makes beyond one mm and
    one grad_epilogue (its chunks of G); 0 where the fused kernel runs, for conv, and for the
    2026-11-27 run's code (one mm of the whole G: ``weight_grad_rule`` off)."""
    lay = case.layer
    if not ctx.weight_grad_rule or case.mode != "training" or not lay.is_linear:
        return 0
    if weight_grad_launches(ctx, case):
        return 0
    rows = max(1, DECODE_CHUNK_ELEMENTS // max(lay.in_ch, 1))
    chunks = min(-(-lay.out_ch // rows), MAX_DEVICE_WEIGHT_GRAD_CHUNKS)
    return 2 * (chunks - 1)


def _step_pieces(ctx: Context, case: Case) -> list[Piece]:
    gpu, c, e = ctx.gpu, ctx.constants, case.element_bytes
    dtype = case.dtype
    out = []
    for s in plan.training_steps(case, bool(weight_grad_launches(ctx, case))):
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


def host_fused_us(ctx: Context) -> float:
    """Host time of one fused inference call from Python (microseconds)."""
    c = ctx.constants
    if ctx.host_fused_over_op is None:
        return c.host_fused_us
    return ctx.host_fused_over_op * c.host_torch_op_us


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


def fused(
    ctx: Context, case: Case, tasks: int | None = None, reference: Context | None = None
) -> FusedPrediction:
    """The fused op of ``case`` (``tasks`` tasks in one call; default the case's own); under a
    what-if with a decode branch, that branch where it applies (``reference``: as for
    :func:`baselines`, whose pre-masked figure it runs)."""
    if takes_library_path(ctx, case):
        return library_path(ctx, case, reference)
    kernels_only = _fused_kernels(ctx, case, tasks)
    mode = whatif.decode_mode(ctx.what_if)
    if (
        mode == "never"
        or case.mode != "inference"
        or case.family != "linear"
        and case.family != "conv"
    ):
        return kernels_only
    decoded = _decode_then_library(ctx, case, reference)
    if decoded is None or (mode == "cheaper" and decoded.seconds >= kernels_only.seconds):
        return kernels_only
    return decoded


def takes_library_path(ctx: Context, case: Case) -> bool:
    """Whether the ops layer runs the case on the library path (the rule of gemm_path.h)."""
    return (
        ctx.library_rule
        and ctx.what_if is None
        and case.family in ("linear", "conv")
        and _gemm_shape(case)[0] >= plan.library_min_rows(case)
    )


def library_path(ctx: Context, case: Case, reference: Context | None = None) -> FusedPrediction:
    """The call on the library path: the weight decoded (one elementwise pass: W and its bits
    read, the tile written) before each library GEMM, the forward's and, in training, the input
    gradient's; then cuBLAS/cuDNN at the pre-masked baseline's time (inference) or the library
    roofline (training, plus the step's own pieces as on the fused path). The tiling of the
    decode into 1M-entry tiles is not modeled (one decode, one library call)."""
    c, e, lay = ctx.constants, case.element_bytes, case.layer
    decode = kernels.elementwise(lay.out_ch * lay.k * (2 * e + 1 / 8), ctx.gpu, c)
    if case.mode == "inference":
        library = sourced_baselines(ctx, case, reference)[0]["premasked"]
        pieces = [
            Piece("decode W' (library path)", decode, "-"),
            Piece("library GEMM/conv on W'", Cost(library, "library", {}), "-"),
        ]
        host = host_fused_us(ctx)
        launches = 2
    else:
        m, n, k = _gemm_shape(case)
        conv = not lay.is_linear
        fwd = kernels.vendor_gemm(m, n, k, e, case.dtype, ctx.gpu, c, conv=conv)
        dgrad = kernels.vendor_gemm(m, k, n, e, case.dtype, ctx.gpu, c, conv=conv)
        pieces = [
            Piece("decode W' (forward)", decode, "-"),
            Piece("library forward on W'", fwd, "-"),
            Piece("decode W' (input gradient)", decode, "-"),
            Piece("library input gradient on W'", dgrad, "-"),
        ] + _step_pieces(ctx, case)
        host = c.host_train_us + 2 * c.host_torch_op_us
        launches = 4 + two_pass_extra_launches(ctx, case)
    host_s = (host + (launches - 1) * c.host_launch_us) * 1e-6
    device_s = sum(p.cost.seconds for p in pieces)
    return FusedPrediction(max(host_s, device_s), host_s, device_s, pieces)


def _decode_then_library(ctx: Context, case: Case, reference: Context | None):
    """The what-if decode branch: the library path's pricing (:func:`library_path`) wherever
    the forward takes a tiled launch; None elsewhere (the small-batch and streaming paths
    stay)."""
    if not any(whatif.decodes(launch) for launch in _launches(ctx, case, "forward")):
        return None
    return library_path(ctx, case, reference)


def _fused_kernels(ctx: Context, case: Case, tasks: int | None = None) -> FusedPrediction:
    c = ctx.constants
    taps = max(case.layer.kernel, 1) ** 2
    pieces = _launch_pieces(ctx, _launches(ctx, case, "forward", tasks), taps)
    n_launches = len(pieces)
    host = host_fused_us(ctx)
    if case.mode == "training":
        pieces += _launch_pieces(ctx, _launches(ctx, case, "grad_input"), taps)
        wgrad = weight_grad_launches(ctx, case)
        pieces += _launch_pieces(ctx, wgrad, taps)
        n_launches = len(pieces)
        pieces += _step_pieces(ctx, case)
        # a plain layer's step (the custom op and its backward stand in for F.linear/F.conv2d
        # and theirs), plus ops of its own: active_bits, and grad_epilogue unless the fused
        # weight gradient (one op) replaces the step's mm and it.
        # Not calibrated: the run's fused steps ran other kernels (calibrate.py).
        host = c.host_train_us + (1 if wgrad else 2) * c.host_torch_op_us
        n_launches += two_pass_extra_launches(ctx, case)
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
    of this GPU to that one. A channels_last case: the faster of the roofline and its NCHW
    case's figures."""
    return sourced_baselines(ctx, case, reference)[0]


def sourced_baselines(
    ctx: Context, case: Case, reference: Context | None = None
) -> tuple[dict[str, float], set[str]]:
    """:func:`baselines`, and the names whose figure comes from a measurement."""
    modeled = modeled_baselines(ctx, case)
    if case.channels_last:
        nchw, measured = sourced_baselines(ctx, replace(case, channels_last=False), reference)
        out = {n: min(s, nchw.get(n, s)) for n, s in modeled.items()}
        return out, {n for n in measured if nchw[n] <= modeled[n]}
    rec = (reference or ctx).measured.get(case.id)
    if not rec:
        return modeled, set()
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
    return out, {n for n in out if n in rec["variants"]}


# ------------------------------------------------------------------------------- records


def record(ctx: Context, case: Case, reference: Context | None = None) -> dict:
    """A bench_ops.py-style record of predicted times (report.py renders it)."""
    gpu = ctx.gpu
    f = fused(ctx, case, reference=reference)
    base, measured_names = sourced_baselines(ctx, case, reference)
    times = {"fused": f.seconds, **base}
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
        "layout": case.layout,
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
            "what_if": ctx.what_if,
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


def load_host_now(path: Path = CONSTANTS) -> float | None:
    """Today's fused call in plain torch ops (constants.json ``host_now``), or None."""
    if not Path(path).exists():
        return None
    block = json.loads(Path(path).read_text()).get("host_now")
    return block["fused_over_torch_op"] if block else None


def context(
    gpu: Gpu = H100,
    constants: Constants | None = None,
    table: dict | None = None,
    measured: dict | None = None,
    host_now: bool = True,
    what_if: str | None = None,
) -> Context:
    """What a prediction of this checkout's code reads; ``host_now=False``: the host cost and
    the dispatch of the 2026-11-27 run's code (calibration against that run: no library
    path, no fused weight gradient)."""
    if what_if is not None and what_if not in whatif.SCENARIOS:
        raise ValueError(f"what_if: {what_if!r} is none of {sorted(whatif.SCENARIOS)}")
    return Context(
        gpu,
        constants or load_constants(),
        table if table is not None else resources.load_table(),
        measured or {},
        host_fused_over_op=load_host_now() if host_now else None,
        what_if=what_if,
        library_rule=host_now,
        weight_grad_rule=host_now,
    )
