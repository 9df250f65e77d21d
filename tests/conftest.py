"""Backend selection for the op suites.

Every op test takes the ``backend`` fixture and runs once per backend:
``cpu`` (the CPU path), ``emu`` (the CUDA kernels' source under the CPU
emulator, on CPU tensors) and ``cuda`` (the GPU). ``CPG_TEST_BACKENDS``
(comma-separated) narrows the set; a requested backend that is not available
here is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass

import pytest
import torch

from cpg_kernels import backends


@dataclass(frozen=True)
class Backend:
    name: str
    device: str

    @property
    def small(self) -> bool:
        """The emulator is slow: tests shrink their shapes under it."""
        return self.name == "emu"

    def context(self, seed: int = 0):
        return backends.emulated(seed) if self.name == "emu" else contextlib.nullcontext()

    def run(self, fn, *args, seed: int = 0, **kwargs):
        with self.context(seed):
            return fn(*args, **kwargs)


def _requested() -> list[str]:
    raw = os.environ.get("CPG_TEST_BACKENDS", ",".join(backends.BACKENDS))
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = set(names) - set(backends.BACKENDS)
    if unknown:
        raise pytest.UsageError(f"CPG_TEST_BACKENDS: unknown backends {sorted(unknown)}")
    return names


def _param(name: str):
    marks = [pytest.mark.cuda] if name == "cuda" else []
    return pytest.param(name, marks=marks, id=name)


@pytest.fixture(params=[_param(n) for n in _requested()])
def backend(request) -> Backend:
    name = request.param
    if name == "cuda" and not (backends.cuda_built() and torch.cuda.is_available()):
        pytest.skip("cuda backend: no CUDA device or the CUDA kernels were not built")
    return Backend(name, "cuda" if name == "cuda" else "cpu")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Test tensors are tiny: a second thread only adds synchronisation, which on a
    busy 2-core machine costs more than the work itself."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _exact_fp32():
    """fp32 means fp32: TF32 is switched off for cuBLAS and cuDNN (cuDNN allows it by
    default) so the float32 tolerances hold; tests that want TF32 turn it on."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(autouse=True)
def _fused_kernels():
    """The op suites test the fused kernels on small shapes, so the kernel backends keep them
    for every shape; tests/test_gemm_path.py tests the rule that picks the library path for
    large ones (csrc/ops/gemm_path.h) with ``backends.gemm_path("auto")``."""
    with backends.gemm_path("fused"):
        yield


def pytest_sessionfinish(session):
    """With CPG_BOUND_REPORT=FILE, writes the largest error-to-bound ratio seen per precision
    (cpg_kernels.testing.assert_within_bound) as JSON, for scripts/bug_probe.py."""
    path = os.environ.get("CPG_BOUND_REPORT")
    if path:
        from cpg_kernels.testing import OBSERVED_RATIOS

        with open(path, "w") as f:
            json.dump(OBSERVED_RATIOS, f, indent=1, sort_keys=True)
