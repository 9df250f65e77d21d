"""The optimizer rule: a step moves only the weights the training task owns.

The training ops already give zero weight gradients outside ``owner == t``,
but a standard optimizer still moves those entries: weight decay adds
``wd * W`` everywhere, and momentum (or Adam's moments) carries updates from
earlier steps -- from before a prune, or from an earlier task. Two pieces
close that gap for any ``torch.optim`` optimizer:

* ``param_groups``: shared CPG weights get ``weight_decay=0`` in the
  optimizer; their decay is kept in the group as ``cpg_weight_decay``.
* ``guard_optimizer``: a step pre-hook that, for each shared weight, zeroes
  the gradient and every per-entry optimizer state (momentum buffers, Adam
  moments) outside the training task's weights, then adds the decay on the
  task's weights only. With zero gradient and zero state, SGD, Adam and
  friends add exactly zero to a frozen entry, so it keeps its bits.

``make_optimizer`` does both.

That covers an optimizer whose update of an entry is zero when the entry's
gradient and state are zero. Two of torch's own are not of that kind, and
the guard refuses them (the tests check every ``torch.optim`` optimizer):
``ASGD`` with ``lambd > 0`` shrinks every weight on every step, and ``Muon``
orthogonalises the whole update matrix, so entries with zero gradient move.
"""

from __future__ import annotations

import torch
from torch import nn

from .tasks import cpg_modules, masked_layers, task_state

PARTS = ("weights", "masks", "own")


def param_groups(
    model: nn.Module,
    weight_decay: float = 0.0,
    mask_lr: float | None = None,
    parts: tuple[str, ...] = PARTS,
) -> list[dict]:
    """Parameter groups for training the current task.

    Groups (each tagged ``cpg_part``): shared ``weights`` (decay applied by
    ``guard_optimizer``), picking ``masks`` (no decay; learning rate
    ``mask_lr`` if given), and the task's ``own`` parameters -- biases, batch
    norm, head -- with ``weight_decay``. ``parts`` selects groups, so weights
    and masks can have optimizers of their own (the paper: SGD for weights,
    Adam for masks). A trainable parameter outside every CPG module would be
    shared by all tasks unprotected: that is a ValueError.
    """
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"parts: expected a subset of {PARTS}, got {sorted(unknown)}")
    _, training = task_state(model)
    if training is None:
        raise RuntimeError("no task is training: call begin_task first")
    layers = [layer for _, layer in masked_layers(model)]
    weights = [layer.weight for layer in layers if layer.weight.requires_grad]
    masks = [layer.mask for layer in layers if layer.mask is not None]
    special = {id(p) for p in weights + masks}
    covered = {id(p) for _, m in cpg_modules(model) for p in m.parameters()}
    own, foreign = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in special:
            continue
        (own if id(p) in covered else foreign).append((name, p))
    if foreign:
        names = ", ".join(name for name, _ in foreign)
        raise ValueError(
            f"trainable parameters outside CPG modules would change every task: "
            f"{names}; convert those layers or freeze them (requires_grad_(False))"
        )
    groups = [
        {
            "cpg_part": "weights",
            "params": weights,
            "weight_decay": 0.0,
            "cpg_weight_decay": weight_decay,
        },
        {
            "cpg_part": "masks",
            "params": masks,
            "weight_decay": 0.0,
            **({"lr": mask_lr} if mask_lr is not None else {}),
        },
        {"cpg_part": "own", "params": [p for _, p in own], "weight_decay": weight_decay},
    ]
    return [g for g in groups if g["params"] and g["cpg_part"] in parts]


def guard_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module):
    """Make every ``optimizer.step()`` leave entries the training task does not own unchanged.

    Returns the hook handle. The optimizer must hold the model's current
    weights and masks: after ``begin_task`` or ``grow`` build a new one
    (the hook raises otherwise rather than train stale tensors). An
    optimizer that would move frozen weights whatever their gradient and
    state (see the module's doc) is a ValueError here and at each step.
    """
    _check_protectable(optimizer, model)

    def before_step(opt: torch.optim.Optimizer, args, kwargs) -> None:
        layers = {id(layer.weight): (name, layer) for name, layer in masked_layers(model)}
        _check_current(opt, layers.values())
        _check_protectable(opt, model)
        for group in opt.param_groups:
            decay = group.get("cpg_weight_decay", 0.0)
            for p in group["params"]:
                if id(p) not in layers:
                    continue
                name, layer = layers[id(p)]
                if group.get("weight_decay", 0.0):
                    raise RuntimeError(
                        f"{name}.weight: optimizer weight decay would move frozen "
                        "weights; build the groups with cpg_kernels.param_groups"
                    )
                _protect(p, layer, opt.state.get(p, {}), decay)

    return optimizer.register_step_pre_hook(before_step)


def make_optimizer(
    model: nn.Module,
    optimizer_class=torch.optim.SGD,
    *,
    weight_decay: float = 0.0,
    mask_lr: float | None = None,
    **kwargs,
) -> torch.optim.Optimizer:
    """``optimizer_class(param_groups(model, ...), **kwargs)``, guarded."""
    optimizer = optimizer_class(param_groups(model, weight_decay, mask_lr), **kwargs)
    guard_optimizer(optimizer, model)
    return optimizer


def _check_protectable(opt: torch.optim.Optimizer, model: nn.Module) -> None:
    """ValueError if ``opt`` moves shared weights whose gradient and state are zero."""
    shared = {id(layer.weight) for _, layer in masked_layers(model)}
    for group in opt.param_groups:
        if not any(id(p) in shared for p in group["params"]):
            continue
        kind = type(opt).__name__
        if isinstance(opt, torch.optim.ASGD) and group.get("lambd", 0.0):
            raise ValueError(
                f"{kind} with lambd={group['lambd']} shrinks every weight on every "
                "step, frozen ones too; use lambd=0 or another optimizer for the "
                "shared weights"
            )
        muon = getattr(torch.optim, "Muon", None)
        if muon is not None and isinstance(opt, muon):
            raise ValueError(
                f"{kind} orthogonalises each weight's whole update, so frozen "
                "entries move even with zero gradient; use another optimizer "
                "for the shared weights"
            )


def _check_current(opt: torch.optim.Optimizer, layers) -> None:
    """The optimizer holds today's tensors of every part it was built for (by
    ``param_groups``' tags; untagged groups count as holding every part)."""
    held = {id(p) for group in opt.param_groups for p in group["params"]}
    tags = {group.get("cpg_part") for group in opt.param_groups}
    parts = set(PARTS) if None in tags else tags
    stale = [
        name
        for name, layer in layers
        if ("weights" in parts and layer.weight.requires_grad and id(layer.weight) not in held)
        or ("masks" in parts and layer.mask is not None and id(layer.mask) not in held)
    ]
    if stale:
        raise RuntimeError(
            f"the optimizer does not hold the current parameters of {stale}: "
            "a task began or the model grew after it was built; build a new one"
        )


def _protect(weight: nn.Parameter, layer, state: dict, decay: float) -> None:
    """Zero gradient and optimizer state outside the training task's weights; add its decay."""
    frozen = (
        layer.owner != layer.training_task
        if layer.training_task is not None
        else torch.ones_like(layer.owner, dtype=torch.bool)
    )
    with torch.no_grad():
        if weight.grad is not None:
            weight.grad.masked_fill_(frozen, 0)
            if decay:
                weight.grad.add_(weight.masked_fill(frozen, 0), alpha=decay)
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.shape == weight.shape:
                value.masked_fill_(frozen, 0)
