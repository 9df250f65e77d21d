"""Raises each op's argument errors after CUDA is initialised, on CPU and CUDA tensors.

The first H100 check (benchmarks/results/2026-11-27-h100) saw the test process die with
SIGSEGV at the first ValueError a `cpg` op raised after CUDA tests had run in the same
process; the same error path passes on the CPU with torch 2.11 and 2.14. scripts/gpu_check.sh
runs this under cuda-gdb so that a crash leaves a native backtrace in the log.
"""
from __future__ import annotations

import faulthandler

import torch

from cpg_kernels import functional, masks

faulthandler.enable()


def expect_value_error(what, fn):
    try:
        fn()
    except ValueError as e:
        print(f"ok    {what}: {str(e).splitlines()[0]}", flush=True)
        return
    raise SystemExit(f"FAIL  {what}: no ValueError")


def main():
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if torch.cuda.is_available():
        torch.ones(1, device="cuda").sum().item()  # initialise CUDA first, as the test suite does
    for dev in devices:
        w = torch.randn(5, 3, 3, 3, device=dev)
        owner = torch.ones(w.shape, dtype=torch.uint8, device=dev)
        bits = masks.active_bits(owner, 3)
        expect_value_error(f"{dev} conv channels",
                           lambda: functional.masked_conv2d(torch.randn(1, 4, 7, 7, device=dev),
                                                            w, bits))
        expect_value_error(f"{dev} task 0", lambda: masks.active_bits(owner, 0))
        lw = torch.randn(6, 40, device=dev)
        lbits = masks.active_bits(torch.ones(lw.shape, dtype=torch.uint8, device=dev), 2)
        expect_value_error(f"{dev} linear K",
                           lambda: functional.masked_linear(torch.randn(3, 41, device=dev), lw,
                                                            lbits))
    print("0 probes failed")


if __name__ == "__main__":
    main()
