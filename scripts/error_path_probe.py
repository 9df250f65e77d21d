"""Raises each op's argument errors on CPU and CUDA tensors, after each step of CUDA use.

The first H100 check (benchmarks/results/2026-11-27-h100) saw the test process die with
SIGSEGV at the first ValueError a `cpg` op raised after CUDA tests had run in the same
process; the same error path passes on the CPU with torch 2.11 and 2.14. scripts/gpu_check.sh
runs this under cuda-gdb so that a crash leaves a native backtrace in the log.
"""

from __future__ import annotations

import faulthandler
import sys
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parent.parent))  # an in-place build, uninstalled

from cpg_kernels import functional, masks  # noqa: E402

faulthandler.enable()


def expect_value_error(what, fn):
    try:
        fn()
    except ValueError as e:
        print(f"ok    {what}: {str(e).splitlines()[0]}", flush=True)
        return
    raise SystemExit(f"FAIL  {what}: no ValueError")


def raise_errors(stage):
    """Every probe's ValueError, on CPU tensors and (when present) CUDA tensors."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        w = torch.randn(5, 3, 3, 3, device=dev)
        owner = torch.ones(w.shape, dtype=torch.uint8, device=dev)
        bits = masks.active_bits(owner, 3)
        expect_value_error(
            f"[{stage}] {dev} conv channels",
            lambda: functional.masked_conv2d(torch.randn(1, 4, 7, 7, device=dev), w, bits),
        )
        expect_value_error(f"[{stage}] {dev} task 0", lambda: masks.active_bits(owner, 0))
        lw = torch.randn(6, 40, device=dev)
        lbits = masks.active_bits(torch.ones(lw.shape, dtype=torch.uint8, device=dev), 2)
        expect_value_error(
            f"[{stage}] {dev} linear K",
            lambda: functional.masked_linear(torch.randn(3, 41, device=dev), lw, lbits),
        )


# What the test suite had done before the crash, one step at a time: the first stage after
# which raising crashes names the trigger.
def init_cuda():
    torch.ones(1, device="cuda").sum().item()


def run_our_kernels():
    w = torch.randn(32, 16, 3, 3, device="cuda")
    bits = masks.active_bits(torch.ones(w.shape, dtype=torch.uint8, device="cuda"), 2)
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 16, 9, 9, device="cuda").contiguous(memory_format=fmt)
        functional.masked_conv2d(x, w, bits, padding=1).sum().item()
    lw = torch.randn(64, 96, device="cuda", dtype=torch.bfloat16)
    lbits = masks.active_bits(torch.ones(lw.shape, dtype=torch.uint8, device="cuda"), 2)
    functional.masked_linear(
        torch.randn(40, 96, device="cuda", dtype=torch.bfloat16), lw, lbits
    ).sum().item()


def run_cublas_and_cudnn():
    x = torch.randn(4, 8, 16, 16, device="cuda", requires_grad=True)
    conv = torch.nn.Conv2d(8, 8, 3, padding=1).cuda()
    (conv(x).sum() + (x.flatten(1) @ torch.randn(2048, 8, device="cuda")).sum()).backward()
    torch.cuda.synchronize()


def run_torch_compile():
    w = torch.randn(24, 40, device="cuda")
    bits = masks.active_bits(torch.ones(w.shape, dtype=torch.uint8, device="cuda"), 2)
    f = torch.compile(lambda x: functional.masked_linear(x, w, bits).relu())
    f(torch.randn(8, 40, device="cuda")).sum().item()


def main():
    raise_errors("start")
    if not torch.cuda.is_available():
        print("no CUDA device: only the CPU stage ran")
    else:
        for stage in (init_cuda, run_our_kernels, run_cublas_and_cudnn, run_torch_compile):
            stage()
            raise_errors(f"after {stage.__name__}")
    print("0 probes failed")


if __name__ == "__main__":
    main()
