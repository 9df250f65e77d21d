#!/usr/bin/env python3
"""Which kernels each fused op launches on this GPU, and how long each takes.

    python3 scripts/kernel_profile.py

For a few shapes that sit on the dispatchers' thresholds (docs/architecture.md,
"Dispatch thresholds to tune on a GPU"), runs the fused op under torch.profiler
and prints every CUDA kernel it launched with its mean time per call: which
path a shape took (small-batch, unfolded, stride phases, split-K and its
reduction, tiled) and where the time goes. The benchmarks time whole ops; this
splits them. It checks no numbers.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parent.parent))  # an in-place build, uninstalled

from cpg_kernels import functional as fn  # noqa: E402
from cpg_kernels import masks  # noqa: E402

DEV = "cuda"
CALLS = 5


def linear(batch, n, k, dtype):
    w = torch.randn(n, k, device=DEV, dtype=dtype)
    bits = masks.pack(torch.rand(n, k, device=DEV) < 0.6)
    x = torch.randn(batch, k, device=DEV, dtype=dtype)
    dy = torch.randn(batch, n, device=DEV, dtype=dtype)
    return {
        "forward": lambda: fn.masked_linear(x, w, bits),
        "grad_input": lambda: torch.ops.cpg.masked_linear_grad_input(dy, w, bits),
    }


def conv(batch, cin, cout, hw, kernel, stride, padding, dtype, channels_last=True):
    w = torch.randn(cout, cin, kernel, kernel, device=DEV, dtype=dtype)
    bits = masks.pack(torch.rand(w.shape, device=DEV) < 0.6)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, cin, hw, hw, device=DEV, dtype=dtype).contiguous(memory_format=fmt)
    ho = (hw + 2 * padding - kernel) // stride + 1
    dy = torch.randn(batch, cout, ho, ho, device=DEV, dtype=dtype).contiguous(memory_format=fmt)
    geometry = ([stride] * 2, [padding] * 2, [1, 1], 1)
    return {
        "forward": lambda: fn.masked_conv2d(x, w, bits, stride=stride, padding=padding),
        "grad_input": lambda: torch.ops.cpg.masked_conv2d_grad_input(
            dy, w, bits, list(x.shape), *geometry
        ),
    }


def cases():
    bf16 = torch.bfloat16
    return {
        "linear 4096x4096 b1 bf16": linear(1, 4096, 4096, bf16),
        "linear 4096x4096 b32 bf16": linear(32, 4096, 4096, bf16),
        "linear 4096x4096 b128 bf16 (split-K)": linear(128, 4096, 4096, bf16),
        "linear 4096x4096 b128 fp32 (simt split-K)": linear(128, 4096, 4096, torch.float32),
        "vgg conv5_1 2x2 b1 bf16 (unfolded)": conv(1, 512, 512, 2, 3, 1, 1, bf16),
        "vgg conv5_1 2x2 b16 bf16 (unfolded, 64 pixels)": conv(16, 512, 512, 2, 3, 1, 1, bf16),
        "vgg conv5_1 2x2 b32 bf16 (tiled, split-K)": conv(32, 512, 512, 2, 3, 1, 1, bf16),
        "resnet50 layer4 3x3 7x7 b1 bf16 (unfolded)": conv(1, 512, 512, 7, 3, 1, 1, bf16),
        "resnet50 layer4 3x3 7x7 b8 bf16 (tiled)": conv(8, 512, 512, 7, 3, 1, 1, bf16),
        "resnet50 layer2.0.conv2 s2 b32 bf16 (phases)": conv(32, 128, 128, 56, 3, 2, 1, bf16),
        "resnet50 layer2.0.conv2 s2 b32 bf16 NCHW": conv(32, 128, 128, 56, 3, 2, 1, bf16, False),
        "vgg conv3_2 8x8 b128 tf32": conv(128, 256, 256, 8, 3, 1, 1, torch.float32),
    }


def short(name: str) -> str:
    """A kernel's name without namespaces and argument lists."""
    name = re.sub(r"\(.*\)$", "", name)
    name = re.sub(r"cpg::cuda::|void ", "", name)
    return name if len(name) <= 150 else name[:147] + "..."


def profile(run) -> list[tuple[str, int, float]]:
    """(kernel, launches per call, mean microseconds per launch)."""
    for _ in range(3):
        run()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(CALLS):
            run()
        torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages():
        if event.device_type != torch.autograd.DeviceType.CUDA or event.count == 0:
            continue
        total_us = getattr(event, "device_time_total", None)
        if total_us is None:  # torch before device_time_total
            total_us = event.cuda_time_total
        rows.append((short(event.key), event.count // CALLS, total_us / event.count))
    return sorted(rows, key=lambda r: -r[1] * r[2])


def main() -> int:
    if not torch.cuda.is_available():
        print("kernel_profile: no CUDA device", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    failures = 0
    for case, directions in cases().items():
        for direction, run in directions.items():
            try:
                rows = profile(run)
            except Exception as e:  # noqa: BLE001 (report every case)
                failures += 1
                print(f"FAIL  {case} {direction}: {type(e).__name__}: {e}", flush=True)
                continue
            total = sum(n * us for _, n, us in rows)
            print(f"{case} {direction}: {total:.1f} us a call", flush=True)
            for name, n, us in rows:
                print(f"    {n} x {us:9.1f} us  {name}", flush=True)
    print(f"{failures} cases failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
