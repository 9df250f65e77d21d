"""Drop-in CPG modules: shared-weight conv/linear layers, per-task batch norm and heads.

Every class here is a :class:`CPGModule`: it knows its finished tasks, the task
in training and the task selected for its forward. ``cpg_kernels.convert``
puts them into an existing network; ``cpg_kernels.lifecycle`` drives their
tasks model-wide.
"""

from .base import CPGModule
from .batchnorm import (
    PER_TASK_NORMS,
    CPGBatchNorm1d,
    CPGBatchNorm2d,
    CPGBatchNorm3d,
    CPGSyncBatchNorm,
)
from .heads import TaskHeads
from .layers import MASK_INIT, CPGConv2d, CPGLinear, MaskedLayer

__all__ = [
    "MASK_INIT",
    "PER_TASK_NORMS",
    "CPGBatchNorm1d",
    "CPGBatchNorm2d",
    "CPGBatchNorm3d",
    "CPGConv2d",
    "CPGLinear",
    "CPGModule",
    "CPGSyncBatchNorm",
    "MaskedLayer",
    "TaskHeads",
]
