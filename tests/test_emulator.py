"""Builds and runs the C++ tests of the CUDA emulator (tests/emu/test_emulator.cpp).

The emulator build needs only the system C++ compiler; it is built with AddressSanitizer and
UndefinedBehaviorSanitizer, which run the same checks (the fiber switches announced to ASan
must raise no false report) and prove that a kernel's out-of-bounds global read is caught:
the emulator itself bounds-checks shared memory only, and global memory is what the
sanitizer step of .ci/run checks for the library's kernels (scripts/sanitized_emulator.sh).
Where nvcc exists, the same file is also built as CUDA for sm_90 (which checks portability.h's CUDA
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


def _run(cmd, timeout, env=None):
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, cmd))} exited with {result.returncode}\n"
            f"{result.stdout}{result.stderr}",
            pytrace=False,
        )
    return result.stdout


# Compiling the emulator takes about a minute on an idle 2-core machine; the subprocess
# limits below bound each step, these bound the tests that run them.
COMPILE_AND_RUN = pytest.mark.timeout(900)


# One build serves both tests: the emulator's checks run under ASan and UBSan (which also
# proves its fiber switches raise no false report), and the out-of-bounds read is caught.
# (The plain build of runtime.cpp runs in every emulator op test, inside the extension.)
SANITIZERS = [
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=undefined",
    "-fno-omit-frame-pointer",
    "-g",
]


@pytest.fixture(scope="module")
def sanitized_build(tmp_path_factory):
    exe = tmp_path_factory.mktemp("asan") / "test_emulator_asan"
    _run(
        [
            "c++",
            "-std=c++17",
            "-O1",
            "-pthread",
            *SANITIZERS,
            "-DCPG_EMU",
            "-I",
            "csrc",
            "csrc/emu/runtime.cpp",
            SOURCE,
            "-o",
            exe,
        ],
        timeout=300,
    )
    return exe


def _sanitizer_env():
    # The emulator's fibers leak nothing, but leak checking needs ptrace (absent in some
    # sandboxes); halt at the first report, whichever sanitizer makes it.
    return {
        **os.environ,
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    }


@COMPILE_AND_RUN
def test_emulator(sanitized_build):
    out = _run([sanitized_build], timeout=300, env=_sanitizer_env())
    assert "PASSED: 0 check(s) failed" in out


@COMPILE_AND_RUN
def test_sanitizer_catches_out_of_bounds_global_read(sanitized_build):
    result = subprocess.run(
        [sanitized_build, "--out-of-bounds-global-read"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=_sanitizer_env(),
    )
    assert "NOT CAUGHT" not in result.stdout, result.stdout
    assert result.returncode != 0
    report = result.stderr
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in report, report
    assert "READ of size 4" in report, report
    assert "global_copy_kernel" in report, report  # the kernel's own line, in the stack


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
    _run(
        [nvcc, "-std=c++17", "-arch=sm_90", "-O1", "-I", "csrc", "-x", "cu", SOURCE, "-o", exe],
        timeout=300,
    )
    return exe


@COMPILE_AND_RUN
def test_same_tests_build_as_cuda(cuda_build):
    assert cuda_build.exists()


@COMPILE_AND_RUN
def test_same_tests_pass_on_gpu(cuda_build):
    if shutil.which("nvidia-smi") is None:
        pytest.skip("no GPU driver")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("no sm_90 GPU")
    _run([cuda_build], timeout=120)


@pytest.mark.skipif(
    not os.environ.get("CPG_SANITIZED_EMULATOR"),
    reason="only in the run of scripts/sanitized_emulator.sh",
)
def test_sanitized_run_checks_the_library_kernels():
    """In the sanitizer step, the extension's emulated launches run in the preloaded sanitized
    library (its launch counter moves), whose runtime refuses kernels compiled elsewhere: so
    the kernels that run are the instrumented ones."""
    import ctypes

    import torch

    from cpg_kernels import backends, functional, masks

    counter = ctypes.c_uint64.in_dll(ctypes.CDLL(None), "cpg_emu_sanitized_launches")
    before = counter.value
    w, x = torch.randn(20, 70), torch.randn(33, 70)
    with backends.emulated():
        y = functional.masked_linear(x, w, masks.pack(torch.rand(20, 70) < 0.5))
    assert counter.value > before
    assert y.shape == (33, 20)
