"""The capacity plot: for each layer, the share of its weights each task owns."""

from __future__ import annotations

import os

from torch import nn

from .. import lifecycle as L
from .tables import capacity_shares


def plot_capacity(model: nn.Module, path: str | os.PathLike, title: str = "") -> None:
    """Save a stacked bar chart of capacity per layer and task to ``path`` (PNG)."""
    # Imported here: matplotlib takes a second to import, and only plots need it.
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    finished, _ = L.task_state(model)
    shares = capacity_shares(model)
    names = list(shares)
    kinds = {
        name: type(layer).__name__.removeprefix("CPG") for name, layer in L.masked_layers(model)
    }
    palette = plt.get_cmap("tab20")
    # (label, color, share per layer); a task keeps its color across plots.
    parts = [(f"task {t}", palette((t - 1) % 20), [shares[n][t] for n in names]) for t in finished]
    if any(shares[n]["forgotten"] for n in names):
        parts.append(("forgotten, in use", "dimgrey", [shares[n]["forgotten"] for n in names]))
    parts.append(("free", "lightgrey", [shares[n]["free"] for n in names]))

    figure, axes = plt.subplots(figsize=(8, 0.35 * len(names) + 1.6))
    labels = [f"{n} {kinds[n]}" for n in names]
    left = [0.0] * len(names)
    for label, color, values in parts:
        axes.barh(labels, [100 * v for v in values], left=left, label=label, color=color)
        left = [a + 100 * v for a, v in zip(left, values, strict=True)]
    axes.invert_yaxis()  # first layer on top
    axes.set_xlim(0, 100)
    axes.set_xlabel("share of the layer's weights (%)")
    axes.set_title(title or "capacity per layer and task")
    axes.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12 - 0.6 / len(names)),
        ncol=min(len(parts), 6),
        frameon=False,
    )
    figure.tight_layout()
    figure.savefig(os.fspath(path), dpi=120)
    plt.close(figure)


def plot_comparison(
    summary: dict[str, dict], names: list[str], path: str | os.PathLike, title: str = ""
) -> None:
    """Save a line chart of each method's final test accuracy per task (mean ± std) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(max(6.0, 0.7 * len(names) + 2), 4.2))
    positions = list(range(1, len(names) + 1))
    for method, values in summary.items():
        means = [100 * m for m, _ in values["task_accuracy"]]
        stds = [100 * s for _, s in values["task_accuracy"]]
        average = 100 * values["average_accuracy"][0]
        axes.errorbar(
            positions, means, yerr=stds, marker="o", capsize=3, label=f"{method} ({average:.1f}%)"
        )
    axes.set_xticks(positions)
    axes.set_xticklabels([str(p) for p in positions])
    axes.set_xlabel("task, in the order learned")
    axes.set_ylabel("test accuracy after the last task (%)")
    axes.set_title(title or "final accuracy per task")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize="small")
    figure.tight_layout()
    figure.savefig(os.fspath(path), dpi=120)
    plt.close(figure)
