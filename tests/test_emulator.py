"""Builds and runs the C++ tests of the CUDA emulator (tests/emu/test_emulator.cpp).

The emulator build needs only the system C++ compiler. Where nvcc exists, the
same file is also built as CUDA for sm_90 (which checks portability.h's CUDA
branch and that the test kernels are valid CUDA), and run where an sm_90 GPU is
present, so that the hardware confirms the semantics the emulator is held to.
"""

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCE = "tests/emu/test_emulator.cpp"


def _run(cmd, timeout):
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, cmd))} exited with {result.returncode}\n"
            f"{result.stdout}{result.stderr}",
            pytrace=False,
        )
    return result.stdout


def test_emulator(tmp_path):
    exe = tmp_path / "test_emulator"
    _run(
        ["c++", "-std=c++17", "-O1", "-pthread", "-DCPG_EMU", "-I", "csrc",
         "csrc/emu/runtime.cpp", SOURCE, "-o", exe],
        timeout=300,
    )
    _run([exe], timeout=120)


def _nvcc():
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    for candidate in (shutil.which("nvcc"), os.path.join(cuda_home, "bin", "nvcc")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def cuda_build(tmp_path_factory):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found")
    exe = tmp_path_factory.mktemp("cuda") / "test_emulator_cuda"
    _run([nvcc, "-std=c++17", "-arch=sm_90", "-O1", "-I", "csrc", "-x", "cu", SOURCE, "-o", exe],
         timeout=300)
    return exe


def test_same_tests_build_as_cuda(cuda_build):
    assert cuda_build.exists()


def test_same_tests_pass_on_gpu(cuda_build):
    if shutil.which("nvidia-smi") is None:
        pytest.skip("no GPU driver")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("no sm_90 GPU")
    _run([cuda_build], timeout=120)
