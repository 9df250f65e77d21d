"""Where the ops run: the CPU path, the CUDA kernels, or the CUDA kernels
under the CPU emulator.

CPU tensors normally take the CPU path. Inside ``emulated()`` they run the CUDA
kernels' own source on the CPU emulator instead, each CUDA thread a fiber,
threads within a barrier phase in an order drawn from ``seed``: two seeds
giving different bits reveal a race. This is how kernels are verified on
machines without a GPU; it is slow, so keep shapes small.
"""

from __future__ import annotations

import contextlib

import torch

from . import _C

BACKENDS = ("cpu", "emu", "cuda")


def cuda_built() -> bool:
    """Whether the CUDA kernels were compiled into this build."""
    return bool(_C.cuda_built())


def available() -> list[str]:
    """Backends usable on this machine."""
    names = ["cpu", "emu"]
    if cuda_built() and torch.cuda.is_available():
        names.append("cuda")
    return names


@contextlib.contextmanager
def emulated(seed: int = 0):
    """Run CPU tensors' ops through the CUDA kernels on the emulator.

    On exit the setting from before the block returns, its seed included, so
    blocks nest."""
    previous = _C.set_emulation(True, int(seed))  # (enabled, seed) before
    try:
        yield
    finally:
        _C.set_emulation(*previous)


@contextlib.contextmanager
def emulator_launches():
    """Record the kernels that the emulator launches inside the block.

    Yields a list that, when the block ends, holds one ``"<file>:<kernel>"``
    entry per launch: the CUDA source file of the launch site and the kernel
    expression there (``"conv_unfolded.cuh:unfold"``). Tests use it to check
    which kernels a dispatcher picked.
    """
    launches: list[str] = []
    _C.set_emulator_launch_log(True)
    try:
        yield launches
    finally:
        launches.extend(_C.take_emulator_launch_log())
        _C.set_emulator_launch_log(False)


@contextlib.contextmanager
def decode_tile_elements(n: int):
    """Temporarily bound the chunked path's decoded tiles to ``n`` entries."""
    previous = _C.set_decode_chunk_elements(int(n))
    try:
        yield
    finally:
        _C.set_decode_chunk_elements(previous)


@contextlib.contextmanager
def gemm_path(path: str):
    """Force the GEMM path of the kernel backends (CUDA, emulator) inside the block.

    ``"fused"``: the fused kernels of csrc/cuda for every shape; ``"library"``: the weight
    decoded tile by tile into a bounded scratch tile for cuBLAS/cuDNN; ``"auto"`` (the
    default): the rule of csrc/ops/gemm_path.h, by GEMM rows and dtype. Tests use it to reach
    one path on purpose; results match within rounding either way.
    """
    previous = _C.set_gemm_path(str(path))
    try:
        yield
    finally:
        _C.set_gemm_path(previous)


def library_min_rows(dtype: torch.dtype, allow_tf32: bool = False) -> int:
    """The GEMM rows (x rows for linear, images x output pixels for conv) from which a layer
    of ``dtype`` takes the library path on a kernel backend."""
    return int(_C.library_min_rows(_kernel_dtype_name(dtype), bool(allow_tf32)))


def weight_grad_library_min_rows(dtype: torch.dtype, allow_tf32: bool = False) -> int:
    """The batch rows from which a linear layer's weight gradient takes the two-pass path
    (aten's mm, then the gradient epilogue) instead of the fused one-pass kernel on a kernel
    backend (exact fp32: 0, it always does)."""
    return int(_C.weight_grad_library_min_rows(_kernel_dtype_name(dtype), bool(allow_tf32)))


def _kernel_dtype_name(dtype: torch.dtype) -> str:
    names = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
    if dtype not in names:
        raise ValueError(f"dtype: expected float32, float16 or bfloat16, got {dtype}")
    return names[dtype]
