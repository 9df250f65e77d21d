"""Plain-text tables: results per task, capacity per layer and task."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .. import lifecycle as L
from ..masks import count_bits, owner_counts
from ..trainer import TaskResult, average_accuracy


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the first column left-aligned, others right."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]

    def line(cells) -> str:
        return "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "-" * len(line(headers))
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def results_table(results: Sequence[TaskResult], base_weights: int) -> str:
    """Per task: goal, test accuracy after learning and now, forgetting, weights, size.

    Accuracies and forgetting are in percent; ``own``/``used`` are the task's
    weights as a share of the original network, ``size`` the model's size
    after the task in units of the original network.
    """
    headers = ["task", "goal", "learned", "now", "forgetting", "own", "used", "size"]
    rows = [
        [
            f"{r.task_id} {r.name}",
            percent(r.goal),
            percent(r.learned_accuracy),
            percent(r.accuracy),
            "-" if r.forgetting is None else f"{100 * r.forgetting:.2f}",
            percent(r.own_weights / base_weights),
            percent(r.used_weights / base_weights),
            f"{r.model_size:.2f}x",
        ]
        for r in results
    ]
    learned = sum(r.learned_accuracy for r in results) / len(results)
    forgetting = [r.forgetting for r in results if r.forgetting is not None]
    rows.append(
        [
            "average",
            "",
            percent(learned),
            percent(average_accuracy(results)),
            f"{100 * sum(forgetting) / len(forgetting):.2f}" if forgetting else "-",
            "",
            "",
            f"{results[-1].model_size:.2f}x",
        ]
    )
    return (
        format_table(headers, rows) + "\n(test accuracy in %; own/used: the task's own and "
        "used weights, % of the original network; size: times the original network)"
    )


def summary(method: str, results: Sequence[TaskResult]) -> str:
    """One line: average accuracy, and whether old tasks were preserved exactly."""
    line = (
        f"{method}: average accuracy {100 * average_accuracy(results):.2f}% over "
        f"{len(results)} tasks, final size {results[-1].model_size:.2f}x the original"
    )
    if results and all(r.forgetting == 0.0 for r in results):
        line += "; old tasks exactly preserved (forgetting 0)"
    return line


def ownership_table(model: nn.Module) -> str:
    """Per layer: its shape and the share of its weights each task owns, and free.

    Weights of forgotten tasks that a remaining task still uses stay owned
    by the forgotten task; they get a column of their own.
    """
    finished, _ = L.task_state(model)
    shares = capacity_shares(model)
    forgotten = any(share["forgotten"] for share in shares.values())
    headers = [
        "layer",
        "shape",
        *(f"task {t}" for t in finished),
        *(["forgotten, in use"] if forgotten else []),
        "free",
    ]
    shapes = {
        name: "x".join(map(str, layer.weight.shape)) for name, layer in L.masked_layers(model)
    }
    rows = [
        [
            name,
            shapes[name],
            *(percent(share[t]) for t in finished),
            *([percent(share["forgotten"])] if forgotten else []),
            percent(share["free"]),
        ]
        for name, share in shares.items()
    ]
    return format_table(headers, rows)


def capacity_shares(model: nn.Module) -> dict[str, dict]:
    """Per layer name: the share of its weights each finished task owns (keyed by task
    id), ``"free"``, and ``"forgotten"`` (owned by forgotten tasks, still in use)."""
    finished, _ = L.task_state(model)
    shares = {}
    for name, layer in L.masked_layers(model):
        counts = owner_counts(layer.owner).tolist()
        total = layer.owner.numel()
        share = {t: counts[t] / total for t in finished}
        share["free"] = counts[0] / total
        share["forgotten"] = (total - counts[0] - sum(counts[t] for t in finished)) / total
        shares[name] = share
    return shares


def task_table(model: nn.Module, names: dict[int, str]) -> str:
    """Per task: weights it owns, weights it computes with, and those picked from older tasks."""
    finished, _ = L.task_state(model)
    layers = [layer for _, layer in L.masked_layers(model)]
    headers = ["task", "own weights", "used weights", "picked from older"]
    rows = []
    for t in finished:
        own = sum(int((layer.owner == t).sum()) for layer in layers)
        used = sum(count_bits(layer.get_buffer(f"bits_{t}")) for layer in layers)
        rows.append(
            [f"{t} {names.get(t, '')}".rstrip(), f"{own:,}", f"{used:,}", f"{used - own:,}"]
        )
    return format_table(headers, rows)
