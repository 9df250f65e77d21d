"""The `cpg` command: train, eval, info and forget on the embedded digits; clear errors."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch

from cpg_kernels.cli import main
from cpg_kernels.cli.progress import make_bar

# A few seconds per run: two tasks, a narrow network, one epoch per phase.
QUICK = [
    "--tasks",
    "2",
    "--width",
    "0.5",
    "--epochs",
    "1",
    "--reference-epochs",
    "1",
    "--prune-steps",
    "2",
    "--retrain-epochs",
    "1",
    "--threads",
    "1",
]


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _cpg(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A CPG checkpoint of two digits tasks, and what `cpg train` printed."""
    path = tmp_path_factory.mktemp("run") / "digits.pt"
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stdout", out)
        patch.setattr(sys, "stderr", err)
        code = main(["train", *QUICK, "-o", str(path)])
    return code, out.getvalue(), err.getvalue(), path


def test_train_prints_the_results_table_and_saves(trained):
    code, out, err, path = trained
    assert code == 0, err
    assert "task 1/2: digits 0 vs 1" in err and "accuracy goal" in err
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("task "))
    assert header.split() == ["task", "goal", "learned", "now", "forgetting", "own", "used", "size"]
    rows = [line for line in lines if line.startswith(("1 digits", "2 digits"))]
    assert len(rows) == 2 and all(row.split()[-4] == "0.00" for row in rows)
    assert "old tasks exactly preserved (forgetting 0)" in out
    assert path.exists() and f"checkpoint: {path}" in out
    plot = path.with_suffix(".png")
    assert f"capacity plot: {plot}" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_shows_no_forgetting(trained, capsys):
    *_, path = trained
    code, out, err = _cpg(capsys, "eval", str(path))
    assert code == 0, err
    rows = [line.split() for line in out.splitlines() if line.startswith(("1 ", "2 "))]
    assert len(rows) == 2 and all(row[-1] == "0.00" for row in rows)


def test_info_reports_capacity_per_layer_and_task(trained, capsys, tmp_path):
    *_, path = trained
    code, out, err = _cpg(capsys, "info", str(path), "--plot", str(tmp_path / "c.png"))
    assert code == 0, err
    assert "task 1" in out and "task 2" in out and "free" in out
    assert "0.weight" not in out and "0" in out  # layers by module name
    assert "independent models" in out and "shared weights" in out
    assert "picked from older" in out


def test_forget_releases_a_task(trained, capsys, tmp_path):
    *_, path = trained
    target = tmp_path / "forgot.pt"
    code, out, err = _cpg(capsys, "forget", str(path), "--task", "1", "-o", str(target))
    assert code == 0, err
    assert "forgot task 1: released" in out
    code, out, _ = _cpg(capsys, "eval", str(target))
    assert code == 0 and "2 digits 2 vs 3" in out and "1 digits" not in out
    code, _, err = _cpg(capsys, "forget", str(target), "--task", "1")
    assert code == 2 and "not a finished task" in err


def test_train_saves_under_runs_by_default(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _cpg(
        capsys, "train", *QUICK, "--tasks", "1", "--method", "packnet", "-q", "--no-plot"
    )
    assert code == 0, err
    assert (tmp_path / "runs" / "digits-packnet.pt").exists()
    assert not (tmp_path / "runs" / "digits-packnet.png").exists()


def test_independent_baseline_reports_its_size(capsys, tmp_path):
    code, out, err = _cpg(
        capsys, "train", *QUICK, "--method", "scratch", "-q", "-o", str(tmp_path / "x.pt")
    )
    assert code == 0, err
    assert err == ""  # --quiet
    assert "2.00x" in out and "no checkpoint written" in out
    assert not (tmp_path / "x.pt").exists()


def test_an_interrupted_run_resumes_to_the_same_result(capsys, tmp_path, monkeypatch):
    from cpg_kernels.cli.stored import load_run
    from cpg_kernels.trainer import CPGTrainer

    argv = ["train", *QUICK, "--tasks", "3", "-q", "--no-plot", "-o"]
    whole, part = str(tmp_path / "whole.pt"), str(tmp_path / "part.pt")
    assert main([*argv, whole]) == 0
    learn = CPGTrainer.learn

    def interrupted(self, task):  # Ctrl-C during the third task
        if len(self.results) == 2:
            raise KeyboardInterrupt
        return learn(self, task)

    monkeypatch.setattr(CPGTrainer, "learn", interrupted)
    assert main([*argv, part]) == 130
    assert len(load_run(part)[1].results) == 2  # the checkpoint after the second task
    monkeypatch.setattr(CPGTrainer, "learn", learn)
    capsys.readouterr()
    assert main([*argv, part, "--resume", "--no-progress"]) == 0
    _, err = capsys.readouterr()
    assert err == ""  # --quiet
    (model, run), (expected_model, expected) = load_run(part), load_run(whole)
    assert [r.to_dict() for r in run.results] == [r.to_dict() for r in expected.results]
    reference = expected_model.state_dict()
    for key, value in model.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, reference[key]), key
    code, _, err = _cpg(capsys, *argv, part, "--resume", "--lr", "0.1")
    assert code == 2 and "trained with other options (lr)" in err
    code, _, err = _cpg(capsys, *argv, part, "--resume", "--method", "independent")
    assert code == 2 and "independent keeps no checkpoint" in err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--epochs", "0"], "epochs must be an int >= 1"),
        (["train", "--epochs", "x"], "invalid int value"),
        (["train", "--method", "ewc"], "invalid choice"),
        (["train", "--mask-optimizer", "lbfgs"], "invalid choice"),
        (["train", "--goal", "2"], "goal is an accuracy"),
        (["train", "--data", "cifar100"], "needs its folder"),
        (["train", "--data", "cifar100", "--data-dir", "/nonexistent"], "cifar-100-python.tar.gz"),
        (["train", "--model", "vgg16_bn"], "3-channel images"),
        (["train", "--device", "cuda:99" if torch.cuda.is_available() else "cuda"], "cuda"),
        (["train", "--threads", "0"], "--threads"),
        (["train", "--data", "synthetic", "--val-fraction", "0.1"], "fixed splits"),
        (["eval", "/nonexistent.pt"], "no such checkpoint"),
        (["info"], "required: checkpoint"),
        ([], "required: command"),
    ],
)
def test_bad_arguments_give_one_clear_line(capsys, argv, message):
    code, out, err = _cpg(capsys, *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert "Traceback" not in err and out == ""


def test_a_file_that_is_not_a_checkpoint(capsys, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    code, _, err = _cpg(capsys, "info", str(junk))
    assert code == 2 and "not a readable checkpoint" in err


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_is_tqdm_on_a_terminal_only():
    screen = _Terminal()
    bar = make_bar(3, "train", screen)
    for _ in range(3):
        bar.update(0.25)
    assert bar.bar.n == 3 and bar.bar.postfix == "loss=0.250"
    bar.close()
    assert "train:" in screen.getvalue()  # drawn (tqdm redraws at most every 0.1 s)
    log = io.StringIO()  # not a terminal: no bar at all, so logs stay short
    quiet = make_bar(4, "train", log)
    quiet.update(0.5)
    quiet.close()
    assert log.getvalue() == ""


def test_the_module_runs_as_a_command():
    done = subprocess.run(
        [sys.executable, "-m", "cpg_kernels.cli", "train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0
    assert "--method {cpg,pae,packnet,sequential,independent,finetune,scratch}" in done.stdout
