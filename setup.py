"""Builds cpg_kernels._C against the torch that is already installed.

CPU ops and the CUDA-kernel emulator are always built; the CUDA kernels too
when torch is a CUDA build and a CUDA toolkit is found (FORCE_CUDA=1 makes a
missing toolkit an error; USE_CUDA=0 skips them even where a toolkit is found).
TORCH_CUDA_ARCH_LIST picks GPU targets (default 8.0 and 9.0).
"""

import glob
import os
import shutil
import subprocess
import sys

from setuptools import setup

NO_ISOLATION_HINT = (
    "cpg-kernels compiles against your installed PyTorch: "
    "run `pip install --no-build-isolation .` (with torch already installed)."
)


def import_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.exit(NO_ISOLATION_HINT)
    return torch


def is_toolkit(root):
    """A real CUDA toolkit: nvcc is a binary (not a wrapper) next to the CUDA headers."""
    if not root:
        return False
    nvcc = os.path.join(root, "bin", "nvcc")
    header = os.path.join(root, "include", "cuda_runtime.h")
    if not (os.path.isfile(nvcc) and os.path.isfile(header)):
        return False
    with open(nvcc, "rb") as f:
        return f.read(4) == b"\x7fELF"


def wrapper_target(nvcc):
    """The toolkit a wrapper script `exec`s into, e.g. `exec /usr/local/cuda-13.0/bin/nvcc`."""
    try:
        with open(nvcc, errors="ignore") as f:
            for word in f.read(4096).split():
                if word.endswith("/bin/nvcc") and word != nvcc:
                    return os.path.dirname(os.path.dirname(word.strip("\"'")))
    except OSError:
        pass
    return None


def find_cuda_toolkit():
    """CUDA_HOME if set; else the toolkit behind `nvcc` on PATH, following wrapper scripts."""
    explicit = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if explicit:
        if not is_toolkit(explicit):
            sys.exit(
                f"cpg-kernels: CUDA_HOME={explicit} is not a CUDA toolkit "
                "(no bin/nvcc binary next to include/cuda_runtime.h)"
            )
        return explicit
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = os.path.realpath(nvcc)
        candidates += [os.path.dirname(os.path.dirname(real)), wrapper_target(real)]
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for root in candidates:
        if is_toolkit(root):
            return os.path.realpath(root)
    return None


def nvcc_version(root):
    out = subprocess.run(
        [os.path.join(root, "bin", "nvcc"), "--version"], capture_output=True, text=True
    ).stdout
    return out.strip().splitlines()[-1] if out else "unknown"


def configure_cuda(torch):
    """Decide whether to build the CUDA kernels; set CUDA_HOME before cpp_extension reads it."""
    force = os.environ.get("FORCE_CUDA", "0") == "1"
    if os.environ.get("USE_CUDA") == "0":
        if force:
            sys.exit("cpg-kernels: FORCE_CUDA=1 and USE_CUDA=0 contradict each other")
        print("cpg-kernels: USE_CUDA=0; building the CPU ops and the emulator only")
        return False
    if torch.version.cuda is None:
        if force:
            sys.exit("cpg-kernels: FORCE_CUDA=1 but the installed torch is a CPU-only build")
        print("cpg-kernels: torch is a CPU-only build; building the CPU ops and the emulator")
        return False
    root = find_cuda_toolkit()
    if root is None:
        if force:
            sys.exit(
                "cpg-kernels: FORCE_CUDA=1 but no CUDA toolkit was found "
                "(set CUDA_HOME to its root)"
            )
        print("cpg-kernels: no CUDA toolkit found; building the CPU ops and the emulator")
        return False
    os.environ["CUDA_HOME"] = root
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    print(
        f"cpg-kernels: CUDA toolkit {root} ({nvcc_version(root)}), torch CUDA "
        f"{torch.version.cuda}, targets {os.environ['TORCH_CUDA_ARCH_LIST']}"
    )
    return True


def extension(torch, with_cuda):
    from torch.utils import cpp_extension  # after CUDA_HOME is settled

    sources = sorted(
        glob.glob("csrc/ops/*.cpp") + glob.glob("csrc/cpu/*.cpp") + glob.glob("csrc/emu/*.cpp")
    )
    cxx = ["-O2", "-Wno-unknown-pragmas"]  # kernels carry #pragma unroll
    if not with_cuda:
        sources.remove("csrc/ops/cuda_stream.cpp")
        return cpp_extension.CppExtension(
            "cpg_kernels._C",
            sources,
            include_dirs=[os.path.abspath("csrc")],
            extra_compile_args={"cxx": cxx},
        )
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    return cpp_extension.CUDAExtension(
        "cpg_kernels._C",
        sources,
        include_dirs=[os.path.abspath("csrc")],
        define_macros=[("CPG_WITH_CUDA", "1")],
        extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]},
    )


def main():
    torch = import_torch()
    # torch.utils.cpp_extension reads CUDA_HOME once, at import: configure first.
    with_cuda = configure_cuda(torch)
    from torch.utils.cpp_extension import BuildExtension

    setup(
        ext_modules=[extension(torch, with_cuda)],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )


main()
