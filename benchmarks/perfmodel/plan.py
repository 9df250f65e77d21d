"""The launches behind each benchmark case, asked of the C++ dispatchers (the plan query).

``cpg_kernels._C.plan_masked_linear`` / ``plan_masked_conv2d`` run the same dispatch and
launch-shape code as the launchers (csrc/cuda/launch_plan.h) for a device of a given number of
multiprocessors, without a GPU. This module maps a :class:`cases.Case` onto those queries and
names every step of the case's fused op: the planned kernel launches (the fused weight
gradient's included, ``plan_linear_weight_grad``), plus the steps that are not masked GEMMs (the
training step's active-bits pass and, on the two-pass path, the cuBLAS/cuDNN weight gradient
and gradient epilogue), which the model costs from their bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cases import Case

from .resources import normalize_kernel

TORCH_DTYPE_NAME = {"bf16": "bfloat16", "tf32": "float32", "fp32": "float32"}


@dataclass(frozen=True)
class Launch:
    """One planned kernel launch (the plan query's dict, its kernel name normalized)."""

    kernel: str
    grid: tuple[int, int, int]
    threads: int
    dynamic_smem: int
    workspace_bytes: int
    params: dict = field(default_factory=dict)

    @property
    def blocks(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def family(self) -> str:
        return self.kernel.split("<", 1)[0]

    @classmethod
    def from_query(cls, d: dict) -> Launch:
        return cls(
            normalize_kernel(d["kernel"]),
            tuple(d["grid"]),
            d["threads"],
            d["dynamic_smem"],
            d["workspace_bytes"],
            dict(d["params"]),
        )


@dataclass(frozen=True)
class Step:
    """A piece of a fused op that is not a planned launch: costed from its bytes and flops."""

    kind: str  # "active_bits", "grad_epilogue", "wgrad_gemm", "bias_grad"
    elems: int = 0  # weight elements (elementwise passes), or output elements (bias grad)
    m: int = 0  # GEMM shape for wgrad: [N, K] = dy[M, N]^T x[M, K]
    n: int = 0
    k: int = 0
    conv: bool = False


def _ext():
    try:
        from cpg_kernels import _C  # noqa: PLC0415 (imported on first use: the model loads fast)
    except ImportError as e:
        raise RuntimeError(f"plan: cannot import cpg_kernels._C ({e}); build the extension") from e
    if not hasattr(_C, "plan_masked_linear"):
        raise RuntimeError("plan: this build of cpg_kernels has no plan query; rebuild it")
    return _C


_LIBRARY_DTYPES = {
    "bf16": ("bfloat16", False),
    "tf32": ("float32", True),
    "fp32": ("float32", False),
}


def library_min_rows(case: Case) -> int:
    """GEMM rows from which the ops layer runs the case's layer on the library path (the rule
    of csrc/ops/gemm_path.h, queried from the build)."""
    dtype, tf32 = _LIBRARY_DTYPES[case.dtype]
    return int(_ext().library_min_rows(dtype, tf32))


def weight_grad_library_min_rows(case: Case) -> int:
    """Batch rows from which a linear layer's weight gradient takes the two-pass path (the
    weight-gradient rule of csrc/ops/gemm_path.h, queried from the build)."""
    dtype, tf32 = _LIBRARY_DTYPES[case.dtype]
    return int(_ext().weight_grad_library_min_rows(dtype, tf32))


def weight_grad_launches(case: Case, sms: int, build: str = "emulator") -> list[Launch]:
    """The fused one-pass weight gradient's launches for a linear case, or [] where the op runs
    the two-pass path (the rule's threshold, or a shape the kernel does not take)."""
    lay = case.layer
    if not lay.is_linear or case.batch >= weight_grad_library_min_rows(case):
        return []
    out = _ext().plan_linear_weight_grad(
        TORCH_DTYPE_NAME[case.dtype],
        case.batch,
        lay.out_ch,
        lay.in_ch,
        case.dtype == "tf32",
        sms,
        build,
    )
    return [Launch.from_query(d) for d in out]


def query_linear(
    dtype: str,
    tasks: int,
    m: int,
    n: int,
    k: int,
    grad_input: bool,
    sms: int,
    build: str = "emulator",
) -> list[Launch]:
    plan = _ext().plan_masked_linear(
        TORCH_DTYPE_NAME[dtype], tasks, m, n, k, grad_input, dtype == "tf32", sms, build
    )
    return [Launch.from_query(d) for d in plan]


def query_conv(
    case: Case,
    tasks: int,
    grad_input: bool,
    sms: int,
    build: str = "emulator",
    f32_weight: bool = False,
) -> list[Launch]:
    """The conv's launches; with ``f32_weight``, the forward's fp32-weight form (16-bit x
    against an fp32 weight), empty where no kernel takes it."""
    lay = case.layer
    plan = _ext().plan_masked_conv2d(
        TORCH_DTYPE_NAME[case.dtype],
        tasks,
        [case.batch, lay.in_ch, lay.hw, lay.hw],
        lay.out_ch,
        [lay.kernel] * 2,
        [lay.stride] * 2,
        [lay.padding] * 2,
        [1, 1],
        1,
        case.channels_last,  # the activations' layout (NCHW: torch's default)
        grad_input,
        case.dtype == "tf32",
        sms,
        build,
        f32_weight=f32_weight,
    )
    return [Launch.from_query(d) for d in plan]


def forward_launches(
    case: Case, sms: int, tasks: int | None = None, build: str = "emulator"
) -> list[Launch]:
    """The fused forward of ``case`` (``tasks`` tasks at once; default the case's)."""
    t = case.tasks if tasks is None else tasks
    lay = case.layer
    if lay.is_linear:
        return query_linear(case.dtype, t, case.batch, lay.out_ch, lay.in_ch, False, sms, build)
    return query_conv(case, t, False, sms, build)


def grad_input_launches(case: Case, sms: int, build: str = "emulator") -> list[Launch]:
    lay = case.layer
    if lay.is_linear:
        return query_linear(case.dtype, 1, case.batch, lay.out_ch, lay.in_ch, True, sms, build)
    return query_conv(case, 1, True, sms, build)


def training_steps(case: Case, fused_weight_grad: bool = False) -> list[Step]:
    """What the fused training step runs besides its planned masked GEMMs
    (cpg_kernels/functional.py cpg_linear / cpg_conv2d and the C++ backward): with
    ``fused_weight_grad`` the weight gradient is a planned launch (weight_grad_launches), else
    the two-pass path's GEMM and gradient epilogue (its G chunked by the ops layer, at most 4
    chunks on a GPU: modeled as one GEMM and one pass from DRAM, the chunks' extra launches
    counted in host time by predict.two_pass_extra_launches)."""
    lay = case.layer
    elems = lay.out_ch * lay.k
    rows = case.batch if lay.is_linear else case.batch * lay.out_hw * lay.out_hw
    steps = [Step("active_bits", elems=elems)]
    if not fused_weight_grad:
        steps += [
            Step("wgrad_gemm", m=rows, n=lay.out_ch, k=lay.k, conv=not lay.is_linear),
            Step("grad_epilogue", elems=elems),
        ]
    if lay.bias:
        steps.append(Step("bias_grad", elems=rows * lay.out_ch))
    return steps
