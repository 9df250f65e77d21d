"""A training run on disk: the model's checkpoint plus what rebuilds network and data.

The checkpoint's metadata holds a ``run`` dict of plain values: the data
set (name, folder, task count, validation share), the network (name,
width, input shape, classes), the training config, the task names and the
results. ``cpg eval``/``info``/``forget`` rebuild the network from it and
then load the weights with ``checkpoint.load_checkpoint``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

import torch
from torch import nn

from ..checkpoint import load_checkpoint, save_checkpoint
from ..convert import convert
from ..trainer import TaskResult
from .networks import network_builder


@dataclass
class Run:
    """What ``cpg train`` stores next to the weights."""

    data: str
    data_dir: str | None
    num_tasks: int | None
    val_fraction: float | None
    model: str
    width: float
    input_shape: list[int]
    num_classes: int
    base_weights: int
    config: dict
    results: list[TaskResult] = field(default_factory=list)

    def to_metadata(self) -> dict:
        values = {k: v for k, v in vars(self).items() if k != "results"}
        return {"run": {**values, "results": [r.to_dict() for r in self.results]}}

    @classmethod
    def from_metadata(cls, metadata: dict, path: str) -> Run:
        values = metadata.get("run")
        if not isinstance(values, dict):
            raise ValueError(
                f"{path}: this checkpoint was not written by `cpg train` (no run "
                "description); load it with cpg_kernels.checkpoint instead"
            )
        known = {f.name for f in fields(cls)} - {"results"}
        results = [TaskResult.from_dict(r) for r in values.get("results", [])]
        return cls(**{k: v for k, v in values.items() if k in known}, results=results)

    def names(self) -> dict[int, str]:
        return {r.task_id: r.name for r in self.results}

    def build(self) -> nn.Module:
        """The converted network, as it was before the first task."""
        return convert(
            network_builder(self.model, tuple(self.input_shape), self.num_classes, self.width)()
        )


def save_run(model: nn.Module, run: Run, path: str | os.PathLike) -> None:
    save_checkpoint(model, path, run.to_metadata())


def load_run(path: str | os.PathLike, device: str = "cpu") -> tuple[nn.Module, Run]:
    """The trained model and its run description from a ``cpg train`` checkpoint."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint")
    run = Run.from_metadata(_peek_metadata(path), path)
    model = run.build()
    load_checkpoint(model, path)
    return model.to(device), run


def _peek_metadata(path: str) -> dict:
    """The checkpoint's metadata, read (memory-mapped) before a model exists to load into."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch.load raises many types for damaged files
        raise ValueError(f"{path}: not a readable checkpoint: {err}") from None
    metadata = payload.get("metadata") if isinstance(payload, dict) else None
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: not a cpg-kernels checkpoint")
    return metadata
