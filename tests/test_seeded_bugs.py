"""The seeded-bug list stays applicable: each bug's patch still finds its source text.

scripts/bug_probe.py refuses a bug whose ``search`` no longer occurs ``count`` times; this
cheap check keeps a refactor from silently retiring probes (running the probe itself takes
minutes, so CI only checks that it could run).
"""

import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _bugs():
    spec = importlib.util.spec_from_file_location("seeded_bugs", ROOT / "scripts/seeded_bugs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.BUGS


BUGS = _bugs()


def test_bug_ids_are_unique():
    ids = [bug.id for bug in BUGS]
    assert len(ids) == len(set(ids)), ids


@pytest.mark.parametrize("bug", BUGS, ids=lambda bug: bug.id)
def test_patch_applies(bug):
    text = (ROOT / bug.file).read_text()
    assert text.count(bug.search) == bug.count, (
        f"{bug.file}: the patch of {bug.id} expects its search text {bug.count} time(s), "
        f"found {text.count(bug.search)}; update scripts/seeded_bugs.py with the code"
    )
    assert bug.replace != bug.search


@pytest.mark.parametrize("bug", BUGS, ids=lambda bug: bug.id)
def test_named_tests_exist(bug):
    for test in bug.tests:
        path, _, name = test.partition("::")
        source = (ROOT / path).read_text()
        assert not name or f"def {name.split('[')[0]}(" in source, f"{bug.id}: no {test}"
