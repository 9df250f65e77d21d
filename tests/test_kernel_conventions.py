"""The kernel sources keep the portability contract (docs/design.md section 4): everything that is
not plain C++ goes through csrc/cuda/portability.h, so that the same source builds for the GPU
and for the CPU emulator. A kernel that wrote a bare CUDA construct would compile with nvcc and
silently drop out of the emulator's coverage, or fail to build there."""

from __future__ import annotations

import pathlib
import re

import pytest

CUDA_DIR = pathlib.Path(__file__).resolve().parents[1] / "csrc" / "cuda"
CONTRACT = CUDA_DIR / "portability.h"

# Constructs only portability.h may spell out (its macros and cpgdev:: functions wrap them).
FORBIDDEN = {
    "launch syntax <<< >>>": r"<<<",
    "bare __shared__ array": r"\b__shared__\b",
    "__syncthreads": r"\b__syncthreads\b",
    "warp shuffles": r"\b__shfl\w*",
    "warp votes": r"\b__(ballot|any|all)_sync\b",
    "inline PTX": r"\basm\b",
    "atomics": r"\batomic(Add|Or|And|Max|Min|CAS|Exch)\b",
    "__launch_bounds__": r"\b__launch_bounds__\b",
    "__global__ / __device__": r"\b__(global|device)__\b",
}


def _sources():
    return sorted(
        p for p in CUDA_DIR.iterdir() if p.suffix in (".cu", ".cuh", ".h") and p != CONTRACT
    )


def _code(path: pathlib.Path) -> str:
    """The file without comments, so that prose may name the constructs."""
    text = path.read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


@pytest.mark.parametrize("path", _sources(), ids=lambda p: p.name)
def test_kernel_source_uses_only_the_portability_layer(path):
    code = _code(path)
    found = [name for name, pattern in FORBIDDEN.items() if re.search(pattern, code)]
    assert not found, f"{path.name}: {', '.join(found)} outside portability.h"


def test_the_scan_sees_every_kernel_file():
    names = {p.name for p in _sources()}
    assert {
        "masked_gemm.cu",
        "masked_conv.cu",
        "elementwise.cu",
        "gemm_mma.cuh",
        "conv_views.cuh",
        "gemm_split_k.cuh",
    } <= names
