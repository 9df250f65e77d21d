"""Per-task results: accuracy right after learning, accuracy now, forgetting, size."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class TaskResult:
    """What learning one task gave.

    Accuracies are on the task's test set: ``learned_accuracy`` right after
    the task was learned, ``accuracy`` after the last task (None until
    measured). Weight counts are of the shared layers (every conv/linear
    layer but the classifier): ``own_weights`` the task trained and kept,
    ``used_weights`` it computes with (its own plus the older ones it picked).
    ``model_size``: the shared weights the whole model held once the task was
    learned, in units of the original network (growth makes it larger; for
    independent baselines it counts all their networks so far).
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

    @property
    def forgetting(self) -> float | None:
        """Accuracy lost since the task was learned (exactly 0 for CPG and its baselines)."""
        return None if self.accuracy is None else self.learned_accuracy - self.accuracy

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TaskResult:
        return cls(**values)


def average_accuracy(results: list[TaskResult]) -> float:
    """Mean current accuracy over tasks (after-learning accuracy where not measured)."""
    if not results:
        raise ValueError("no results")
    values = [r.learned_accuracy if r.accuracy is None else r.accuracy for r in results]
    return sum(values) / len(values)
