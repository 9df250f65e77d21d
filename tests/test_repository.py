"""The repository stands on its own: no file points a reader at a path outside it."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("cpg_kernels", "csrc", "docs", "tests", "benchmarks", "scripts")
TEXT_SUFFIXES = {".py", ".md", ".h", ".cuh", ".cu", ".cpp", ".inc", ".sh", ".txt", ".toml", ".cfg"}
# A relative path that climbs out of the repository into the sibling folders the project was
# started from (the lead's design map, the tool library), named here only by pattern.
_SIBLINGS = "|".join(["sha" + "red", r"\.lib" + "rary"])
OUTSIDE = re.compile(rf"\.\./({_SIBLINGS})\b|(?<![\w/])DESIGN\.md")


def _text_files():
    for top in SOURCE_DIRS:
        for path in (ROOT / top).rglob("*"):
            if path.is_file() and path.suffix in TEXT_SUFFIXES and "results" not in path.parts:
                yield path
    for path in ROOT.iterdir():
        if path.is_file() and path.suffix in TEXT_SUFFIXES:
            yield path


def test_no_file_refers_outside_the_repository():
    offenders = []
    for path in _text_files():
        for number, line in enumerate(path.read_text(errors="ignore").splitlines(), 1):
            if OUTSIDE.search(line) and path != pathlib.Path(__file__).resolve():
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "references outside the repository:\n" + "\n".join(offenders)


def test_the_design_page_exists_with_the_sections_code_cites():
    design = (ROOT / "docs" / "design.md").read_text()
    cited = set()
    for path in _text_files():
        text = path.read_text(errors="ignore")
        cited.update(re.findall(r"docs/design\.md\W+section (\d+)", text))
    assert cited, "nothing cites docs/design.md by section; the check below would be empty"
    for number in cited:
        assert re.search(rf"^## {number}\. ", design, re.M), (
            f"no section {number} in docs/design.md"
        )


# A C++ source named by its path under csrc/ ("csrc/ops/mask_ops.cpp" or "ops/mask_ops.cpp").
CSRC_PATH = re.compile(
    r"(?<![\w./])(?:csrc/)?((?:core|cpu|cuda|emu|ops)/\w+\.(?:h|cpp|cu|cuh|inc))\b"
)


def test_every_csrc_file_a_text_names_exists():
    missing = []
    for path in _text_files():
        for number, line in enumerate(path.read_text(errors="ignore").splitlines(), 1):
            for name in CSRC_PATH.findall(line):
                if not (ROOT / "csrc" / name).is_file():
                    missing.append(f"{path.relative_to(ROOT)}:{number}: {name}")
    assert not missing, "names of csrc files that do not exist:\n" + "\n".join(missing)
