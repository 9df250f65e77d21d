"""Training configuration: one dataclass for CPG and every baseline."""
from __future__ import annotations

from dataclasses import asdict, dataclass

METHODS = ("cpg", "pae", "packnet", "sequential", "independent", "finetune")
SHARED_METHODS = ("cpg", "pae", "packnet")  # one network whose weights the tasks share
ALIASES = {"scratch": "independent"}  # the CPG paper's name for independent models
OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class Method:
    """What a shared-network method does differently: pick older weights? grow?"""

    picking: bool
    growth: bool


SHARED = {
    "cpg": Method(picking=True, growth=True),       # Hung et al. 2019
    "packnet": Method(picking=False, growth=False),  # Mallya & Lazebnik 2018
    "pae": Method(picking=False, growth=True),       # PackNet + growth (Hung et al. 2019)
}


@dataclass(frozen=True)
class TrainConfig:
    """How to learn each task.

    Shared methods (``cpg``, ``packnet``, ``pae``), per task: train for
    ``epochs`` (the new weights, and with ``cpg`` the picking masks); while
    the validation accuracy misses the goal, grow the network (``cpg``,
    ``pae``) by up to ``growth_step`` of its original size per step, never
    past ``max_size`` times it, and train again; then, if the goal is met,
    prune the task's weights along the Zhu-Gupta cubic schedule from
    ``initial_sparsity`` to ``final_sparsity`` in ``prune_steps`` steps with
    ``retrain_epochs`` of training at ``prune_lr`` after each, keeping the
    sparsest state that still meets the goal.

    The goal is ``goal`` (an accuracy in (0, 1]) when given; otherwise the
    validation accuracy of a reference -- a dense copy of the network
    fine-tuned on the task alone for ``reference_epochs`` (default
    ``epochs``) -- minus ``goal_drop``.

    Independent baselines (``finetune``: each task's own copy of the network,
    fine-tuned from the previous task's; ``scratch``: each task's own freshly
    initialized network) train ``epochs`` per task and have no goal.

    ``batch_size`` is per process under DistributedDataParallel.

    The defaults run the embedded digits tasks in seconds. One optimizer
    (``optimizer``, with ``mask_lr`` for the picking masks) trains everything,
    unless ``mask_optimizer`` gives the masks one of their own at ``mask_lr``:
    the paper trains weights with SGD and masks with Adam
    (``optimizer="sgd", mask_optimizer="adam"``). Adam suits the masks, whose
    gradients are tiny.
    ``goal_drop=0.015`` forgives one error on a digits task's validation set.
    """

    method: str = "cpg"
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 3e-3
    mask_lr: float = 5e-4
    mask_optimizer: str | None = None
    momentum: float = 0.9
    weight_decay: float = 4e-5
    goal: float | None = None
    goal_drop: float = 0.015
    reference_epochs: int | None = None
    initial_sparsity: float = 0.0
    final_sparsity: float = 0.9
    prune_steps: int = 5
    retrain_epochs: int = 2
    prune_lr: float = 1e-3
    growth_step: float = 0.5
    max_size: float = 1.5
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.method in ALIASES:
            object.__setattr__(self, "method", ALIASES[self.method])
        _choice("method", self.method, METHODS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        if self.mask_optimizer is not None:
            _choice("mask_optimizer", self.mask_optimizer, OPTIMIZERS)
        for name in ("epochs", "batch_size", "prune_steps"):
            _at_least(name, getattr(self, name), 1)
        _at_least("retrain_epochs", self.retrain_epochs, 0)
        if self.reference_epochs is not None:
            _at_least("reference_epochs", self.reference_epochs, 1)
        for name in ("lr", "prune_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("mask_lr", "momentum", "weight_decay", "goal_drop"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.goal is not None and not 0 < self.goal <= 1:
            raise ValueError(f"goal is an accuracy in (0, 1], got {self.goal}")
        if not 0 <= self.initial_sparsity <= self.final_sparsity < 1:
            raise ValueError("sparsities need 0 <= initial_sparsity <= final_sparsity < 1, got "
                             f"{self.initial_sparsity} and {self.final_sparsity}")
        if not self.growth_step > 0:
            raise ValueError(f"growth_step must be > 0, got {self.growth_step}")
        if not self.max_size >= 1:
            raise ValueError(f"max_size must be >= 1 (times the original size), got "
                             f"{self.max_size}")

    @property
    def shared(self) -> Method | None:
        """The shared-network method, or None for an independent baseline."""
        return SHARED.get(self.method)

    def to_dict(self) -> dict:
        return asdict(self)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose from {', '.join(choices)}")


def _at_least(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
