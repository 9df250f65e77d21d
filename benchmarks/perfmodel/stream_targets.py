#!/usr/bin/env python3
"""Issue 14's targets for the weight streams (gemm_stream.cuh, gemm_stream_grad.cuh),
predicted before and after.

    python3 benchmarks/perfmodel/stream_targets.py [--gpu h100-sxm] [--gpu h200-sxm]

Both sides are this checkout's model, constants and resource table; "before" plans every
forward that the stream takes on the small-batch kernel instead, as the dispatcher did before
it (``calibrate.old_small_batch``). Cases: every bf16 linear and conv inference case up to
batch 16 whose forward the stream takes, and the multi-task T = 8, batch 1 cases.

Prints a markdown table of predicted figures per GPU: the fused call's time (and its device
time) on each side, and the after side's ratios against the pre-masked weight (>= 0.9 wanted;
in brackets against the fused call's device time alone, as if the host cost nothing) and dense
masking (>= 3, or >= 7 against eight passes at T = 8). "target met" reads the call's ratios.

Then the input gradient of the linear layers at batch 1, 8 and 16 in bf16 (one part of a
training step, whose call time is the host's): the device time of its launches before (on
gemm_small_batch_grad.cuh, planned by :func:`old_grad_input`) and after (the streamed one), and
the after side against cuBLAS's dy @ W on a pre-masked weight and against dense masking (the
mask unpacked and multiplied into a weight copy, then that GEMM).

Last, the input gradient of the late conv layers (the unfolded path, at most 64 dy pixels) in
bf16 up to batch 16, both layouts: before, small_batch_grad's partial sums folded one thread
a dx element (:func:`old_conv_grad_input`); after, the weight stream's (NCHW dy gathered into
rows first) folded by lane groups; against cuDNN's dgrad on a pre-masked weight and dense
masking (the mask multiplied into a weight copy, then that dgrad).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BENCH))

import cases  # noqa: E402
import model  # noqa: E402

from perfmodel import calibrate, kernels, plan, predict  # noqa: E402
from perfmodel.autocast_inference import device_seconds  # noqa: E402
from perfmodel.hardware import GPUS, H100  # noqa: E402

STREAM = "weight_stream::"
STREAM_GRAD = "weight_stream_grad::"
GRAD_BATCHES = (1, 8, 16)


def chosen(sms: int) -> list:
    out = []
    for case in cases.full_grid(("bf16",)):
        if case.mode != "inference" or case.batch > 16:
            continue
        if case.family == "multitask":
            if case.tasks == 8 and case.batch == 1:
                out.append(case)
        elif any(launch.kernel.startswith(STREAM) for launch in plan.forward_launches(case, sms)):
            out.append(case)
    return out


def records(gpu, picked, old: bool) -> dict:
    """case id -> predicted record on gpu (old: the small-batch dispatch)."""
    measured = model._measured_records()
    ref = predict.context(H100, measured=measured)
    ctx = ref if gpu is H100 else predict.context(gpu)
    if old:
        for c in {id(ref): ref, id(ctx): ctx}.values():
            c.rewrite_plan = lambda case, what, launches, sms=c.gpu.sms: calibrate.old_small_batch(
                case, what, launches, sms=sms
            )
    return {c.id: predict.record(ctx, c, None if gpu is H100 else ref) for c in picked}


def _us(r: dict) -> str:
    return f"{r['variants']['fused']['ms'] * 1e3:.1f} ({r['predicted']['device_ms'] * 1e3:.1f})"


def table(before: dict, after: dict) -> list[str]:
    lines = [
        "| case | before us (device) | after us (device) | after x pre-masked "
        "(device) | after x dense | target met | after bound |",
        "|---|---|---|---|---|---|---|",
    ]
    for rid, a in after.items():
        b, s = before[rid], a["speedup"]
        multi = a["family"] == "multitask"
        dense = s.get("dense_masking") or 0.0
        if multi:
            ratio, met = "-", dense >= 7
        else:
            device = a["variants"]["premasked"]["ms"] / a["predicted"]["device_ms"]
            ratio = f"{s['premasked']:.2f} ({device:.2f})"
            met = s["premasked"] >= 0.9 and dense >= 3
        lines.append(
            f"| {rid} | {_us(b)} | {_us(a)} | {ratio} | {dense:.2f} | "
            f"{'yes' if met else 'no'} | {a['predicted']['bound']} |"
        )
    return lines


def old_grad_input(elem: str, m: int, n: int, k: int, sms: int) -> list[plan.Launch]:
    """The launches of ``gemm_small_batch_grad.cuh`` for dx[m, k] = dy[m, n] W'[n, k] (m <= 16),
    as its C++ plan() computes them: the input gradient's dispatch before the streamed kernel
    (test_stream_grad_kernels.py checks the two agree where the dispatcher still picks it)."""
    e = {"f32": 4, "f16": 2, "bf16": 2}[elem]
    warps, rows_per_step, max_rows, threads = 8, 4, 16, 256
    warp_cols = 32 * (16 // e)
    wanted = 4 * sms  # kBlocksPerSm
    groups, group_rows = math.ceil(m / max_rows), min(m, max_rows)

    def col_blocks(slices):
        return math.ceil(math.ceil(k / warp_cols) / (warps // slices))

    slices = 1
    while slices < warps and col_blocks(slices) * groups < wanted:
        slices *= 2
    step_rows = slices * rows_per_step
    min_split_rows = group_rows * (16 * 2 * 4 // e)  # kPartialsShare
    max_splits = n // max(min_split_rows, step_rows)
    splits = max(1, min(math.ceil(wanted / (col_blocks(slices) * groups)), max_splits))
    rows_per_split = math.ceil(math.ceil(n / splits) / step_rows) * step_rows
    splits = math.ceil(n / rows_per_split)
    dy_rows = next(r for r in (1, 2, 4, 8, 16) if m <= r or r == 16)
    params = {
        "M": m,
        "N": n,
        "K": k,
        "dy_rows": dy_rows,
        "slices": slices,
        "splits": splits,
        "rows_per_split": rows_per_split,
        "rows_per_step": rows_per_step,
        "warp_cols": warp_cols,
    }
    out = [
        plan.Launch(
            f"small_batch_grad::masked_linear_grad_input_small_batch_kernel<{elem},{dy_rows}>",
            (col_blocks(slices), splits, groups),
            threads,
            0,
            4 * splits * m * k if splits > 1 else 0,
            params,
        )
    ]
    if splits > 1:
        count = m * k
        blocks = max(1, min(math.ceil(count / threads), 8 * sms))
        out.append(
            plan.Launch(
                f"small_batch_grad::sum_splits_kernel<{elem}>",
                (blocks, 1, 1),
                threads,
                0,
                0,
                {"elements": count, "splits": splits},
            )
        )
    return out


def dense_masking_s(n: int, k: int, premasked_s: float, gpu, c, e: int = 2) -> float:
    """Dense masking's time for an [n, k] weight of e-byte elements: the mask unpacked
    (1 + 1/8 bytes a weight), multiplied into a weight copy (2e + 1), then the library's call
    on it (``premasked_s``)."""
    unpack = kernels.elementwise(n * k * (1 + 1 / 8), gpu, c).seconds
    multiply = kernels.elementwise(n * k * (2 * e + 1), gpu, c).seconds
    return unpack + multiply + premasked_s


def old_conv_grad_input(case, sms: int) -> list[plan.Launch]:
    """The unfolded path's input gradient before the stream took it: small_batch_grad on dy's
    pixels (its partial sums always written, for the fold), then one thread a dx element
    adding its taps x splits partial sums in turn."""
    lay, threads = case.layer, 256
    m = case.batch * lay.out_hw * lay.out_hw
    gemm = old_grad_input(case.dtype, m, lay.out_ch, lay.k, sms)[0]
    splits = gemm.params["splits"]
    gemm = plan.Launch(gemm.kernel, gemm.grid, gemm.threads, 0, 4 * splits * m * lay.k, gemm.params)
    elements = case.batch * lay.in_ch * lay.hw * lay.hw
    fold = plan.Launch(
        f"conv::unfolded::fold_kernel<{case.dtype}>",
        (max(1, min(math.ceil(elements / threads), 8 * sms)), 1, 1),
        threads,
        0,
        0,
        {
            "elements": elements,
            "taps": lay.kernel**2,
            "splits": splits,
            "lanes": 1,
            "partial_sums": splits * m * lay.k,
        },
    )
    return [gemm, fold]


def conv_grad_cases(sms: int) -> list:
    """The bf16 conv training cases up to batch 16 whose input gradient takes the unfolded
    path (a fold), now on the weight stream."""
    out = []
    for case in cases.full_grid(("bf16",)):
        if case.family != "conv" or case.mode != "training" or case.batch > 16:
            continue
        kernels_ = [launch.kernel for launch in plan.grad_input_launches(case, sms)]
        if any(k.startswith(STREAM_GRAD) for k in kernels_) and any(
            k.startswith("conv::unfolded::fold_kernel") for k in kernels_
        ):
            out.append(case)
    return out


def conv_grad_table(gpu) -> list[str]:
    ctx = predict.context(gpu)
    c, e = ctx.constants, 2
    lines = [
        "| case (dx of a late conv) | before us | after us | after / before | after x pre-masked "
        "| after x dense | after launches |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in conv_grad_cases(gpu.sms):
        lay = case.layer
        m, n, k = case.batch * lay.out_hw * lay.out_hw, lay.out_ch, lay.k
        after = plan.grad_input_launches(case, gpu.sms)
        t_before = device_seconds(ctx, old_conv_grad_input(case, gpu.sms))
        t_after = device_seconds(ctx, after)
        premasked = kernels.vendor_gemm(m, k, n, e, "bf16", gpu, c, conv=True).seconds
        dense = dense_masking_s(n, k, premasked, gpu, c)
        names = " + ".join(launch.kernel.split("<")[0].split("::")[-1] for launch in after)
        lines.append(
            f"| {case.id.removeprefix('conv/').removesuffix('/bf16/training')} | "
            f"{t_before * 1e6:.1f} | {t_after * 1e6:.1f} | {t_after / t_before:.2f} | "
            f"{premasked / t_after:.2f} | {dense / t_after:.2f} | {names} |"
        )
    return lines


def grad_cases(sms: int) -> list:
    out = []
    for lay in cases.LINEAR_LAYERS:
        for batch in GRAD_BATCHES:
            case = cases.Case("linear", lay, batch, "bf16", "training")
            if any(
                launch.kernel.startswith(STREAM_GRAD)
                for launch in plan.grad_input_launches(case, sms)
            ):
                out.append(case)
    return out


def grad_table(gpu) -> list[str]:
    ctx = predict.context(gpu)
    c, e = ctx.constants, 2
    lines = [
        "| case (dx = dy W') | before us | after us | after x pre-masked | after x dense "
        "| target met | after bound | after launches |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case in grad_cases(gpu.sms):
        lay = case.layer
        m, n, k = case.batch, lay.out_ch, lay.in_ch
        after = plan.grad_input_launches(case, gpu.sms)
        before = old_grad_input("bf16", m, n, k, gpu.sms)
        t_before, t_after = device_seconds(ctx, before), device_seconds(ctx, after)
        premasked = kernels.vendor_gemm(m, k, n, e, "bf16", gpu, c).seconds
        dense = dense_masking_s(n, k, premasked, gpu, c)
        main = kernels.launch_cost(after[0], ctx.res(after[0].kernel), gpu, c)
        met = premasked / t_after >= 0.9 and dense / t_after >= 3
        lines.append(
            f"| {lay.net}.{lay.name}/b{m} | {t_before * 1e6:.1f} | {t_after * 1e6:.1f} | "
            f"{premasked / t_after:.2f} | {dense / t_after:.2f} | "
            f"{'yes' if met else 'no'} | {main.bound} | {len(after)} |"
        )
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="append", choices=sorted(GPUS))
    args = p.parse_args(argv)
    for slug in args.gpu or ["h100-sxm", "h200-sxm"]:
        gpu = GPUS[slug]
        picked = chosen(gpu.sms)
        print(f"\n{gpu.name}, predicted (before: gemm_small_batch.cuh; after: gemm_stream.cuh)\n")
        print("\n".join(table(records(gpu, picked, True), records(gpu, picked, False))))
        print(
            f"\n{gpu.name}, the input gradient's device time, predicted (before: "
            "gemm_small_batch_grad.cuh; after: gemm_stream_grad.cuh)\n"
        )
        print("\n".join(grad_table(gpu)))
        print(
            f"\n{gpu.name}, the late conv layers' input gradient, device time, predicted "
            "(before: gemm_small_batch_grad.cuh, one thread a dx element folding; after: "
            "gemm_stream_grad.cuh, lane groups folding). cuDNN's dgrad (pre-masked, and in "
            f"dense masking) carries the fixed {predict.context(gpu).constants.vendor_conv_us:.1f}"
            " us a call "
            "that calibration fits to measured calls, host time included: its ratios are not "
            "device time against device time.\n"
        )
        print("\n".join(conv_grad_table(gpu)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
