"""cpg-kernels: fused masked conv/GEMM for unforgetting continual learning (CPG).

* ``cpg_kernels.functional``: masked linear/conv2d from a dense weight plus
  packed bits (inference) or owners and a picking mask (training);
* ``cpg_kernels.masks``: pack/unpack, active sets, usage counts;
* ``cpg_kernels.nn``: drop-in ``CPGConv2d``/``CPGLinear``, per-task batch norm
  and heads; ``convert(model)`` puts them into an existing net;
* ``cpg_kernels.lifecycle``: begin/prune/finalize tasks, grow, forget, export,
  and the optimizer rule that keeps finished tasks bit-exact;
* ``cpg_kernels.checkpoint``: versioned, atomic, validated checkpoints;
* ``cpg_kernels.reference``: the dense-masking oracle;
* ``cpg_kernels.backends``: CPU, CUDA, or CUDA kernels under the CPU emulator.
"""

# Imported for their effect and as the package's modules; _ops registers the fake kernels.
from . import (  # noqa: F401
    _ops,
    backends,
    checkpoint,
    functional,
    lifecycle,
    masks,
    models,
    nn,
    reference,
)
from .checkpoint import SizeReport, load_checkpoint, save_checkpoint, size_report
from .convert import convert
from .lifecycle import (
    begin_task,
    export_task,
    finalize_task,
    fingerprint,
    forget_task,
    grow,
    guard_optimizer,
    make_optimizer,
    param_groups,
    prune,
    set_task,
    task,
    task_state,
    validate,
)
from .nn import CPGBatchNorm1d, CPGBatchNorm2d, CPGConv2d, CPGLinear, TaskHeads

__version__ = "0.1.0"

__all__ = [
    "CPGBatchNorm1d",
    "CPGBatchNorm2d",
    "CPGConv2d",
    "CPGLinear",
    "SizeReport",
    "TaskHeads",
    "begin_task",
    "convert",
    "export_task",
    "finalize_task",
    "fingerprint",
    "forget_task",
    "grow",
    "guard_optimizer",
    "load_checkpoint",
    "make_optimizer",
    "param_groups",
    "prune",
    "save_checkpoint",
    "set_task",
    "size_report",
    "task",
    "task_state",
    "validate",
]
