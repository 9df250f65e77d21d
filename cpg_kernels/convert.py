"""``convert(model)``: put CPG modules into an existing network, in place.

``nn.Conv2d`` -> ``CPGConv2d``, ``nn.Linear`` -> ``CPGLinear``,
``nn.BatchNorm1d/2d/3d`` and ``nn.SyncBatchNorm`` -> per-task batch norm, and
the final classifier -> ``TaskHeads``. The new modules take over the old
parameters (no copy) and, until the first task begins, compute exactly what
the old ones did.

Only these exact types are swapped: a subclass may compute something else.
Other modules keep their parameters, shared by every task; ``param_groups``
refuses to train them, so they cannot break exact unforgetting silently.
A module whose running statistics training would update for every task at
once (a batch-norm subclass, an instance norm with ``track_running_stats``)
cannot be made safe that way: ``convert`` refuses it, naming it.
"""

from __future__ import annotations

from torch import nn

from .nn import PER_TASK_NORMS, CPGConv2d, CPGLinear, CPGModule, TaskHeads

_SWAPS = {
    nn.Conv2d: CPGConv2d.from_dense,
    nn.Linear: CPGLinear.from_dense,
    **{torch_type: per_task.from_dense for torch_type, per_task in PER_TASK_NORMS.items()},
}


def convert(model: nn.Module, head: str | None = None) -> nn.Module:
    """Swap ``model``'s layers for CPG modules in place and return it.

    ``head`` names the ``nn.Linear`` that becomes per-task heads (default:
    the last ``nn.Linear`` in ``model.named_modules()`` order, e.g.
    ``classifier.6`` of a VGG or ``fc`` of a ResNet). A module used at
    several places is converted once and stays shared.
    """
    if any(isinstance(m, CPGModule) for m in model.modules()):
        raise ValueError("model already contains CPG modules: convert it only once")
    _refuse_shared_statistics(model)
    classifier = _find_head(model, head)
    converted: dict[int, nn.Module] = {}

    def swap(module: nn.Module) -> nn.Module:
        if id(module) not in converted:
            if module is classifier:
                converted[id(module)] = TaskHeads(module)
            else:
                make = _SWAPS.get(type(module))
                converted[id(module)] = make(module) if make else module
        return converted[id(module)]

    for parent in list(model.modules()):
        # _modules, not named_children(): that skips a second slot holding the same module.
        for name, child in list(parent._modules.items()):
            if child is not None:
                setattr(parent, name, swap(child))
    return swap(model)


def _find_head(model: nn.Module, head: str | None) -> nn.Linear:
    modules = dict(model.named_modules())
    if head is None:
        linears = [name for name, m in modules.items() if type(m) is nn.Linear]
        if not linears:
            raise ValueError("no nn.Linear to turn into per-task heads; pass head=<module name>")
        head = linears[-1]
    if head not in modules:
        raise ValueError(f"head {head!r}: no such module")
    if type(modules[head]) is not nn.Linear:
        raise ValueError(f"head {head!r} is a {type(modules[head]).__name__}, not an nn.Linear")
    return modules[head]


def _refuse_shared_statistics(model: nn.Module) -> None:
    """ValueError naming the first norm layer that would keep one set of running
    statistics for all tasks: training any task would change every old task's output."""
    for name, module in model.named_modules():
        if type(module) in _SWAPS or not isinstance(module, nn.modules.batchnorm._NormBase):
            continue
        if not module.track_running_stats:
            continue
        kind = type(module).__name__
        if isinstance(module, nn.modules.instancenorm._InstanceNorm):
            fix = (
                f"build it with track_running_stats=False (torch's default for "
                f"{kind}), or replace it before convert()"
            )
        else:
            fix = (
                "replace it with a plain nn.BatchNorm1d/2d/3d or nn.SyncBatchNorm before "
                "convert() (those become per task)"
            )
        raise ValueError(
            f"{name or '<root>'}: a {kind} tracks running statistics that training would "
            f"update for every task at once, so later tasks would change older tasks' outputs; "
            f"convert() makes only exact torch batch norms per task: {fix}"
        )
