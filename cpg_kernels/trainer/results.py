"""Per-task results, the accuracy matrix, and the continual-learning metrics.

``TaskResult.history`` is task i's row of the accuracy matrix: its test
accuracy right after it was learned, then after each later task. With R[i][j]
the accuracy on task i after learning task j (j >= i) over T tasks:

* average accuracy: mean over i of R[i][T];
* backward transfer (Lopez-Paz & Ranzato 2017): mean over i < T of
  R[i][T] - R[i][i] (negative: forgetting);
* forgetting (Chaudhry et al. 2018): mean over i < T of
  max over i <= j < T of R[i][j], minus R[i][T];
* forward transfer, against independent models (one network trained from
  scratch per task): mean over i of R[i][i] - R_independent[i][i]. In a
  multi-head setting a task cannot be measured before its head exists, so
  the usual "accuracy before learning" reference does not apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields


@dataclass
class TaskResult:
    """What learning one task gave.

    Accuracies are on the task's test set: ``learned_accuracy`` right after
    the task was learned, ``accuracy`` after the last task (None until
    measured), ``history`` after each task from this one on. Weight counts
    are of the shared layers (every conv/linear layer but the classifier):
    ``own_weights`` the task trained and kept, ``used_weights`` it computes
    with (its own plus the older ones it picked). ``model_size``: the shared
    weights the whole model held once the task was learned, in units of the
    original network (growth makes it larger; for independent baselines it
    counts all their networks so far). ``goal_met``: whether the validation
    accuracy kept met the goal (None without a goal).
    """

    task_id: int
    name: str
    learned_accuracy: float
    own_weights: int
    used_weights: int
    model_size: float
    goal: float | None = None
    val_accuracy: float | None = None
    sparsity: float = 0.0
    growths: int = 0
    accuracy: float | None = None
    goal_met: bool | None = None
    history: list[float] = field(default_factory=list)

    @property
    def forgetting(self) -> float | None:
        """Accuracy lost since the task was learned (exactly 0 for CPG and its baselines)."""
        return None if self.accuracy is None else self.learned_accuracy - self.accuracy

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TaskResult:
        known = {f.name for f in fields(cls)}  # older checkpoints lack newer fields
        return cls(**{k: v for k, v in values.items() if k in known})


def _final(result: TaskResult) -> float:
    return result.learned_accuracy if result.accuracy is None else result.accuracy


def average_accuracy(results: Sequence[TaskResult]) -> float:
    """Mean current accuracy over tasks (after-learning accuracy where not measured)."""
    if not results:
        raise ValueError("no results")
    return sum(_final(r) for r in results) / len(results)


def accuracy_matrix(results: Sequence[TaskResult]) -> list[list[float | None]]:
    """R[i][j]: accuracy on task i after learning task j; None where j < i."""
    count = len(results)
    matrix: list[list[float | None]] = []
    for i, result in enumerate(results):
        row = result.history or [result.learned_accuracy]
        if len(row) != count - i:
            raise ValueError(
                f"task {result.task_id}: {len(row)} accuracies in its history, "
                f"expected {count - i} (one per task from it to the last)"
            )
        matrix.append([None] * i + list(row))
    return matrix


def backward_transfer(results: Sequence[TaskResult]) -> float:
    """Mean over all tasks but the last of R[i][T] - R[i][i]; 0 for a single task."""
    older = results[:-1]
    if not older:
        return 0.0
    return sum(_final(r) - r.learned_accuracy for r in older) / len(older)


def forgetting(results: Sequence[TaskResult]) -> float:
    """Chaudhry's forgetting: mean over older tasks of their best earlier accuracy minus now."""
    older = results[:-1]
    if not older:
        return 0.0
    drops = []
    for r in older:
        row = r.history or [r.learned_accuracy]
        earlier = row[:-1] or row
        drops.append(max(earlier) - _final(r))
    return sum(drops) / len(drops)


def forward_transfer(results: Sequence[TaskResult], independent: Sequence[TaskResult]) -> float:
    """Mean over tasks of R[i][i] minus an independent model's accuracy on task i."""
    if len(results) != len(independent) or not results:
        raise ValueError(
            f"forward transfer needs one independent result per task, got "
            f"{len(independent)} for {len(results)} tasks"
        )
    gains = [
        r.learned_accuracy - s.learned_accuracy for r, s in zip(results, independent, strict=True)
    ]
    return sum(gains) / len(gains)
