"""Checkpoints of converted models, and what their parts cost.

A checkpoint is one file per model: ``torch.save`` of a dict holding a format
tag, a format version, the model's ``state_dict`` (every task's packed bits,
batch norm and head included) and the caller's metadata. It is written to a
temporary file in the same directory and renamed over the target, so a
crash never leaves a half-written checkpoint under the real name.

Loading checks everything before the model changes: the file must read
(``ValueError`` for truncated or corrupt files), carry this format and
version, fit the model (a grown checkpoint widens a freshly converted model
to match; other shape differences are errors), hold each tensor in the
model's dtype (a silent cast would change the weights old tasks compute
with) and hold consistent CPG state
(owner values within the stored tasks, packed masks that fit their layers).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import torch
from torch import nn

from .lifecycle import cpg_modules, export_task, masked_layers, task_state, validate
from .lifecycle.export import meta_copy

FORMAT = "cpg-kernels checkpoint"
VERSION = 1


def save_checkpoint(
    model: nn.Module, path: str | os.PathLike, metadata: dict | None = None
) -> None:
    """Write ``model`` (a converted model) to ``path`` atomically.

    ``metadata`` (returned by ``load_checkpoint``) must hold plain Python
    values and tensors, as it is read back with ``torch.load(weights_only=True)``;
    ``optimizer.state_dict()`` qualifies.
    """
    finished, training = task_state(model)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "tasks": finished,
        "training_task": training,
        "state_dict": model.state_dict(),
        "metadata": dict(metadata or {}),
    }
    _atomic_save(payload, os.fspath(path))


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> dict:
    """Load the checkpoint at ``path`` into ``model``; return its metadata.

    ``model`` is the same architecture, converted; it may be fresh (no
    tasks, not grown). On any error the model is left unchanged.
    """
    path = os.fspath(path)
    payload = _read(path)
    state = payload["state_dict"]
    _check_dtypes(model, state, path)
    try:
        staging = meta_copy(model)
        staging.load_state_dict(state, strict=True, assign=True)
        validate(staging)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{path}: checkpoint does not fit this model: {err}") from None
    model.load_state_dict(state, strict=True)
    return payload["metadata"]


def _check_dtypes(model: nn.Module, state: dict, path: str) -> None:
    """ValueError naming the first tensor stored in a dtype other than the model's."""
    for key, have in model.state_dict().items():
        stored = state.get(key)
        if (
            isinstance(stored, torch.Tensor)
            and isinstance(have, torch.Tensor)
            and stored.dtype != have.dtype
        ):
            raise ValueError(
                f"{path}: {key} is {stored.dtype} in the checkpoint but "
                f"{have.dtype} in the model; loading would cast it and change what "
                f"old tasks compute: bring the model to the checkpoint's dtype "
                f"first (model.to({stored.dtype}))"
            )


def _atomic_save(payload: dict, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        # O_EXCL: never clobber another writer's temp file; mode 0o666 lets
        # the umask decide permissions, as for any file the user creates.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make the rename durable where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read(path: str) -> dict:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as err:  # torch.load raises many types for damaged files
        raise ValueError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): {err}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a cpg-kernels checkpoint")
    if payload.get("version") != VERSION:
        raise ValueError(
            f"{path}: checkpoint format version {payload.get('version')!r}; this "
            f"cpg_kernels reads version {VERSION}"
        )
    if not isinstance(payload.get("state_dict"), dict) or not isinstance(
        payload.get("metadata"), dict
    ):
        raise ValueError(f"{path}: checkpoint lacks its state_dict or metadata")
    return payload


# ------------------------------------------------------------------ sizes


@dataclass(frozen=True)
class SizeReport:
    """Bytes a converted model holds, by part (the paper's Table 3 view).

    ``weights``: the dense weights shared by every task; ``owners``: their
    owner map; ``per_task``: what each finished task adds on its own (packed
    bits, biases, batch norm, head), of which ``masks`` counts the packed
    bits; ``other``: everything else (the training task's live state, the
    original classifier, layers outside CPG). ``independent``: one dense
    model per finished task, as without CPG.
    """

    weights: int
    owners: int
    masks: int
    per_task: dict[int, int]
    other: int
    independent: int

    @property
    def total(self) -> int:
        return self.weights + self.owners + sum(self.per_task.values()) + self.other

    def __str__(self) -> str:
        rows = [("shared weights", self.weights), ("owners", self.owners)]
        rows += [(f"task {t}", n) for t, n in self.per_task.items()]
        rows += [
            ("  of which packed masks", self.masks),
            ("other", self.other),
            ("total (CPG)", self.total),
            ("independent models", self.independent),
        ]
        lines = [f"{name:<24}{_human(n):>12}" for name, n in rows]
        if self.total:
            lines.append(f"{'independent / CPG':<24}{self.independent / self.total:>11.2f}x")
        return "\n".join(lines)


def size_report(model: nn.Module) -> SizeReport:
    """Sizes of ``model``'s parts against one independent model per task."""
    finished, _ = task_state(model)
    layers = [layer for _, layer in masked_layers(model)]
    weights = sum(_nbytes(layer.weight) for layer in layers)
    owners = sum(_nbytes(layer.owner) for layer in layers)
    masks = sum(_nbytes(layer.get_buffer(f"bits_{t}")) for layer in layers for t in finished)
    per_task = {
        t: sum(_nbytes(x) for _, m in cpg_modules(model) for x in m.task_tensors(t))
        for t in finished
    }
    total = sum(_nbytes(x) for x in model.state_dict().values() if isinstance(x, torch.Tensor))
    other = total - weights - owners - sum(per_task.values())
    independent = sum(
        _nbytes(x) for t in finished for x in export_task(model, t).state_dict().values()
    )
    return SizeReport(weights, owners, masks, per_task, other, independent)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
