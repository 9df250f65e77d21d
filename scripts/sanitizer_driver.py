#!/usr/bin/env python3
"""Call every cpg op once on small CUDA shapes, for compute-sanitizer.

    compute-sanitizer --tool memcheck python3 scripts/sanitizer_driver.py [--only linear,conv]

Forward and backward of the linear, conv and multi-task ops in fp32 (TF32 off
and on), bf16 and fp16, plus the element-wise helpers, on shapes with odd
sizes, K not a multiple of 32, groups, stride, padding and dilation, and one
shape large enough to span several GEMM tiles, and shapes whose single tile
splits its reduction across blocks (split-K). `--only` picks groups of calls
(helpers, linear, conv), so that a tool that fails on one group does not hide
the others. Each call is synchronized so an
error is attributed to it. It checks no numbers (the test suite does); it
prints one line per call and exits 1 if any call raised.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parent.parent))  # an in-place build, uninstalled

from cpg_kernels import functional as fn  # noqa: E402
from cpg_kernels import masks  # noqa: E402

DEV = "cuda"
TASK = 3
FAILURES: list[str] = []


def call(name: str, f) -> None:
    try:
        f()
        torch.cuda.synchronize()
        print(f"ok    {name}", flush=True)
    except Exception:  # noqa: BLE001 (report every failing op, not just the first)
        FAILURES.append(name)
        print(f"FAIL  {name}\n{traceback.format_exc()}", flush=True)


def state(shape):
    """Random owner (0..TASK+1: free, older, current and a later task) and picking mask."""
    owner = torch.randint(0, TASK + 2, shape, device=DEV, dtype=torch.uint8)
    mask = torch.rand(shape, device=DEV) * 1e-2
    return owner, mask


def leaf(*shape, dtype):
    return torch.randn(shape, device=DEV).to(dtype).requires_grad_(True)


def backward(y):
    y.backward(torch.randn_like(y))


def helpers(shape) -> None:
    owner, mask = state(shape)
    active = torch.rand(shape, device=DEV) < 0.5
    tag = "x".join(map(str, shape))
    call(f"pack_bits {tag}", lambda: masks.pack(active))
    bits = masks.pack(active)
    call(f"unpack_bits {tag}", lambda: masks.unpack(bits, shape))
    call(f"active_bits(mask) {tag}", lambda: masks.active_bits(owner, TASK, mask=mask))
    call(f"active_bits(pick_bits) {tag}", lambda: masks.active_bits(owner, TASK, pick_bits=bits))
    call(f"active_bits(all) {tag}", lambda: masks.active_bits(owner, TASK))
    call(f"owner_histogram {tag}", lambda: masks.owner_counts(owner))
    call(f"count_bits {tag}", lambda: masks.count_bits(bits))
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        w = torch.randn(shape, device=DEV, dtype=dtype)
        call(f"apply_bits {tag} {dtype}", lambda w=w: masks.apply_bits(w, bits))


def linear(m: int, n: int, k: int, dtype, label: str) -> None:
    tag = f"M{m} N{n} K{k} {label}"
    w, b, x = leaf(n, k, dtype=dtype), leaf(n, dtype=dtype), leaf(m, k, dtype=dtype)
    owner, mask = state((n, k))
    bits = masks.active_bits(owner, TASK, mask=mask)
    call(f"masked_linear fwd+bwd {tag}", lambda: backward(fn.masked_linear(x, w, bits, b)))
    m_leaf = mask.clone().requires_grad_(True)
    call(f"cpg_linear fwd+bwd {tag}", lambda: backward(fn.cpg_linear(x, w, owner, TASK, m_leaf, b)))
    call(
        f"cpg_linear pick-all fwd+bwd {tag}",
        lambda: backward(fn.cpg_linear(x, w, owner, TASK, None, None)),
    )
    tasks = 3
    xt = leaf(tasks, m, k, dtype=dtype)
    bits_t = torch.stack([masks.active_bits(owner, t + 1) for t in range(tasks)])
    call(
        f"masked_linear_multitask fwd+bwd T{tasks} {tag}",
        lambda: backward(fn.masked_linear_multitask(xt, w, bits_t, b)),
    )


def conv(
    batch,
    cin,
    cout,
    hw,
    kernel,
    stride,
    padding,
    dilation,
    groups,
    dtype,
    label,
    channels_last=False,
) -> None:
    tag = (
        f"B{batch} C{cin}->{cout} {hw}x{hw} k{kernel} s{stride} p{padding} d{dilation} "
        f"g{groups} {'nhwc' if channels_last else 'nchw'} {label}"
    )
    shape = (cout, cin // groups, kernel, kernel)
    w, b = leaf(*shape, dtype=dtype), leaf(cout, dtype=dtype)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = leaf(batch, cin, hw, hw, dtype=dtype).detach().contiguous(memory_format=fmt)
    x.requires_grad_(True)
    owner, mask = state(shape)
    bits = masks.active_bits(owner, TASK, mask=mask)
    geometry = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    call(
        f"masked_conv2d fwd+bwd {tag}",
        lambda: backward(fn.masked_conv2d(x, w, bits, b, **geometry)),
    )
    m_leaf = mask.clone().requires_grad_(True)
    call(
        f"cpg_conv2d fwd+bwd {tag}",
        lambda: backward(fn.cpg_conv2d(x, w, owner, TASK, m_leaf, b, **geometry)),
    )


GROUPS = ("helpers", "linear", "conv")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default=",".join(GROUPS), help="comma-separated groups of calls (default: all)"
    )
    groups = set(parser.parse_args().only.split(","))
    if not groups <= set(GROUPS):
        parser.error(f"--only: choose from {', '.join(GROUPS)}")
    if not torch.cuda.is_available():
        print("sanitizer_driver: no CUDA device", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    if "helpers" in groups:
        for shape in ((37, 70), (5, 3, 3, 3), (64, 1024)):
            helpers(shape)
    precisions = [
        (torch.float32, False, "fp32"),
        (torch.float32, True, "tf32"),
        (torch.bfloat16, False, "bf16"),
        (torch.float16, False, "fp16"),
    ]
    for dtype, tf32, label in precisions:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        if "linear" in groups:
            # (40, 64, 2048): one output tile, 32 or more reduction steps: split-K.
            for m, n, k in ((1, 37, 70), (5, 16, 32), (130, 136, 300), (40, 64, 2048)):
                linear(m, n, k, dtype, label)
        if "conv" in groups:
            conv_cases(dtype, label)
    print(f"{len(FAILURES)} calls failed" + (": " + "; ".join(FAILURES) if FAILURES else ""))
    return 1 if FAILURES else 0


def conv_cases(dtype, label) -> None:
    conv(2, 6, 10, 9, 3, 1, 1, 1, 1, dtype, label)
    conv(1, 6, 10, 9, 3, 2, 0, 2, 2, dtype, label)
    conv(3, 32, 64, 8, 1, 1, 0, 1, 1, dtype, label)
    conv(2, 16, 32, 9, 3, 1, 1, 1, 1, dtype, label, channels_last=True)
    conv(2, 16, 32, 9, 3, 2, 1, 1, 1, dtype, label)  # input gradient by stride phase
    conv(2, 128, 16, 7, 3, 1, 1, 1, 1, dtype, label, channels_last=True)  # one tile: split-K
    # Late layers (the unfolded path): 16 and 49 output pixels.
    conv(1, 64, 128, 4, 3, 1, 1, 1, 1, dtype, label)
    conv(1, 32, 48, 7, 3, 1, 1, 1, 1, dtype, label, channels_last=True)


if __name__ == "__main__":
    sys.exit(main())
