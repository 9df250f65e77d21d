"""Hypothetical main loops for the tiled tensor-core kernels (issue 15's wgmma decision).

``model.py predict --what-if SCENARIO`` costs every planned ``gemm_mma.cuh`` launch as if its
main loop were built differently, with everything else of the model unchanged: the plan (tiles,
stages, split-K), occupancy, L2 and DRAM bytes, shared-memory wavefronts, and the view's own
instructions (the W' gather, the mask). No such kernel exists; these are predictions of one.

Scenarios:

* ``wgmma``: Hopper's warpgroup MMA with the masked weight as the register operand and the
  activation tile read from shared memory by the tensor core (CUTLASS's sm90 mixed-input
  design, as Machete uses). The tensor work runs at ``WGMMA_TFLOPS`` instead of mma.sync's
  ``Gpu.hmma_clk``; each warp's stage drops its HMMA instructions and the ldmatrix of the
  activation operand, and gains one wgmma per k-step plus a fence, a commit and a wait. Shared
  memory (:func:`wgmma_smem_wavefronts`): each warpgroup's wgmma reads the activation tile
  once (mma.sync's ldmatrix reads it once per warp column), the weight goes to registers by
  one ldmatrix pass, and the linear tile masks it there instead of in place. The ring keeps
  its per-stage barrier and wait (``tile_sync_clk``).
* ``wgmma-ws``: the same, warp-specialized (producer warps fill the ring, consumer warpgroups
  mask and multiply, mbarriers instead of a CTA barrier): the per-stage sync is taken as fully
  overlapped (``tile_sync_clk`` = 0). An upper bound on what the pipeline change buys.
* ``mma-ws``: mma.sync kept, only the pipeline warp-specialized as in ``wgmma-ws``: what the
  emulator-verifiable half of the change buys on its own.
* ``decode``: every inference forward planned on a tiled kernel (mma or simt) instead decodes
  W' into a workspace (one elementwise pass: W and its bits read, W' written) and runs
  cuBLAS/cuDNN on it at the pre-masked baseline's time (issue 15's decode branch, as one
  decode and one library call: the chunking into an L2-sized workspace is not modeled).
* ``dispatch``, ``dispatch+mma-ws``, ``dispatch+wgmma-ws``: a cost-based dispatcher that takes,
  per case, the faster of ``decode`` and the fused kernels (today's, or those of the scenario).

``WGMMA_TFLOPS`` (bf16; TF32 at half, as the data sheet): 75% of the H100 SXM's 989.4 TFLOP/s
dense bf16 peak, the share FlashAttention-3's wgmma kernels reach (arXiv 2407.08608), about
96% of the 770 TFLOP/s cuBLAS reached at 8192^3 in the 2026-11-27 run. mma.sync in the model
(``Gpu.hmma_clk`` = 1.9 clocks per m16n8k16 per SM) tops out at 499 TFLOP/s, 50% of that peak.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from unittest import mock

from . import kernels
from .hardware import Gpu
from .kernels import Constants, Cost
from .plan import Launch

KERNEL_SCENARIOS = {
    "wgmma": "wgmma, masked W as the register operand; the ring's per-stage sync kept",
    "wgmma-ws": "wgmma, warp-specialized: the per-stage sync overlapped",
    "mma-ws": "mma.sync, warp-specialized: the per-stage sync overlapped",
}
SCENARIOS = {
    **KERNEL_SCENARIOS,
    "decode": "W' decoded into a workspace, then cuBLAS/cuDNN, wherever a tiled (mma or simt) "
    "forward is planned",
    "dispatch": "per case the faster of today's fused kernels and decode + cuBLAS/cuDNN",
    "dispatch+mma-ws": "per case the faster of the mma-ws kernels and decode + cuBLAS/cuDNN",
    "dispatch+wgmma-ws": "per case the faster of the wgmma-ws kernels and decode + cuBLAS/cuDNN",
}


def kernel_scenario(scenario: str | None) -> str | None:
    """The main-loop scenario inside ``scenario`` (None: today's kernels)."""
    if scenario is None:
        return None
    name = scenario.removeprefix("dispatch").removeprefix("+")
    return name if name in KERNEL_SCENARIOS else None


def decode_mode(scenario: str | None) -> str:
    """never (fused kernels only), always (decode wherever it applies), or cheaper."""
    if scenario == "decode":
        return "always"
    return "cheaper" if scenario and scenario.startswith("dispatch") else "never"


DENSE_BF16_TFLOPS = 989.4  # H100 SXM data sheet, dense bf16 with fp32 accumulation
WGMMA_SHARE = 0.75  # of that peak: FlashAttention-3 on H100 (arXiv 2407.08608)
WGMMA_TFLOPS = WGMMA_SHARE * DENSE_BF16_TFLOPS
M16N8K16_FLOPS = 2 * 16 * 8 * 16  # the unit the model counts tensor work in (Gpu.hmma_clk)

MMA_FAMILY = "mma::masked_gemm_mma_kernel"


TILED_FAMILIES = (MMA_FAMILY, "simt::masked_gemm_simt_kernel")


def applies(launch: Launch) -> bool:
    """Whether a main-loop scenario replaces this launch (the tiled tensor-core kernels)."""
    return launch.family == MMA_FAMILY


def decodes(launch: Launch) -> bool:
    """Whether the decode branch replaces a forward with this launch (the tiled kernels, tensor
    core or CUDA core; the small-batch and streaming kernels stay)."""
    return launch.family in TILED_FAMILIES


def wgmma_clk(gpu: Gpu) -> float:
    """Clocks per SM per m16n8k16's worth of bf16 work at WGMMA_TFLOPS (TF32: the same clocks
    per m16n8k8, as for mma.sync)."""
    per_sm_clk = WGMMA_TFLOPS * 1e12 / (gpu.sms * gpu.clock_ghz * 1e9)
    return M16N8K16_FLOPS / per_sm_clk


def mma_sync_tflops(gpu: Gpu) -> float:
    """The model's mma.sync ceiling (bf16), for comparison."""
    return M16N8K16_FLOPS / gpu.hmma_clk * gpu.sms * gpu.clock_ghz * 1e9 / 1e12


def _wgmma_table(launch: Launch, res: dict | None) -> dict | None:
    """A copy of the kernel's resources whose hot loop has the wgmma loop's instructions."""
    loop = kernels.hot_loop(res, "HMMA")
    if loop is None:
        return res
    p = launch.params
    tile_m, tile_n, k_steps = p.get("tile_m", 128), p.get("tile_n", 128), p.get("k_steps", 4)
    warps_n = 4 if tile_n == 128 else 2  # mma::Layout / the tap-window tiles' warp grid
    warps_m = 8 // warps_n
    per_warp_hmma = tile_m // 16 * (tile_n // 8) * k_steps / 8
    removed = per_warp_hmma + k_steps * (tile_m // warps_m) // 16  # HMMA + activation LDSM.x4
    added = k_steps + 3  # one wgmma per k-step; fence, commit, wait per stage
    out = copy.deepcopy(res)
    hot = next(lp for lp in out["loops"] if lp == loop)
    mix = hot["path"] if hot.get("path", {}).get("HMMA", 0) > 0 else hot["mix"]
    scale = mix["HMMA"] / per_warp_hmma  # table units per unit of work
    mix["total"] = max(mix["total"] - (removed - added) * scale, 1.0)
    return out


def wgmma_smem_wavefronts(
    kind: str, tile_m: int, tile_n: int, stage_bytes: int, k_steps: int
) -> float:
    """Shared-memory wavefronts (128 bytes) of one block's stage with the wgmma main loop (the
    counterpart of kernels.mma_smem_wavefronts): the fills as today, except that the linear W
    tile is masked in registers (one fill, no read-modify-write); the weight read into
    registers once; the activation tile read by each of the two consumer warpgroups that
    needs it (both when they split the 128 weight rows, one half each when 64 rows are one
    warpgroup's wgmma M)."""
    a_bytes, w_bytes = tile_m * stage_bytes / 128, tile_n * stage_bytes / 128
    w_fill = 4 * w_bytes if kind.startswith("window") else w_bytes
    readers = 2 if tile_n >= 128 else 1
    return a_bytes + w_fill + w_bytes + readers * a_bytes


def mma_cost(
    scenario: str, launch: Launch, res: dict | None, gpu: Gpu, c: Constants, taps: int = 1
) -> Cost:
    """Device time of a planned gemm_mma.cuh launch under ``scenario``."""
    if scenario not in KERNEL_SCENARIOS:
        raise ValueError(f"what_if: {scenario!r} is none of {sorted(KERNEL_SCENARIOS)}")
    if scenario.endswith("-ws"):
        c = c.replace(tile_sync_clk=0.0)
    if not scenario.startswith("wgmma"):
        cost = kernels.mma(launch, res, gpu, c, taps)
    else:
        gpu = replace(gpu, hmma_clk=wgmma_clk(gpu))
        res = _wgmma_table(launch, res)
        # kernels.mma has no seam for another operand path: its wavefront count is swapped
        # for the wgmma one for this call only (a hook in kernels.py would be cleaner)
        with mock.patch.object(kernels, "mma_smem_wavefronts", wgmma_smem_wavefronts):
            cost = kernels.mma(launch, res, gpu, c, taps)
    cost.detail["what_if"] = scenario
    return cost
