"""The learning benchmark: methods x seeds on a tiny synthetic sequence, end to end."""

from __future__ import annotations

import json

import pytest
from torch import nn

from cpg_kernels.cli import main
from cpg_kernels.data import synthetic_tasks
from cpg_kernels.trainer import TrainConfig
from cpg_kernels.trainer.compare import check_sequence, compare, summarize


def _network() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2)
    )


def _load(seed: int):
    return synthetic_tasks(num_tasks=2, shape=(16,), train=32, val=16, test=16, seed=seed)


CONFIG = TrainConfig(
    epochs=1, batch_size=16, goal=0.6, final_sparsity=0.5, prune_steps=1, retrain_epochs=1
)


def test_compare_runs_every_method_with_every_seed_and_summarizes():
    methods = ["cpg", "pae", "packnet", "sequential", "independent"]
    records = compare(_load, _network, methods, [0, 1], CONFIG)
    assert [(r.method, r.seed) for r in records] == [(m, s) for s in (0, 1) for m in methods]
    summary = summarize(records)
    assert list(summary) == methods
    for method in ("cpg", "pae", "packnet", "independent"):
        assert summary[method]["forgetting"] == [0.0, 0.0]
        assert summary[method]["backward_transfer"] == [0.0, 0.0]
    assert summary["independent"]["forward_transfer"] == [0.0, 0.0]
    assert summary["independent"]["final_size"] == [2.0, 0.0]
    assert summary["packnet"]["final_size"] == [1.0, 0.0]
    cpg = summary["cpg"]
    assert cpg["seeds"] == [0, 1] and len(cpg["task_accuracy"]) == 2
    assert cpg["matrix"][1][0] is None and 0 <= cpg["matrix"][0][1] <= 1
    runs = [r for r in records if r.method == "cpg"]
    mean = sum(sum(x.accuracy for x in r.results) / 2 for r in runs) / 2
    assert cpg["average_accuracy"][0] == pytest.approx(mean)
    # The same seed gives every method the same data and initial network: the sequential
    # baseline's first task is the independent baseline's first task, bit for bit.
    for seed in (0, 1):
        first = {r.method: r.results[0].learned_accuracy for r in records if r.seed == seed}
        assert first["sequential"] == first["independent"]


def test_compare_without_independent_runs_has_no_forward_transfer():
    summary = summarize(compare(_load, _network, ["packnet"], [0], CONFIG))
    assert summary["packnet"]["forward_transfer"] is None


def test_compare_refuses_bad_input():
    with pytest.raises(ValueError, match="unknown method 'ewc'"):
        compare(_load, _network, ["cpg", "ewc"], [0], CONFIG)
    with pytest.raises(ValueError, match="listed twice"):
        compare(_load, _network, ["scratch", "independent"], [0], CONFIG)
    with pytest.raises(ValueError, match="no methods"):
        compare(_load, _network, [], [0], CONFIG)
    with pytest.raises(ValueError, match="no seeds"):
        compare(_load, _network, ["cpg"], [], CONFIG)
    with pytest.raises(ValueError, match="empty"):
        compare(lambda seed: [], _network, ["cpg"], [0], CONFIG)
    tasks = _load(0)
    with pytest.raises(ValueError, match="256 tasks.*at most 255"):
        check_sequence(tasks * 128)
    check_sequence(tasks[:1] * 255)


TINY = [
    "--data",
    "synthetic",
    "--epochs",
    "1",
    "--prune-steps",
    "1",
    "--retrain-epochs",
    "1",
    "--reference-epochs",
    "1",
    "--model",
    "mlp",
    "--width",
    "0.1",
    "--threads",
    "1",
]


def test_the_command_prints_tables_and_writes_json_and_a_plot(capsys, tmp_path):
    out_dir = tmp_path / "cmp"
    code = main(
        ["compare", *TINY, "--methods", "cpg,independent", "--seeds", "2", "-o", str(out_dir)]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "cpg seed 1: average accuracy" in err and "task 3/3" in err
    header = next(line for line in out.splitlines() if line.startswith("method"))
    assert header.split()[:4] == ["method", "avg", "acc", "learned"]
    assert "independent" in out and "±" in out
    assert "cpg: accuracy on task i (rows) after learning task j (columns)" in out
    stored = json.loads((out_dir / "compare.json").read_text())
    assert stored["command"].startswith("cpg compare --data synthetic")
    assert stored["methods"] == ["cpg", "independent"] and stored["seeds"] == [0, 1]
    assert len(stored["runs"]) == 4
    assert stored["summary"]["cpg"]["forgetting"] == [0.0, 0.0]
    assert (out_dir / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_keeps_the_finished_runs(capsys, tmp_path):
    out_dir = str(tmp_path / "cmp")
    base = ["compare", *TINY, "--methods", "packnet,independent", "-o", out_dir, "--no-plot"]
    assert main([*base, "--seeds", "1"]) == 0
    first = json.loads((tmp_path / "cmp" / "compare.json").read_text())["runs"]
    capsys.readouterr()
    assert main([*base, "--seeds", "2", "--resume"]) == 0
    _, err = capsys.readouterr()
    assert "seed 0:" not in err and "packnet seed 1: average accuracy" in err
    runs = json.loads((tmp_path / "cmp" / "compare.json").read_text())["runs"]
    assert runs[:2] == first and len(runs) == 4
    code = main([*base, "--seeds", "2", "--resume", "--epochs", "2"])
    _, err = capsys.readouterr()
    assert code == 2 and "made with other options (config)" in err


def test_parallel_runs_give_the_serial_results(capsys, tmp_path):
    def runs(*extra):
        out_dir = tmp_path / f"cmp{len(extra)}"
        argv = [
            "compare",
            *TINY,
            "--methods",
            "cpg,sequential",
            "--tasks",
            "2",
            "-q",
            "--no-plot",
            "-o",
            str(out_dir),
            *extra,
        ]
        assert main(argv) == 0
        stored = json.loads((out_dir / "compare.json").read_text())["runs"]
        return [{k: v for k, v in r.items() if k != "seconds"} for r in stored]

    assert runs("--jobs", "2") == runs()
    capsys.readouterr()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--methods", "cpg,ewc"], "unknown method 'ewc'"),
        (["--methods", ","], "no methods"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--jobs", "0"], "--jobs must be >= 1"),
        (["--tasks", "0"], "cannot take 0"),
        (["--lr-schedule", "linear"], "invalid choice"),
    ],
)
def test_bad_arguments_give_one_clear_line(capsys, argv, message):
    code = main(["compare", *TINY, *argv])
    _, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
