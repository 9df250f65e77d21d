"""The CPG task lifecycle on a whole converted model.

``begin_task`` -> train (with ``make_optimizer``) -> ``prune`` (gradually, with
retraining between steps) -> ``finalize_task``; ``grow`` when a task needs
more capacity; ``forget_task`` to release a task; ``export_task`` for a plain
dense copy of one task; ``task(model, t)`` to compute a task.
"""

from .export import export_task, fingerprint
from .growth import grow
from .optim import guard_optimizer, make_optimizer, param_groups
from .tasks import (
    begin_task,
    cpg_modules,
    finalize_task,
    forget_task,
    masked_layers,
    prune,
    set_task,
    task,
    task_state,
    validate,
)

__all__ = [
    "begin_task",
    "cpg_modules",
    "export_task",
    "finalize_task",
    "fingerprint",
    "forget_task",
    "grow",
    "guard_optimizer",
    "make_optimizer",
    "masked_layers",
    "param_groups",
    "prune",
    "set_task",
    "task",
    "task_state",
    "validate",
]
