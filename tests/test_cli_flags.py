"""Every ``cpg train`` flag named after a TrainConfig field lands in that field, and only there.

Table-driven over the parser's own actions and the dataclass's fields, so a flag added later
is checked without a new test: each flag gets a value unlike every field's default, and
the TrainConfig that ``cpg train`` builds must hold it in the field of the flag's name with
every other field at its default. (The run stops at that TrainConfig: nothing trains.)
"""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from cpg_kernels import cli
from cpg_kernels.trainer import config as config_module

FIELDS = {f.name: f for f in dataclasses.fields(config_module.TrainConfig)}


def _train_parser() -> argparse.ArgumentParser:
    commands = next(
        a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    )
    return commands.choices["train"]


def _long(action: argparse.Action) -> str | None:
    return next((s for s in action.option_strings if s.startswith("--")), None)


def _field(action: argparse.Action) -> str | None:
    """The TrainConfig field a flag names (--prune-lr: prune_lr), or None."""
    flag = _long(action)
    name = flag[2:].replace("-", "_") if flag else None
    return name if name in FIELDS else None


def _flag_actions() -> list[argparse.Action]:
    """The train flags whose long option names a TrainConfig field."""
    return [a for a in _train_parser()._actions if _field(a)]


def _distinct_value(action: argparse.Action, default) -> tuple[str, object]:
    """A command-line string and the value it parses to, unlike the field's default."""
    if action.choices:
        for choice in action.choices:
            if choice not in (action.default, default):
                return str(choice), choice
        pytest.fail(f"{action.option_strings}: every choice is the default")
    kind = action.type or str
    text = {int: "7", float: "0.237"}.get(kind, "cpu:7")
    value = kind(text)
    if value in (action.default, default):
        text = {int: "8", float: "0.238"}.get(kind, "cpu:8")
        value = kind(text)
    return text, value


class _Captured(Exception):
    """Raised from TrainConfig.__post_init__ to stop `cpg train` once its config is built."""


@pytest.fixture
def built_config(monkeypatch):
    """Runs `cpg train ARGS` up to its TrainConfig and returns that config's fields.

    (The flag's value is captured before TrainConfig validates it, so e.g. --max-size 0.237
    is fine here: what is checked is where each value goes.)"""
    seen = []

    def capture(self):
        seen.append(dataclasses.asdict(self))
        raise _Captured

    def run(argv: list[str]) -> dict:
        monkeypatch.setattr(config_module.TrainConfig, "__post_init__", capture)
        # A device flag may name one that this machine lacks: the check is not under test.
        monkeypatch.setattr(cli.train, "check_device", lambda device: None, raising=False)
        seen.clear()
        with pytest.raises(_Captured):
            cli.main(["train", *argv])
        monkeypatch.undo()
        return seen[0]

    return run


def test_the_table_covers_the_train_flags():
    names = {_field(a) for a in _flag_actions()}
    # The flags that exist today; more may come, none may silently drop out of the table.
    assert {
        "method",
        "epochs",
        "batch_size",
        "optimizer",
        "mask_optimizer",
        "lr",
        "mask_lr",
        "prune_lr",
        "momentum",
        "weight_decay",
        "goal",
        "goal_drop",
        "reference_epochs",
        "initial_sparsity",
        "final_sparsity",
        "prune_steps",
        "retrain_epochs",
        "growth_step",
        "max_size",
        "seed",
        "device",
    } <= names


def test_each_flag_sets_the_field_it_names_and_no_other(built_config):
    defaults = built_config([])
    for action in _flag_actions():
        flag, field = _long(action), _field(action)
        text, value = _distinct_value(action, defaults[field])
        got = built_config([flag, text])
        assert got[field] == value, f"{flag} {text} -> {field}={got[field]!r}"
        changed = {k for k in got if got[k] != defaults[k]}
        assert changed == {field}, f"{flag} {text} changed {sorted(changed)}"
