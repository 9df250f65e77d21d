"""Tasks on a whole model: select, begin, prune, finalize, forget, validate.

Every function checks the whole model before it changes anything, so an
error leaves every CPG module as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from ..nn import CPGModule, MaskedLayer, TaskHeads
from ..nn.base import check_task_id
from ..nn.heads import check_num_classes
from . import shared


def cpg_modules(model: nn.Module) -> list[tuple[str, CPGModule]]:
    """``(name, module)`` of every CPG module in ``model``."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, CPGModule)]


def masked_layers(model: nn.Module) -> list[tuple[str, MaskedLayer]]:
    """``(name, layer)`` of every CPGConv2d/CPGLinear in ``model``."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MaskedLayer)]


def _require_modules(model: nn.Module) -> list[tuple[str, CPGModule]]:
    modules = cpg_modules(model)
    if not modules:
        raise ValueError("model has no CPG modules: run cpg_kernels.convert(model) first")
    return modules


def task_state(model: nn.Module) -> tuple[list[int], int | None]:
    """``(finished tasks, training task)``, which every CPG module must agree on."""
    modules = _require_modules(model)
    first_name, first = modules[0]
    for name, m in modules[1:]:
        if (m.tasks, m.training_task) != (first.tasks, first.training_task):
            raise ValueError(
                f"CPG modules disagree about tasks: {first_name or '<root>'} has "
                f"{first.tasks} (training {first.training_task}), {name or '<root>'} has "
                f"{m.tasks} (training {m.training_task})"
            )
    return list(first.tasks), first.training_task


def validate(model: nn.Module) -> None:
    """Raise ValueError, naming the module, unless every CPG module is consistent."""
    for name, m in _require_modules(model):
        try:
            m.validate()
        except ValueError as err:
            raise ValueError(f"{name or '<root>'}: {err}") from None
    task_state(model)


def set_task(model: nn.Module, t: int | None) -> None:
    """Select task ``t`` (``None``: none) for every CPG module's forward."""
    modules = _require_modules(model)
    if t is not None:
        finished, training = task_state(model)
        if t not in finished and t != training:
            raise ValueError(
                f"task {t} is unknown; finished tasks: {finished}, training: {training}"
            )
    for _, m in modules:
        m.set_task(t)


@contextlib.contextmanager
def task(model: nn.Module, t: int) -> Iterator[nn.Module]:
    """``with task(model, t):`` computes task ``t``, then restores each module's selection."""
    previous = [(m, m.task) for _, m in _require_modules(model)]
    set_task(model, t)
    try:
        yield model
    finally:
        for m, selected in previous:
            m.task = selected


def begin_task(
    model: nn.Module, t: int, *, num_classes: int | None = None, picking: bool = True
) -> None:
    """Start training task ``t`` on every CPG module and select it.

    Free weights become tentatively ``t``'s; with ``picking`` each layer
    gets a picking mask over the older weights (CPG), without it ``t`` uses
    all of them (PackNet). Heads: ``num_classes`` outputs, or a copy of the
    original classifier when None. Ids must increase and stay <= 255.
    """
    modules = _require_modules(model)
    finished, training = task_state(model)
    check_task_id(t)
    if training is not None:
        raise RuntimeError(f"task {training} is still training: finalize it first")
    owners = [int(layer.owner.max()) for _, layer in masked_layers(model) if layer.owner.numel()]
    highest = max([*finished, *owners], default=0)
    if t <= highest:
        raise ValueError(f"task ids must increase: task {t} after task {highest}")
    check_num_classes(num_classes)
    if num_classes is not None and not any(isinstance(m, TaskHeads) for _, m in modules):
        raise ValueError("num_classes given but the model has no TaskHeads")
    shared.remember(model)
    for _, m in modules:
        if isinstance(m, TaskHeads):
            m.begin_task(t, num_classes)
        elif isinstance(m, MaskedLayer):
            m.begin_task(t, picking=picking)
        else:
            m.begin_task(t)


def prune(model: nn.Module, sparsity: float) -> dict[str, float]:
    """Magnitude-prune the training task's weights, layer by layer, to ``sparsity``.

    See ``CPGConv2d.prune``; returns the sparsity each layer reached.
    """
    _, training = task_state(model)
    if training is None:
        raise RuntimeError("no task is training: call begin_task first")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return {name: layer.prune(sparsity) for name, layer in masked_layers(model)}


def finalize_task(model: nn.Module) -> int:
    """Freeze the training task everywhere (bits stored, mask dropped); return its id."""
    _, training = task_state(model)
    if training is None:
        raise RuntimeError("no task is training: nothing to finalize")
    shared.check_unchanged(model, training)
    for _, m in cpg_modules(model):
        m.finalize_task()
    return training


def forget_task(model: nn.Module, t: int) -> None:
    """Selective forgetting: drop task ``t`` and release the weights no other task uses.

    Weights ``t`` trained that a later task picked stay (frozen, still owned
    by ``t``); everything else of ``t`` -- packed bits, batch norm, head --
    is removed. Every remaining task's output stays bit-identical.
    """
    finished, training = task_state(model)
    if training is not None:
        raise RuntimeError(f"task {training} is training: finalize it before forgetting")
    if t not in finished:
        raise ValueError(f"task {t} is not a finished task; finished: {finished}")
    for _, m in cpg_modules(model):
        m.forget_task(t)
