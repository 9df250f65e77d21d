#!/usr/bin/env python3
"""Per-call (host) cost of the cpg ops on tiny shapes, where the work itself is negligible.

For a tiny linear and a tiny conv layer it times one call of

* ``fused``: the op a CPG layer runs (inference: ``masked_linear`` / ``masked_conv2d``
  from a task's packed bits; training: ``cpg_linear`` / ``cpg_conv2d`` forward plus
  ``torch.autograd.grad`` of the input, weight, picking mask and bias);
* ``dense_masking``: the paper's way from the same state (inference: ``W * mask`` with
  the bool mask kept in memory, then ``F.linear`` / ``F.conv2d``; training:
  ``cpg_kernels.reference``, the active set built from owner and mask on every call,
  through autograd);
* ``torch``: the plain layer (``F.linear`` / ``F.conv2d`` on the weight, and its
  gradients in training).

Inference runs both with grad mode on and under ``torch.no_grad()``, on tensors that do
not require grad. Every variant runs on one thread (``torch.set_num_threads(1)``).
Each time is the best of several back-to-back loops after warm-up (as ``timeit``
advises: on a shared machine the slower loops measure the neighbours); the JSON has
the median too. The variants take turns in every round, so a busy spell slows all of
them. On CUDA each loop ends with a synchronize, so a call's time is its host time
unless the device is slower. The run prints a table and, with ``--json``, writes the
records. ``--quick`` is the cheap CPU mode that CI runs (its numbers are noisy; the
default repeats are for reports).

Targets (issue 14): fused inference <= 1.5x ``torch``, grad on and off; fused training
<= 1.2x ``dense_masking``. They are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # an in-place build works without installing; an install still wins

from cpg_kernels import functional, masks, reference  # noqa: E402
from cpg_kernels.testing import random_mask, random_owner  # noqa: E402

TASK = 3
VARIANTS = ("fused", "dense_masking", "torch")
# (family, form): the variant the fused op is compared with and the largest ratio allowed.
TARGETS = {
    ("linear", "inference"): ("torch", 1.5),
    ("linear", "inference_no_grad"): ("torch", 1.5),
    ("linear", "training"): ("dense_masking", 1.2),
    ("conv", "inference"): ("torch", 1.5),
    ("conv", "inference_no_grad"): ("torch", 1.5),
    ("conv", "training"): ("dense_masking", 1.2),
}


def _layer(family: str, device: str):
    """A tiny layer's state: input, weight, bias, owner, picking mask, and derived masks."""
    torch.manual_seed(0)
    if family == "linear":
        x, w = torch.randn(4, 64), torch.randn(32, 64)
    else:
        x, w = torch.randn(2, 4, 8, 8), torch.randn(8, 4, 3, 3)
    b = torch.randn(w.shape[0])
    owner, mask = random_owner(w.shape), random_mask(w.shape)
    x, w, b, owner, mask = (t.to(device) for t in (x, w, b, owner, mask))
    bits = masks.active_bits(owner, TASK, mask=mask)
    active = masks.unpack(bits, w.shape)
    return x, w, b, owner, mask, bits, active


def _inference_calls(family, x, w, b, bits, active):
    if family == "linear":
        return {
            "fused": lambda: functional.masked_linear(x, w, bits, b),
            "dense_masking": lambda: reference.masked_linear(x, w, active, b),
            "torch": lambda: F.linear(x, w, b),
        }
    return {
        "fused": lambda: functional.masked_conv2d(x, w, bits, b, padding=1),
        "dense_masking": lambda: reference.masked_conv2d(x, w, active, b, padding=1),
        "torch": lambda: F.conv2d(x, w, b, padding=1),
    }


def _training_calls(family, x, w, b, owner, mask):
    x, w, b, mask = (t.detach().requires_grad_() for t in (x, w, b, mask))
    conv = {} if family == "linear" else {"padding": 1}
    fused_fn = functional.cpg_linear if family == "linear" else functional.cpg_conv2d
    dense_fn = reference.linear if family == "linear" else reference.conv2d
    plain_fn = F.linear if family == "linear" else F.conv2d
    gy = torch.ones_like(plain_fn(x, w, b, **conv))
    grad = torch.autograd.grad

    def fused():
        return grad(fused_fn(x, w, owner, TASK, mask=mask, bias=b, **conv), (x, w, mask, b), gy)

    def dense():
        return grad(dense_fn(x, w, owner, TASK, mask=mask, bias=b, **conv), (x, w, mask, b), gy)

    def plain():
        return grad(plain_fn(x, w, b, **conv), (x, w, b), gy)

    return {"fused": fused, "dense_masking": dense, "torch": plain}


def _time_calls(calls: dict, device: str, loops: int, repeats: int, warmup: int) -> dict:
    """Seconds per call of each variant: median and minimum over `repeats` loops.

    The variants take turns within each repeat, so a slow spell of a shared machine
    falls on all of them alike."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    sync()
    samples = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            for _ in range(loops):
                fn()
            sync()
            samples[name].append((time.perf_counter() - start) / loops)
    return {
        name: {"us_median": statistics.median(s) * 1e6, "us_min": min(s) * 1e6}
        for name, s in samples.items()
    }


def run(device: str, loops: int, repeats: int, warmup: int) -> list[dict]:
    records = []
    for family in ("linear", "conv"):
        x, w, b, owner, mask, bits, active = _layer(family, device)
        forms = {
            "inference": (torch.enable_grad, _inference_calls(family, x, w, b, bits, active)),
            "inference_no_grad": (torch.no_grad, _inference_calls(family, x, w, b, bits, active)),
            "training": (torch.enable_grad, _training_calls(family, x, w, b, owner, mask)),
        }
        for form, (mode, calls) in forms.items():
            with mode():
                times = _time_calls(calls, device, loops, repeats, warmup)
            baseline, limit = TARGETS[(family, form)]
            ratio = times["fused"]["us_min"] / times[baseline]["us_min"]
            records.append(
                {
                    "family": family,
                    "form": form,
                    "shape": list(w.shape),
                    "variants": times,
                    "baseline": baseline,
                    "ratio": ratio,
                    "target": limit,
                    "met": ratio <= limit,
                }
            )
    return records


def table(records: list[dict]) -> str:
    head = (
        f"{'case (best, us)':<24}"
        + "".join(f"{v:>14}" for v in VARIANTS)
        + f"{'fused/baseline':>20}{'target':>14}"
    )
    lines = [head, "-" * len(head)]
    for r in records:
        cells = "".join(f"{r['variants'][v]['us_min']:>14.1f}" for v in VARIANTS)
        verdict = f"{r['ratio']:.2f}x {r['baseline']}"
        mark = "met" if r["met"] else "MISSED"
        lines.append(
            f"{r['family'] + ' ' + r['form']:<24}{cells}{verdict:>20}"
            f"{'<= ' + str(r['target']) + ' ' + mark:>14}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    p.add_argument("--quick", action="store_true", help="short loops (CI): seconds, noisy")
    p.add_argument("--loops", type=int, help="calls per timed loop (default 200; quick 20)")
    p.add_argument("--repeats", type=int, help="timed loops per variant (default 25; quick 3)")
    p.add_argument("--json", type=Path, help="write the records here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    loops = args.loops or (20 if args.quick else 200)
    repeats = args.repeats or (3 if args.quick else 25)
    torch.set_num_threads(1)
    records = run(args.device, loops, repeats, warmup=5 if args.quick else 50)
    doc = {
        "benchmark": "bench_overhead",
        "device": torch.cuda.get_device_name()
        if args.device == "cuda"
        else platform.processor() or platform.machine(),
        "device_type": args.device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "loops": loops,
        "repeats": repeats,
        "quick": args.quick,
        "records": records,
    }
    print(
        f"per-call time, {doc['device_type']} ({doc['device']}), torch {doc['torch']}, "
        f"1 thread, best of {repeats} loops of {loops} calls"
    )
    print(table(records))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
