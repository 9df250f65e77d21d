#!/usr/bin/env bash
# The lint step of .ci/run, runnable by hand: ruff's lint rules and formatter on the Python
# sources (ruff.toml), clang-format on the C++/CUDA sources (.clang-format). Checks only; to fix,
# run `ruff check --fix . && ruff format .` and `scripts/lint.sh --fix`. Needs the `lint` extra
# (`pip install -e ".[lint]"`, or the two pinned versions below).
set -euo pipefail
cd "$(dirname "$0")/.."

mapfile -t cxx < <(git ls-files '*.cpp' '*.h' '*.cu' '*.cuh' '*.inc')
if [[ "${1:-}" == "--fix" ]]; then
  clang-format -i "${cxx[@]}"
  exit 0
fi
ruff check .
ruff format --check .
clang-format --dry-run -Werror "${cxx[@]}"
echo "lint: ruff and clang-format clean (${#cxx[@]} C++/CUDA files)"
