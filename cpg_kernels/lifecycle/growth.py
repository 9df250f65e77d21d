"""Growth: widen every layer of a converted network by a factor.

The network is traced with ``torch.fx`` to find its *channel spaces*: sets of
tensors whose channel dimension must keep one width. A conv/linear output
starts a space; batch norm, activations, pooling and dropout stay in it; a
residual ``+`` merges two spaces into one (so ResNet blocks keep their
residual widths consistent); ``flatten`` feeds a space to a linear layer
``H*W`` features per channel. Each space a CPG layer produces grows to
``ceil(width * factor)``; the model's input and output keep their widths.
A space that reaches an operation this planner does not understand (a
``torch.cat``, an unconverted layer, a grouped convolution, ...) cannot
grow, and ``grow`` raises an error naming that operation before changing
anything.

Finished tasks keep computing at their own width (see ``CPGConv2d.grow``),
so their outputs stay bit-identical; the new channels are free weights for
the training task or the next one. Any optimizer must be rebuilt afterwards.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..nn import PER_TASK_NORMS, CPGConv2d, CPGModule, MaskedLayer, TaskHeads

_PASS_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Mish,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
_PASS_FUNCTIONS = {
    F.relu,
    torch.relu,
    F.relu6,
    F.leaky_relu,
    F.gelu,
    F.silu,
    F.hardswish,
    torch.sigmoid,
    torch.tanh,
    F.dropout,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
}
_PASS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone"}
_ELEMENTWISE = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.mul,
    operator.imul,
    torch.add,
    torch.sub,
    torch.mul,
}
_ELEMENTWISE_METHODS = {"add", "add_", "sub", "mul", "mul_"}
_SCALAR_METHODS = {"size", "dim"}


@dataclass(frozen=True)
class _Value:
    """A traced tensor: its channel space; ``flat``: flattened, ``H*W`` features per channel."""

    space: int
    flat: bool = False


@dataclass
class _Spaces:
    """Union-find over channel spaces, with what may and may not grow."""

    parent: list[int] = field(default_factory=list)
    fixed: set[int] = field(default_factory=set)  # model input/output: keeps its width
    blocked: dict[int, str] = field(default_factory=dict)  # reaches an op we cannot widen

    def new(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def root(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> int:
        a, b = self.root(a), self.root(b)
        self.parent[b] = a
        return a

    def is_fixed(self, s: int) -> bool:
        return any(self.root(f) == self.root(s) for f in self.fixed)

    def blocker(self, s: int) -> str | None:
        return next((why for b, why in self.blocked.items() if self.root(b) == self.root(s)), None)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, CPGModule) or super().is_leaf_module(m, qualname)


@dataclass
class _Plan:
    """Channel spaces of a traced model and who reads or writes each one."""

    spaces: _Spaces
    layers: dict[str, tuple[MaskedLayer, _Value | None, int]]  # name -> (layer, input, output)
    norms: dict[str, tuple[nn.Module, int]]  # name -> (batch norm, space)
    heads: dict[str, tuple[TaskHeads, _Value | None]]  # name -> (heads, input)


def grow(model: nn.Module, factor: float) -> dict[str, tuple[int, int]]:
    """Widen every growable space of ``model`` by ``factor`` (> 1), in place.

    Returns ``{layer name: (old, new) output width}`` for the layers that grew.
    Build a new optimizer afterwards: grown parameters are new tensors.
    """
    if not factor > 1.0:
        raise ValueError(f"growth factor must be > 1, got {factor}")
    plan = _trace(model)
    extra = _extra_widths(plan, factor)
    # Work out every change before making any: widths are read from the layers.
    layers = [
        (
            name,
            layer,
            extra.get(plan.spaces.root(out), 0),
            _input_extra(plan, extra, name, layer.weight.shape[1], inp),
        )
        for name, (layer, inp, out) in plan.layers.items()
    ]
    norms = [(norm, extra.get(plan.spaces.root(space), 0)) for norm, space in plan.norms.values()]
    heads = [
        (head, _input_extra(plan, extra, name, head.in_features, inp))
        for name, (head, inp) in plan.heads.items()
    ]
    grown = {}
    for name, layer, out_extra, in_extra in layers:
        if out_extra or in_extra:
            before = layer.weight.shape[0]
            layer.grow(out_extra, in_extra)
            if out_extra:
                grown[name] = (before, before + out_extra)
    for module, channels in norms + heads:
        if channels:
            module.grow(channels)
    return grown


def _extra_widths(plan: _Plan, factor: float) -> dict[int, int]:
    """Channels to add per space root; raises if a space that should grow cannot."""
    spaces, extra, problems = plan.spaces, {}, []
    for name, (layer, _, out) in plan.layers.items():
        root = spaces.root(out)
        if root in extra or spaces.is_fixed(root):
            continue
        why = spaces.blocker(root)
        if why is not None:
            problems.append(f"{name} (its output reaches {why})")
            continue
        width = layer.weight.shape[0]
        extra[root] = math.ceil(width * factor) - width
    if problems:
        raise ValueError("cannot grow: " + "; ".join(problems))
    return extra


def _input_extra(
    plan: _Plan, extra: dict[int, int], name: str, width: int, inp: _Value | None
) -> int:
    """Input channels to add to a layer of input ``width`` reading ``inp``."""
    if inp is None:
        return 0
    added = extra.get(plan.spaces.root(inp.space), 0)
    if not inp.flat or not added:
        return added
    channels = _space_width(plan, inp.space)
    if width % channels:
        raise ValueError(
            f"cannot grow: {name} reads {width} flattened features, not a multiple "
            f"of the {channels} channels before the flatten"
        )
    return added * (width // channels)


def _space_width(plan: _Plan, space: int) -> int:
    root = plan.spaces.root(space)
    return next(
        layer.weight.shape[0]
        for layer, _, out in plan.layers.values()
        if plan.spaces.root(out) == root
    )


def _trace(model: nn.Module) -> _Plan:
    try:
        graph = _Tracer().trace(model)
    except Exception as err:  # fx raises many types for untraceable code
        raise ValueError(f"cannot grow: torch.fx cannot trace the model ({err})") from err
    plan = _Plan(_Spaces(), {}, {}, {})
    values: dict[fx.Node, _Value | None] = {}
    for node in graph.nodes:
        values[node] = _visit(node, values, plan, model)
    return plan


def _visit(node: fx.Node, values: dict, plan: _Plan, model: nn.Module) -> _Value | None:
    """The value ``node`` produces, recording how it uses the channel spaces."""
    spaces = plan.spaces
    inputs = [values[n] for n in node.all_input_nodes if values.get(n) is not None]
    first = values.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None

    if node.op == "placeholder":
        space = spaces.new()
        spaces.fixed.add(space)
        return _Value(space)
    if node.op == "output":
        for v in inputs:
            spaces.fixed.add(v.space)
        return None
    if node.op == "get_attr":
        space = spaces.new()
        spaces.blocked[space] = f"the tensor attribute {node.target}"
        return _Value(space)
    if node.op == "call_module":
        return _visit_module(node, model.get_submodule(node.target), first, plan)
    if node.op == "call_method" and node.target in _SCALAR_METHODS:
        return None
    if (node.op == "call_method" and node.target in _PASS_METHODS) or (
        node.op == "call_function" and node.target in _PASS_FUNCTIONS
    ):
        return first
    if _is_flatten(node):
        return _flatten(first, spaces, f"{node.op} {node.target}")
    if (node.op == "call_method" and node.target in _ELEMENTWISE_METHODS) or (
        node.op == "call_function" and node.target in _ELEMENTWISE
    ):
        return _merge(inputs, spaces, f"{node.op} {node.target}")
    if node.op == "call_function" and node.target is getattr:
        return None
    return _block(inputs, spaces, f"{node.op} {getattr(node.target, '__name__', node.target)}")


def _visit_module(node: fx.Node, module: nn.Module, inp: _Value | None, plan: _Plan):
    spaces, name = plan.spaces, node.target
    if isinstance(module, MaskedLayer):
        if name in plan.layers:  # a layer called twice: one input, one output
            _, seen, out = plan.layers[name]
            if seen is not None and inp is not None:
                spaces.union(seen.space, inp.space)
            return _Value(out)
        out = spaces.new()
        plan.layers[name] = (module, inp, out)
        if isinstance(module, CPGConv2d) and module.groups != 1:
            why = f"the grouped convolution {name}"
            spaces.blocked[out] = why
            if inp is not None:
                spaces.blocked[inp.space] = why
        return _Value(out)
    if isinstance(module, tuple(PER_TASK_NORMS.values())):
        if inp is None or inp.flat:
            return _block([inp] if inp else [], spaces, f"the batch norm {name} after a flatten")
        plan.norms[name] = (module, inp.space)
        return inp
    if isinstance(module, TaskHeads):
        plan.heads[name] = (module, inp)
        return None
    if isinstance(module, _PASS_MODULES):
        return inp
    if isinstance(module, nn.Flatten) and (module.start_dim, module.end_dim) == (1, -1):
        return _flatten(inp, spaces, f"the flatten {name}")
    return _block([inp] if inp else [], spaces, f"{name} ({type(module).__name__})")


def _is_flatten(node: fx.Node) -> bool:
    """``torch.flatten(x, 1)``, ``x.flatten(1)`` or ``x.view(x.size(0), -1)``."""
    args = list(node.args[1:]) + list(node.kwargs.values())
    if (node.op, node.target) in (("call_function", torch.flatten), ("call_method", "flatten")):
        return args[:1] == [1] and args[1:] in ([], [-1])
    if node.op == "call_method" and node.target in ("view", "reshape"):
        return len(args) == 2 and args[1] == -1
    return False


def _flatten(inp: _Value | None, spaces: _Spaces, what: str) -> _Value | None:
    if inp is None or not inp.flat:
        return _Value(inp.space, flat=True) if inp else None
    return _block([inp], spaces, what)


def _merge(inputs: list[_Value], spaces: _Spaces, what: str) -> _Value | None:
    """Elementwise op: all tensor operands share one channel space."""
    if not inputs:
        return None
    if len({v.flat for v in inputs}) > 1:
        return _block(inputs, spaces, what)
    space = inputs[0].space
    for v in inputs[1:]:
        space = spaces.union(space, v.space)
    return _Value(space, inputs[0].flat)


def _block(inputs: list[_Value], spaces: _Spaces, what: str) -> _Value:
    """An op we cannot widen: its operands' spaces must keep their widths."""
    for v in inputs:
        spaces.blocked[v.space] = what
    out = spaces.new()
    spaces.blocked[out] = what
    return _Value(out)
