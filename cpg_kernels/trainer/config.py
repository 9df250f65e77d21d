"""Training configuration: one dataclass for CPG and every baseline."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..masks import MAX_TASK

METHODS = ("cpg", "pae", "packnet", "sequential", "independent", "finetune")
SHARED_METHODS = ("cpg", "pae", "packnet")  # one network whose weights the tasks share
ALIASES = {"scratch": "independent"}  # the CPG paper's name for independent models
OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class Method:
    """What a shared-network method does: pick older weights? grow? how it compacts.

    ``goal``: compaction and growth follow an accuracy goal (CPG, PAE);
    without one (PackNet) a task is pruned once to a fixed ratio.
    """

    picking: bool
    growth: bool
    goal: bool = True


SHARED = {
    "cpg": Method(picking=True, growth=True),  # Hung et al. 2019
    "pae": Method(picking=False, growth=True),  # Hung et al., ICMR 2019
    "packnet": Method(picking=False, growth=False, goal=False),  # Mallya & Lazebnik 2018
}
SCHEDULES = ("constant", "step", "cosine")
MASK_SCHEDULES = ("paper", "same")


@dataclass(frozen=True)
class TrainConfig:
    """How to learn each task.

    CPG and PAE (``cpg``, ``pae``), per task (see docs/protocol.md):

    1. Train for ``epochs`` (the free weights, and with ``cpg`` the picking
       masks over the older ones; ``pae`` uses every older weight).
    2. If the validation accuracy misses the goal and the network may still
       grow (never for the first task, never past ``max_size`` times its
       original size), grow it by up to ``growth_step`` of its original size
       and, with ``growth_restart``, train the task again from its state
       before the task began (the paper: "expand, reset, go to the previous
       step"); otherwise keep training on from where it stopped.
    3. Prune the task's weights along the Zhu-Gupta cubic schedule from
       ``initial_sparsity`` to ``final_sparsity`` in ``prune_steps`` steps,
       ``retrain_epochs`` of training at ``prune_lr`` after each, keeping the
       sparsest state that still meets the goal. A task that missed its goal
       is pruned to the reserve instead, so it still leaves room for the
       tasks after it: ``reserve`` of the weights available to the task when
       given, else 1 - 1/(remaining tasks + 1) when the sequence length is
       known (``total_tasks``, or the sequence ``Trainer.fit`` is given),
       else 0.5.

    PackNet (``packnet``): train for ``epochs``, prune once to
    ``prune_ratio`` of the available weights (default: the reserve above),
    retrain ``prune_steps * retrain_epochs`` epochs at ``prune_lr``. No goal,
    no growth.

    The goal is ``goal`` (an accuracy in (0, 1]) when given; otherwise the
    validation accuracy of a reference -- a dense copy of the network
    fine-tuned on the task alone for ``reference_epochs`` (default
    ``epochs``) -- minus ``goal_drop``.

    Every training phase follows ``lr_schedule`` step by step (``constant``
    by default: at these short budgets cosine and step decay lost accuracy,
    docs/protocol.md; the picking
    masks follow ``mask_schedule``; ``paper``: x0.2 from half the phase, 0
    from 70%, as the paper's code), evaluates on validation after each epoch
    and, with ``select_best``, ends in its best epoch's state; ``patience``
    stops a phase after that many epochs without improvement.

    The other baselines train ``epochs`` per task and have no goal:
    ``sequential`` fine-tunes one shared network (a head per task; the
    forgetting lower bound), ``independent`` trains a fresh network per task
    (the paper's "scratch"), ``finetune`` a copy of the previous task's.

    ``batch_size`` is per process under DistributedDataParallel.

    The defaults run the embedded digits tasks in seconds. One optimizer
    (``optimizer``, with ``mask_lr`` for the picking masks) trains everything,
    unless ``mask_optimizer`` gives the masks one of their own at ``mask_lr``:
    the paper trains weights with SGD and masks with Adam
    (``optimizer="sgd", mask_optimizer="adam"``). Adam suits the masks, whose
    gradients are tiny; but Adam moves every entry by about ``mask_lr`` a step
    whatever its gradient, and an entry starts only 5e-3 above the threshold,
    so ``mask_lr`` is Piggyback's and the paper's code's 1e-4: at 5e-4 noise
    alone unpicked a third of the older weights (docs/protocol.md).
    ``goal_drop=0.015`` forgives one error on a digits task's validation set.
    """

    method: str = "cpg"
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 3e-3
    mask_lr: float = 1e-4
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
    growth_restart: bool = True
    reserve: float | None = None
    total_tasks: int | None = None
    prune_ratio: float | None = None
    lr_schedule: str = "constant"
    mask_schedule: str = "paper"
    select_best: bool = True
    patience: int | None = None
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
            raise ValueError(
                "sparsities need 0 <= initial_sparsity <= final_sparsity < 1, got "
                f"{self.initial_sparsity} and {self.final_sparsity}"
            )
        if not self.growth_step > 0:
            raise ValueError(f"growth_step must be > 0, got {self.growth_step}")
        if not self.max_size >= 1:
            raise ValueError(
                f"max_size must be >= 1 (times the original size), got {self.max_size}"
            )
        _choice("lr_schedule", self.lr_schedule, SCHEDULES)
        _choice("mask_schedule", self.mask_schedule, MASK_SCHEDULES)
        for name in ("reserve", "prune_ratio"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"{name} is a share of the weights in [0, 1), got {value}")
        if self.total_tasks is not None:
            _at_least("total_tasks", self.total_tasks, 1)
            if self.total_tasks > MAX_TASK:
                raise ValueError(
                    f"total_tasks: a shared network holds at most {MAX_TASK} "
                    f"tasks, got {self.total_tasks}"
                )
        if self.patience is not None:
            _at_least("patience", self.patience, 1)

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
