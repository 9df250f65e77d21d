"""The trainer end to end on synthetic tasks: pruning, growth, exact unforgetting, baselines."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from cpg_kernels import lifecycle as L
from cpg_kernels.convert import convert
from cpg_kernels.data import synthetic_tasks
from cpg_kernels.trainer import (
    Callback,
    CPGTrainer,
    IndependentTrainer,
    LoggingCallback,
    SequentialTrainer,
    TaskResult,
    TrainConfig,
    cubic_sparsity,
    make_trainer,
    pruning_targets,
)
from cpg_kernels.trainer import base as trainer_base
from cpg_kernels.trainer.loops import run_epochs


def _network() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(16, 24),
        nn.BatchNorm1d(24),
        nn.ReLU(),
        nn.Linear(24, 24),
        nn.BatchNorm1d(24),
        nn.ReLU(),
        nn.Linear(24, 2),
    )


def _tasks(n: int = 3, **options):
    return synthetic_tasks(num_tasks=n, shape=(16,), train=64, val=32, test=32, **options)


def _config(**options) -> TrainConfig:
    values = dict(
        epochs=2,
        batch_size=16,
        optimizer="adam",
        lr=3e-3,
        prune_lr=1e-3,
        goal=0.6,
        final_sparsity=0.75,
        prune_steps=3,
        retrain_epochs=1,
    )
    return TrainConfig(**{**values, **options})


class _Recorder(Callback):
    """Keeps every event, and each task's logits on fixed inputs right after it finished."""

    def __init__(self, model: nn.Module | None = None, probe: torch.Tensor | None = None):
        self.model, self.probe = model, probe
        self.events: list[tuple] = []
        self.logits: dict[int, torch.Tensor] = {}

    def on_goal(self, task_id, goal, reference):
        self.events.append(("goal", task_id, goal, reference))

    def on_grow(self, task_id, old_size, new_size):
        self.events.append(("grow", task_id, old_size, new_size))

    def on_prune(self, task_id, sparsity, accuracy, kept):
        self.events.append(("prune", task_id, sparsity, kept, _own(self.model, task_id)))

    def on_task_end(self, result):
        if self.probe is not None:
            self.logits[result.task_id] = _logits(self.model, result.task_id, self.probe)

    def of(self, kind: str) -> list[tuple]:
        return [e for e in self.events if e[0] == kind]


def _logits(model: nn.Module, t: int, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad(), L.task(model, t):
        return model(x)


def _own(model, t: int) -> int | None:
    if model is None:
        return None
    return sum(int((layer.owner == t).sum()) for _, layer in L.masked_layers(model))


# ------------------------------------------------------------------- schedule


def test_cubic_schedule_rises_fast_then_gently():
    assert cubic_sparsity(0, 4, 0.0, 0.8) == 0.0
    assert cubic_sparsity(4, 4, 0.0, 0.8) == pytest.approx(0.8)
    steps = [cubic_sparsity(i, 4, 0.0, 0.8) for i in range(5)]
    gains = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    assert all(g > 0 for g in gains) and gains == sorted(gains, reverse=True)
    assert pruning_targets(0.0, 0.8, 4) == pytest.approx(steps[1:])
    assert pruning_targets(0.2, 0.8, 2)[0] == pytest.approx(0.2)  # s_0 > 0: prune there first
    with pytest.raises(ValueError, match="step"):
        cubic_sparsity(5, 4, 0.0, 0.8)


# ------------------------------------------------------------------------ CPG


def test_cpg_prunes_to_its_sparsity_and_forgets_nothing():
    tasks = _tasks()
    model = convert(_network())
    probe = torch.stack([tasks[0].test[i][0] for i in range(8)])
    recorder = _Recorder(model, probe)
    results = CPGTrainer(model, _config(), [recorder]).fit(tasks)

    assert [r.task_id for r in results] == [1, 2, 3]
    for r in results:
        assert r.sparsity == pytest.approx(0.75, abs=0.01), r  # the goal held to the end
        assert r.forgetting == 0.0 and r.accuracy == r.learned_accuracy
        assert torch.equal(_logits(model, r.task_id, probe), recorder.logits[r.task_id])
        assert r.val_accuracy >= r.goal
    # Later tasks pick older weights: they compute with more than they own.
    assert results[2].used_weights > results[2].own_weights
    targets = [e[2] for e in recorder.of("prune") if e[1] == 1]
    assert targets == pytest.approx(pruning_targets(0.0, 0.75, 3))
    assert L.task_state(model) == ([1, 2, 3], None)


def test_paper_optimizers_sgd_for_weights_adam_for_masks(monkeypatch):
    steps = []  # per training phase: [(optimizer class, {id of each parameter})]

    def spy(model, optimizers, *args, **kwargs):
        steps.append(
            [(type(o), {id(p) for g in o.param_groups for p in g["params"]}) for o in optimizers]
        )
        return run_epochs(model, optimizers, *args, **kwargs)

    monkeypatch.setattr(trainer_base, "run_epochs", spy)
    tasks = _tasks()
    model = convert(_network())
    probe = torch.stack([tasks[0].test[i][0] for i in range(8)])
    recorder = _Recorder(model, probe)
    config = _config(optimizer="sgd", lr=0.05, mask_optimizer="adam", mask_lr=5e-4)
    results = CPGTrainer(model, config, [recorder]).fit(tasks)

    # Task 1 has no older weights to pick: SGD alone. Later tasks: SGD for the weights and the
    # task's own parameters, Adam for exactly the picking masks.
    assert [cls for cls, _ in steps[0]] == [torch.optim.SGD]
    later = steps[-1]
    assert [cls for cls, _ in later] == [torch.optim.SGD, torch.optim.Adam]
    weights = {id(layer.weight) for _, layer in L.masked_layers(model)}
    assert weights <= later[0][1] and not (later[0][1] & later[1][1])
    assert len(later[1][1]) == len(weights)  # a mask per masked layer (gone once finalized)
    for r in results:
        assert r.forgetting == 0.0
        assert torch.equal(_logits(model, r.task_id, probe), recorder.logits[r.task_id])


def test_pruning_keeps_the_sparsest_state_that_meets_the_goal():
    tasks = _tasks(1)
    model = convert(_network())
    recorder = _Recorder(model)
    config = _config(goal=0.8, final_sparsity=0.995, prune_steps=4, epochs=4)
    result = CPGTrainer(model, config, [recorder]).learn(tasks[0])

    steps = recorder.of("prune")
    kept = [e for e in steps if e[3]]
    assert not steps[-1][3], "the last step should miss the goal at 99.5% sparsity"
    assert kept, "some pruning should meet the goal"
    assert result.own_weights == kept[-1][4]  # the state after the last kept step
    assert result.sparsity == pytest.approx(kept[-1][2], abs=0.01)
    assert result.val_accuracy >= 0.8


def test_a_missed_goal_still_leaves_room_and_growth_stops_at_the_cap():
    tasks = _tasks(3, label_noise=0.5)  # random labels: 100% is out of reach
    model = convert(_network())
    recorder = _Recorder(model, torch.stack([tasks[0].test[i][0] for i in range(8)]))
    config = _config(goal=1.0, growth_step=0.3, max_size=1.7)
    results = CPGTrainer(model, config, [recorder]).fit(tasks)

    grows = recorder.of("grow")
    assert all(e[1] != 1 for e in grows)  # the first task never grows (Algorithm 1)
    assert len(grows) >= 2 and grows[0][1] == 2
    assert all(new > old for _, _, old, new in grows)
    assert 1.3 < results[-1].model_size <= 1.7
    assert results[1].growths >= 2 and results[0].growths == 0
    assert all(r.goal_met is False for r in results)
    # Every task but the last still releases 1 - 1/(tasks after it + 1) of what it had:
    # the tasks after it find weights of their own.
    assert results[0].sparsity == pytest.approx(1 - 1 / 3, abs=0.01)
    assert results[1].sparsity == pytest.approx(1 - 1 / 2, abs=0.01)
    assert results[2].sparsity == 0.0 and results[2].own_weights > 0
    for r in results:
        assert torch.equal(_logits(model, r.task_id, recorder.probe), recorder.logits[r.task_id])
        assert r.forgetting == 0.0


def test_the_reserve_without_a_known_sequence_length():
    tasks = _tasks(1, label_noise=0.5)
    for options, expected in (
        (dict(), 0.5),
        (dict(total_tasks=5), 0.8),
        (dict(reserve=0.3, total_tasks=5), 0.3),
    ):
        model = convert(_network())
        result = CPGTrainer(model, _config(goal=1.0, method="pae", **options)).learn(tasks[0])
        assert not result.goal_met and result.sparsity == pytest.approx(expected, abs=0.01)


class _Growth(Callback):
    """At each growth: the old region of every layer's weight, and whether a task trains."""

    def __init__(self, model):
        self.model, self.begun, self.seen = model, None, []

    def on_task_begin(self, task_id, name):
        self.begun = {n: layer.weight.detach().clone() for n, layer in L.masked_layers(self.model)}

    def on_grow(self, task_id, old_size, new_size):
        state = L.task_state(self.model)[1]
        same = all(
            torch.equal(layer.weight[: w.shape[0], : w.shape[1]], w)
            for n, layer in L.masked_layers(self.model)
            for w in [self.begun[n]]
        )
        self.seen.append((state, same))


@pytest.mark.parametrize("restart", [True, False])
def test_growth_restarts_the_task_from_its_state_before_it_began(restart):
    tasks = _tasks(2, label_noise=0.5)
    model = convert(_network())
    spy = _Growth(model)
    config = _config(
        goal=1.0, method="pae", growth_restart=restart, final_sparsity=0.5, prune_steps=1
    )
    results = CPGTrainer(model, config, [spy]).fit(tasks)
    assert results[1].growths == 1 and len(spy.seen) == 1
    # Restart: the network grows as it was before the task (no task training, its
    # weights untouched), then the task begins again; otherwise it grows mid-task.
    assert spy.seen[0] == ((None, True) if restart else (2, False))
    assert results[0].forgetting == 0.0


def test_resume_continues_to_the_same_result_as_an_uninterrupted_run(tmp_path):
    from cpg_kernels.checkpoint import load_checkpoint, save_checkpoint

    tasks, config = _tasks(3), _config(goal=None, goal_drop=0.05, reference_epochs=1)

    def fresh():
        torch.manual_seed(0)
        return convert(_network())

    whole = CPGTrainer(fresh(), config)
    whole.fit(tasks)

    class Crash(Exception):
        pass

    path = tmp_path / "run.pt"

    def save_then_crash(trainer):
        save_checkpoint(
            trainer.model,
            path,
            {"results": [r.to_dict() for r in trainer.results], "base": trainer.base_weights},
        )
        if len(trainer.results) == 2:
            raise Crash

    with pytest.raises(Crash):
        CPGTrainer(fresh(), config).fit(tasks, after_task=save_then_crash)
    model = fresh()
    stored = load_checkpoint(model, path)
    resumed = CPGTrainer(model, config, base_weights=stored["base"])
    resumed.results = [TaskResult.from_dict(r) for r in stored["results"]]
    resumed.fit(tasks)

    assert [r.to_dict() for r in resumed.results] == [r.to_dict() for r in whole.results]
    expected = whole.model.state_dict()
    for key, value in resumed.model.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, expected[key]), key


def test_relative_goal_comes_from_a_fine_tuned_reference(caplog):
    tasks = _tasks(2)
    model = convert(_network())
    recorder = _Recorder()
    with caplog.at_level(logging.INFO, logger="cpg_kernels.trainer"):
        CPGTrainer(
            model,
            _config(goal=None, goal_drop=0.1, reference_epochs=1),
            [recorder, LoggingCallback()],
        ).fit(tasks)
    assert "task 2: reference: validation accuracy" in caplog.text
    assert "task 2 done: test accuracy" in caplog.text
    goals = recorder.of("goal")
    assert [e[1] for e in goals] == [1, 2]
    for _, _, goal, reference in goals:
        assert 0 < reference <= 1 and goal == pytest.approx(max(reference - 0.1, 0.0))


def test_packnet_prunes_each_task_once_to_a_fixed_ratio_without_a_goal():
    tasks = _tasks(3)
    model = convert(_network())
    recorder = _Recorder(model)
    trainer = CPGTrainer(model, _config(method="packnet", goal=None), [recorder])
    results = trainer.fit(tasks)
    assert not recorder.of("grow") and not recorder.of("goal")
    assert all(r.goal is None and r.goal_met is None and r.model_size == 1.0 for r in results)
    # One prune per task, to 1 - 1/(tasks after it + 1); the last task keeps all it has.
    prunes = [(e[1], e[2]) for e in recorder.of("prune")]
    assert prunes == [(1, pytest.approx(2 / 3)), (2, pytest.approx(1 / 2))]
    assert [r.sparsity for r in results] == [
        pytest.approx(2 / 3, abs=0.01),
        pytest.approx(1 / 2, abs=0.01),
        0.0,
    ]
    older = sum(
        int(((layer.owner > 0) & (layer.owner < 3)).sum()) for _, layer in L.masked_layers(model)
    )
    assert results[2].used_weights == results[2].own_weights + older  # picks every older one

    fixed = CPGTrainer(convert(_network()), _config(method="packnet", prune_ratio=0.25))
    assert fixed.learn(tasks[0]).sparsity == pytest.approx(0.25, abs=0.01)


def test_pae_grows_but_picks_every_older_weight():
    tasks = _tasks(2, label_noise=0.5)
    model = convert(_network())
    recorder = _Recorder()
    results = CPGTrainer(model, _config(method="pae", goal=1.0), [recorder]).fit(tasks)
    assert recorder.of("grow") and results[-1].model_size > 1.0
    older = results[0].own_weights
    assert results[1].used_weights == results[1].own_weights + older


def test_same_seed_same_run_other_seed_other_run():
    def run(seed: int):
        torch.manual_seed(seed)  # the initial weights, as `cpg train` seeds them
        model = convert(_network())
        results = CPGTrainer(model, _config(seed=seed)).fit(_tasks(2))
        return model.state_dict(), [r.to_dict() for r in results]

    first, again, other = run(1), run(1), run(2)
    assert first[1] == again[1]
    for key, value in first[0].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, again[0][key]), key
    assert not torch.equal(first[0]["1.weight"], other[0]["1.weight"])


# ------------------------------------------------------------------ baselines


@pytest.mark.parametrize("method", ["finetune", "scratch"])
def test_independent_baselines_keep_one_network_per_task(method):
    trainer = make_trainer(_network, _config(method=method))
    assert isinstance(trainer, IndependentTrainer)
    results = trainer.fit(_tasks(2))
    assert [r.model_size for r in results] == [1, 2]
    assert all(r.forgetting == 0.0 and r.goal is None for r in results)
    assert len(trainer.networks) == 2
    assert trainer.networks[0] is not trainer.networks[1]


def test_finetune_starts_from_the_previous_task_and_scratch_does_not():
    def second_start_matches_first(method: str) -> bool:
        trainer = make_trainer(_network, _config(method=method, lr=1e-7))  # barely moves
        trainer.fit(_tasks(2))
        first, second = (net[1].weight for net in trainer.networks)
        return torch.allclose(first, second, atol=1e-5)

    assert second_start_matches_first("finetune")
    assert not second_start_matches_first("scratch")


def test_sequential_fine_tuning_shares_one_network_and_forgets():
    tasks = _tasks(2)
    trainer = make_trainer(_network, _config(method="sequential", epochs=4, lr=1e-2))
    assert isinstance(trainer, SequentialTrainer)
    probe = torch.stack([tasks[0].test[i][0] for i in range(8)])
    trainer.learn(tasks[0])
    trainer.network.eval()
    before = trainer.network(probe)
    results = trainer.fit(tasks)  # task 1 is learned: fit goes on with task 2
    assert [r.model_size for r in results] == [1.0, 1.0] and len(trainer.heads) == 2
    trainer.network.set_submodule(trainer.head_name, trainer.heads[0])
    trainer.network.eval()
    # Task 2 trained the shared layers: task 1's outputs moved, nothing kept them.
    assert not torch.allclose(trainer.network(probe), before)
    assert results[0].history[0] == results[0].learned_accuracy
    assert results[0].forgetting == results[0].learned_accuracy - results[0].history[1]


# ------------------------------------------------------------ training phases


def test_schedules_and_the_papers_mask_schedule():
    from cpg_kernels.trainer.loops import lr_scheduler, schedule_factor

    assert [schedule_factor("step", p) for p in (0.0, 0.49, 0.5, 0.8)] == [1, 1, 0.1, 0.01]
    assert schedule_factor("cosine", 0.0) == 1 and schedule_factor("cosine", 1.0) == 0
    assert schedule_factor("cosine", 0.5) == pytest.approx(0.5)
    weight, mask = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD(
        [{"params": [weight], "cpg_part": "weights"}, {"params": [mask], "cpg_part": "masks"}],
        lr=1.0,
    )
    scheduler = lr_scheduler(optimizer, 10, "constant", "paper")
    rates = []
    for _ in range(10):
        rates.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert [r[0] for r in rates] == [1.0] * 10
    assert [r[1] for r in rates] == pytest.approx([1] * 5 + [0.2] * 2 + [0] * 3)


def _scripted(monkeypatch, values):
    """Validation accuracies come from ``values``; returns the weights seen at each."""
    seen = []

    def accuracy(self, model, dataset):
        seen.append(model[1].weight.detach().clone())
        return values[len(seen) - 1]

    monkeypatch.setattr(trainer_base.Trainer, "_accuracy", accuracy)
    return seen


def test_a_phase_ends_in_its_best_epoch(monkeypatch):
    seen = _scripted(monkeypatch, [0.5, 0.9, 0.6, 0.9, 0.7])
    trainer = make_trainer(_network, _config(method="independent"))
    net = _network()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    assert trainer._train(net, optimizer, _tasks(1)[0], 5, 1, "train") == 0.9
    # The best epoch, the later of two equals (the more trained one).
    assert len(seen) == 5 and torch.equal(net[1].weight, seen[3])
    assert not torch.equal(seen[1], seen[3]) and not torch.equal(seen[3], seen[4])


def test_patience_stops_a_phase_early(monkeypatch):
    steps = []

    class Steps(Callback):
        def on_step(self, task_id, phase, loss):
            steps.append(loss)

    seen = _scripted(monkeypatch, [0.5, 0.9, 0.6, 0.7, 0.95, 0.99])  # stops after 0.7
    trainer = make_trainer(_network, _config(method="independent", patience=2), [Steps()])
    task = _tasks(1)[0]
    net = _network()
    val = trainer._train(net, torch.optim.SGD(net.parameters(), lr=0.1), task, 6, 1, "train")
    assert val == 0.9 and len(seen) == 4  # two epochs without a better one after the best
    assert len(steps) == 4 * len(task.train) // 16


def test_fit_records_the_accuracy_matrix():
    from cpg_kernels.trainer import accuracy_matrix, backward_transfer, forgetting

    trainer = make_trainer(_network, _config(method="sequential"))
    results = trainer.fit(_tasks(3))
    matrix = accuracy_matrix(results)
    assert [len(r.history) for r in results] == [3, 2, 1]
    assert matrix[2][:2] == [None, None] and matrix[0][0] == results[0].learned_accuracy
    assert [r.accuracy for r in results] == [row[-1] for row in matrix]
    assert backward_transfer(results) == pytest.approx(
        (matrix[0][2] - matrix[0][0] + matrix[1][2] - matrix[1][1]) / 2
    )
    assert forgetting(results) == pytest.approx(
        (max(matrix[0][:2]) - matrix[0][2] + matrix[1][1] - matrix[1][2]) / 2
    )


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(method="ewc"), "unknown method"),
        (dict(epochs=0), "epochs"),
        (dict(goal=1.5), "goal"),
        (dict(initial_sparsity=0.5, final_sparsity=0.2), "sparsities"),
        (dict(final_sparsity=1.0), "sparsities"),
        (dict(max_size=0.5), "max_size"),
        (dict(lr=0.0), "lr"),
        (dict(optimizer="lbfgs"), "optimizer"),
        (dict(mask_optimizer="lbfgs"), "mask_optimizer"),
        (dict(lr_schedule="linear"), "lr_schedule"),
        (dict(mask_schedule="x"), "mask_schedule"),
        (dict(reserve=1.0), "reserve"),
        (dict(prune_ratio=-0.1), "prune_ratio"),
        (dict(total_tasks=256), "at most 255"),
        (dict(patience=0), "patience"),
    ],
)
def test_config_rejects_bad_values(options, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**options)


def test_fit_needs_tasks():
    for method in ("cpg", "sequential", "independent"):
        with pytest.raises(ValueError, match="empty"):
            make_trainer(_network, _config(method=method)).fit([])


def test_scratch_is_the_independent_baseline():
    assert TrainConfig(method="scratch").method == "independent"


def test_trainers_refuse_what_they_cannot_train():
    with pytest.raises(ValueError, match="IndependentTrainer"):
        CPGTrainer(convert(_network()), _config(method="scratch"))
    with pytest.raises(ValueError, match="CPGTrainer"):
        IndependentTrainer(_network, _config())
    with pytest.raises(ValueError, match="convert"):
        CPGTrainer(_network(), _config())
    model = convert(_network())
    L.begin_task(model, 1, num_classes=2)
    with pytest.raises(ValueError, match="still training"):
        CPGTrainer(model, _config())


class _Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Linear(16, 4), nn.Linear(16, 4), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(torch.cat([self.a(x), self.b(x)], 1))


def test_growth_methods_check_the_network_can_grow_up_front():
    with pytest.raises(ValueError, match="cat"):
        CPGTrainer(convert(_Concat()), _config())
    CPGTrainer(convert(_Concat()), _config(method="packnet"))  # packnet never grows
