"""Device time of one planned kernel launch.

Every kernel is a grid of blocks that the GPU runs in waves of ``occupancy x SMs`` (occupancy
from the kernel's registers and shared memory, read from the built code). A block repeats one
*unit* of work (a small-batch chunk, a small-batch-grad step, a tiled stage or slice), and a
unit's time is the largest of what it needs from the SM it shares with the other resident
blocks:

* DRAM and L2 bytes over this SM's share of the chip's bandwidth;
* warp instructions over the SM's issue rate (4 per clock, at ``issue_efficiency``);
* tensor-core instructions (tiled mma) and shared-memory wavefronts;
* the unit's own latency chain: dependent global loads (``mem_latency_ns`` each, e.g. the
  small-batch kernel's bit words, loaded at their point of use) plus its warp's instructions at
  ``cpi`` clocks each; kernels that overlap loads with math take the larger of the two,
  kernels that serialize them the sum.

Instruction counts per unit are the SASS of the kernel's hot loop (resources.py), scaled by the
FFMA or HMMA count that the source says one unit issues, so that a loop the compiler unrolled
still counts per unit. Grid-stride helper kernels are bandwidth or latency bound: bytes in
flight per SM over the memory latency.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from .hardware import Gpu
from .plan import Launch

ELEM_BYTES = {"f32": 4, "f16": 2, "bf16": 2}


@dataclass(frozen=True)
class Constants:
    """The model's free constants. The fitted ones are set by ``model.py calibrate`` (saved in
    constants.json); the defaults are physical first guesses."""

    mem_latency_ns: float = 650.0  # fitted: a dependent global load that misses to DRAM, loaded
    cpi: float = 2.0  # fitted: clocks per instruction of one warp's own dependent stream
    issue_efficiency: float = 0.7  # fitted: achieved share of the SM's instruction issue
    # fitted: the FMAs of the streaming kernels, as a share of the FP32 rate (they wait on the
    # staged x: a shared load and a conversion per x row per warp)
    fma_issue_efficiency: float = 0.7
    tile_sync_clk: float = 1500.0  # fitted: a tiled stage's barrier/wait/mask time, not overlapped
    simt_sync_clk: float = 1500.0  # fitted: the same for the CUDA-core tiles
    tile_issue_efficiency: float = 0.9  # fitted: the tiled kernels' achieved issue share
    host_fused_us: float = 22.0  # fitted: host time of one fused op call from Python
    host_index_us: float = 6.0  # fitted: one x[t] / bits[t] of the benchmark's per-task loop
    host_launch_us: float = 2.0  # each further launch of one op (and its workspace) on the host
    launch_gap_us: float = 1.5  # device idle between back-to-back kernels
    host_torch_op_us: float = 9.0  # fitted (baselines): one torch op from Python
    vendor_gemm_eff: float = 0.75  # fitted (baselines): cuBLAS share of the 8192^3 matmul peak
    vendor_conv_eff: float = 0.35  # fitted (baselines): cuDNN share of it on these convs
    vendor_bw_eff: float = 0.85  # fitted (baselines): library kernels' share of copy bandwidth
    vendor_conv_us: float = 6.0  # fitted (baselines): fixed cost of a cuDNN conv launch
    host_train_us: float = 250.0  # fitted (baselines): host time of a plain layer's training step
    dense_train_passes: float = 24.0  # fitted (baselines): elementwise bytes per weight element
    #   of the reference's effective weight and its gradients, in units of one element size

    def replace(self, **kw) -> Constants:
        return Constants(**{**self.__dict__, **kw})


@dataclass
class Cost:
    seconds: float
    bound: str  # what limits it: dram, l2, issue, latency, tensor, smem, launch
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Unit:
    """One unit of a block's work, and how many the block does."""

    count: float
    dram_bytes: float = 0.0
    l2_bytes: float = 0.0
    instructions: float = 0.0  # per warp
    fma: float = 0.0  # of which FFMA (streaming kernels: issued at fma_issue_efficiency)
    warps: int = 8
    chain_s: float = 0.0  # dependent-latency chain of one warp
    overlapped: bool = False  # the chain overlaps the warp's instructions (max, not sum)
    hmma: float = 0.0  # per block (tiled mma)
    smem_wavefronts: float = 0.0  # per block
    fixed_s: float = 0.0  # per unit, never overlapped (barriers, waits)
    prologue_s: float = 0.0  # per block: first loads, epilogue stores


# --------------------------------------------------------------------------- resources


def elem_bytes(kernel: str) -> int:
    """The element size of a kernel from its first element-type argument."""
    for name in ("bf16", "f16", "f32"):
        if f"<{name}" in kernel or f"{name}," in kernel or f"{name}>" in kernel:
            return ELEM_BYTES[name]
    raise ValueError(f"kernel {kernel}: no element type in its name")


def occupancy(regs: int, threads: int, static_smem: int, dynamic_smem: int, gpu: Gpu) -> int:
    """Resident blocks per SM: registers (256-register allocation per warp), shared memory,
    threads, blocks."""
    warps = math.ceil(threads / 32)
    per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    by_regs = (gpu.regs_per_sm // per_warp) // warps
    smem = static_smem + dynamic_smem + gpu.smem_reserved_per_block
    by_smem = gpu.smem_per_sm // smem
    by_threads = gpu.max_threads_per_sm // threads
    return max(0, min(by_regs, by_smem, by_threads, gpu.max_blocks_per_sm))


def hot_loop(res: dict | None, opcode: str) -> dict | None:
    """The loop with the most ``opcode`` instructions (ties: the smaller loop, the innermost),
    or None if no loop has one."""
    if not res:
        return None
    loops = [lp for lp in res.get("loops", []) if lp["mix"].get(opcode, 0) > 0]
    if not loops:
        return None
    return max(loops, key=lambda lp: (lp["mix"][opcode], -lp["mix"]["total"]))


def per_unit_count(res: dict | None, opcode: str, expected: float, count: str) -> float | None:
    """One opcode's count per unit (as per_unit_instructions scales the total), or None."""
    loop = hot_loop(res, opcode)
    if loop is None:
        return None
    mix = loop["path"] if loop.get("path", {}).get(opcode, 0) > 0 else loop["mix"]
    return mix.get(count, 0) * expected / mix[opcode]


def per_unit_instructions(
    res: dict | None, opcode: str, expected: float, fallback: float
) -> tuple[float, str]:
    """Warp instructions of one unit: the hot loop's count scaled to ``expected`` ``opcode``
    instructions per unit (from the source), or ``fallback`` without SASS."""
    loop = hot_loop(res, opcode)
    if loop is None:
        return fallback, "estimated"
    path = loop.get("path", {})
    if path.get(opcode, 0) > 0:  # the loop's straight-line trip (resources._fall_through)
        return path["total"] * expected / path[opcode], "sass"
    return loop["mix"]["total"] * expected / loop["mix"][opcode], "sass"


# --------------------------------------------------------------------------- the waves


def run_grid(blocks: int, occ: int, gpu: Gpu, block_time) -> tuple[float, float]:
    """Time of ``blocks`` blocks at ``occ`` per SM; ``block_time(b, active)`` is one block's
    time with b blocks resident per SM on ``active`` SMs. Returns (seconds, waves)."""
    occ = max(occ, 1)
    slots = occ * gpu.sms
    full, rem = divmod(blocks, slots)
    t = full * block_time(occ, gpu.sms)
    if rem:
        b = math.ceil(rem / gpu.sms)
        t += block_time(b, min(gpu.sms, rem))
    return t, blocks / slots


def unit_seconds(
    u: Unit, b: int, active: int, gpu: Gpu, c: Constants, issue_efficiency: float | None = None
) -> tuple[float, str]:
    f = gpu.clock_ghz * 1e9
    eff = c.issue_efficiency if issue_efficiency is None else issue_efficiency
    terms = {
        "dram": b * u.dram_bytes / (gpu.dram_gbps * 1e9 / active),
        "l2": b * u.l2_bytes / (gpu.l2_gbps * 1e9 / active),
        "issue": b
        * u.warps
        * ((u.instructions - u.fma) / eff + u.fma / (c.fma_issue_efficiency if u.fma else 1.0))
        / (gpu.schedulers * f),
        "tensor": b * u.hmma * gpu.hmma_clk / f,
        "smem": b * u.smem_wavefronts / f,
    }
    own = u.instructions * c.cpi / f
    terms["latency"] = max(u.chain_s, own) if u.overlapped else u.chain_s + own
    bound = max(terms, key=terms.get)
    return terms[bound] + u.fixed_s, bound


def blocks_cost(
    launch: Launch,
    unit: Unit,
    occ: int,
    gpu: Gpu,
    c: Constants,
    total_dram_bytes: float,
    detail: dict,
    tiled: bool = False,
) -> Cost:
    bounds = []
    eff = c.tile_issue_efficiency if tiled else c.issue_efficiency

    def block_time(b, active):
        t, bound = unit_seconds(unit, b, active, gpu, c, eff)
        bounds.append(bound)
        return unit.count * t + unit.prologue_s

    t, waves = run_grid(launch.blocks, occ, gpu, block_time)
    t_dram = total_dram_bytes / (gpu.dram_gbps * 1e9)
    bound = bounds[0] if bounds else "launch"
    if t_dram > t:
        t, bound = t_dram, "dram"
    detail.update(
        occupancy=occ,
        waves=waves,
        units_per_block=unit.count,
        dram_bytes=total_dram_bytes,
        instructions_per_unit=unit.instructions,
    )
    return Cost(t + c.launch_gap_us * 1e-6, bound, detail)


# ------------------------------------------------------------------------------ families

SECTOR = 32  # bytes: the unit of an L1/L2 access
DRAM_BURST = 64  # bytes: L2 fills from HBM in pairs of sectors (an assumption of the model)


def load_rounds(bytes_per_round: int, rounds: int) -> dict:
    """Where each of ``rounds`` dependent loads of consecutive ``bytes_per_round`` (one W row's
    bit words per round, as a warp reads them) is served: a sector that an earlier round
    touched hits L1, one that an earlier round's DRAM burst brought hits L2, else DRAM."""
    seen_sectors, seen_bursts = set(), set()
    out = {"dram": 0, "l2": 0, "l1": 0}
    for r in range(rounds):
        lo, hi = r * bytes_per_round, (r + 1) * bytes_per_round - 1
        sectors = set(range(lo // SECTOR, hi // SECTOR + 1))
        bursts = set(range(lo // DRAM_BURST, hi // DRAM_BURST + 1))
        if sectors <= seen_sectors:
            out["l1"] += 1
        elif bursts <= seen_bursts:
            out["l2"] += 1
        else:
            out["dram"] += 1
        seen_sectors |= sectors
        seen_bursts |= bursts
    return out


def rounds_seconds(rounds: dict, gpu: Gpu, c: Constants) -> float:
    return (
        rounds["dram"] * c.mem_latency_ns
        + rounds["l2"] * gpu.l2_latency_ns
        + rounds["l1"] * gpu.l1_latency_ns
    ) * 1e-9


def small_batch(
    launch: Launch, res: dict | None, gpu: Gpu, c: Constants, single: dict | None = None
) -> Cost:
    """gemm_small_batch.cuh: a block streams rows_per_block W rows, one chunk of stage_width
    columns at a time: W loads, barrier, x staged from L2, barrier, then 4 rounds of bit-word
    loads at their point of use (per task of the group), each followed by its FMAs."""
    p, e = launch.params, elem_bytes(launch.kernel)
    kv = 16 // e
    chunks = max(p["chunks"], 1)
    rows = min(p["rows_per_block"], p["N"] / launch.grid[0])
    cols = p["K"] / chunks
    tasks_in_group = p["group_rows"] // p["M"] if launch.kernel.endswith("true>") else 1
    groups = launch.grid[1]
    w_bytes = p["N"] * p["K"] * e
    w_dram = 1.0 if groups == 1 or w_bytes > gpu.l2_bytes / 2 else 1.0 / groups
    w_chunk = rows * cols * e
    bits_chunk = rows * cols / 8 * tasks_in_group
    ffma = 2 * 4 * kv * p["x_rows"]  # rows per warp x loads per row x elements x x rows
    instr, source = per_unit_instructions(res, "FFMA", ffma, 3.0 * ffma + 400)
    if tasks_in_group < p["x_rows"] and single is not None:
        # The multi-task loop decodes the weights again at each task's first row; its
        # straight-line trip decodes at every row. Count the group's task starts only, from
        # the single-task kernel of the same x rows (``single``).
        base, _ = per_unit_instructions(single, "FFMA", ffma, instr)
        instr = base + (instr - base) * tasks_in_group / p["x_rows"]
    latency = c.mem_latency_ns * 1e-9
    # Each load u of a chunk reads 32 lanes x kv columns of a row's bit words: 32 bytes
    # (16-bit W) or 16 (fp32), after the previous round's FMAs.
    rounds = load_rounds(32 * kv // 8, 4)
    # Each lane reads its own 16 bytes of the staged x (LDS.128: 4 wavefronts per warp).
    lds = per_unit_count(res, "FFMA", ffma, "LDS")
    lds = 4 * p["x_rows"] if lds is None else lds
    unit = Unit(
        count=chunks,
        dram_bytes=w_chunk * w_dram + bits_chunk,
        l2_bytes=w_chunk * (1 - w_dram) + p["group_rows"] * cols * e,
        instructions=instr,
        fma=ffma,
        warps=8,
        smem_wavefronts=8 * 4 * lds,
        chain_s=gpu.l2_latency_ns * 1e-9 + tasks_in_group * rounds_seconds(rounds, gpu, c),
        prologue_s=latency,
    )
    w_reads = groups if w_dram == 1.0 else 1
    total = (
        w_bytes * w_reads
        + p["N"] * p["K"] / 8 * p["tasks"]
        + p["M"] * p["tasks"] * (p["K"] + p["N"]) * e
    )
    detail = {"instructions_from": source, "tasks_in_group": tasks_in_group, "bit_rounds": rounds}
    return blocks_cost(launch, unit, _occ(launch, res, gpu), gpu, c, total, detail)


def small_batch_grad(launch: Launch, res: dict | None, gpu: Gpu, c: Constants) -> Cost:
    """gemm_small_batch_grad.cuh: each warp walks its split's W rows 4 at a time (a step),
    loading W and bit words and consuming them in the same step (no prefetch)."""
    p, e = launch.params, elem_bytes(launch.kernel)
    kv = 16 // e
    steps = math.ceil(p["rows_per_split"] / (p["slices"] * p["rows_per_step"]))
    ffma = p["rows_per_step"] * kv * p["dy_rows"]
    instr, source = per_unit_instructions(res, "FFMA", ffma, 2.0 * ffma + 120)
    step_bytes = 8 * p["rows_per_step"] * (32 * 16 + 32)  # 8 warps x rows x (W + bit words)
    latency = c.mem_latency_ns * 1e-9
    stage_rows = 4096 // p["dy_rows"]
    chain = latency + gpu.l2_latency_ns * 1e-9 * p["slices"] * p["rows_per_step"] / stage_rows
    unit = Unit(
        count=steps,
        dram_bytes=step_bytes,
        instructions=instr,
        fma=ffma,
        warps=8,
        chain_s=chain,
        prologue_s=latency,
    )
    m, n, k = p["M"], p["N"], p["K"]
    out = (4 * p["splits"] if launch.workspace_bytes else e) * m * k
    total = n * k * (e + 1 / 8) + m * n * e + out
    return blocks_cost(
        launch, unit, _occ(launch, res, gpu), gpu, c, total, {"instructions_from": source}
    )


def weight_stream(launch: Launch, res: dict | None, gpu: Gpu, c: Constants) -> Cost:
    """gemm_stream.cuh: each warp streams its chunks (16 W rows x chunk_bytes) through its own
    ``stages``-deep cp.async pipeline, tile after tile; a unit is one chunk per warp of the
    block. W (evict-first) and its bit words come from DRAM, x from L2 in a block's first tile
    only; the chunk's HMMA (4 quads x 2 k-steps per n8 tile used) follow its wait and warp
    barrier, so a warp's loads overlap its math and the stream is latency-bound only below
    (stages - 1) chunks per memory latency. At a tile's end the warps' sums meet in shared
    memory (two barriers). The fp32-weight form (``weight_bytes`` 4 for 16-bit x) streams
    4-byte W, a chunk of half the columns (2 quads), and rounds each piece to 16 bits before
    its mask (in the SASS counts where the resource table has that kernel). Extrapolated: no
    GPU has run this kernel yet."""
    p, e = launch.params, elem_bytes(launch.kernel)
    we, quads = p.get("weight_bytes", e), p.get("quads", 4)
    f = gpu.clock_ghz * 1e9
    warps, stages, chunk = p["warps"], p["stages"], p["chunk_bytes"]
    tiles_n8, tasks = p["tiles"], p["tasks_per_group"]
    used = min(tasks * p["tiles_per_task"], tiles_n8)
    groups = launch.grid[2]
    cps = p["chunks_per_split"]
    rounds = math.ceil(cps / warps)  # a warp's chunks per tile (the busiest warp's)
    tiles_per_block = math.ceil(p["row_tiles"] / p["row_blocks"])
    units = tiles_per_block * rounds
    w_bytes = p["N"] * p["K"] * we
    w_dram = 1.0 if groups == 1 or w_bytes > gpu.l2_bytes / 2 else 1.0 / groups
    w_unit = cps * 16 * chunk / rounds  # the block's W bytes per unit, all warps
    bits_unit = w_unit / we / 8 * tasks
    group_rows = tasks * p["M"]
    x_chunk = chunk // we * e  # bytes of a staged x row per chunk
    x_block = group_rows * cps * x_chunk
    hmma = cps / rounds * 2 * quads * used
    # Instructions of one warp's chunk: the loop trip (one stream position) of the SASS, whose
    # straight-line path multiplies all kTiles n8 tiles; scaled to the tiles used.
    instr, source = per_unit_instructions(
        res, "HMMA", 2 * quads * used, 250 + 6 * quads * used + (64 if we != e else 0)
    )
    # Shared-memory wavefronts per warp chunk: W copied in and read back (32 + 32), the bit
    # words (a 4-byte copy and a 16-byte read per task per row half), x read per quad and tile
    # (4 per LDS.128), x copied in during the first tile.
    wavefronts = (
        64 + tasks * 2 * (1 + 4) + 4 * quads * used + group_rows * x_chunk / 128 / tiles_per_block
    )
    # A tile's end: two barriers and the warps' sums (kTiles x 4 shared loads per thread).
    flush_clk = 2 * 40 + tiles_n8 * warps * 30
    unit = Unit(
        count=units,
        dram_bytes=w_unit * w_dram + bits_unit,
        l2_bytes=w_unit * (1 - w_dram) + x_block / units,
        instructions=instr,
        warps=warps,
        chain_s=c.mem_latency_ns * 1e-9 / (stages - 1),
        overlapped=True,
        hmma=hmma,
        smem_wavefronts=wavefronts * warps,
        fixed_s=flush_clk / f / rounds,
        prologue_s=c.mem_latency_ns * 1e-9,
    )
    rows_total = p["M"] * p["tasks"]
    w_reads = groups if w_dram == 1.0 else 1
    out = (4 * p["splits"] if launch.workspace_bytes else e) * rows_total * p["N"]
    total = w_bytes * w_reads + p["N"] * p["K"] / 8 * p["tasks"] + rows_total * p["K"] * e + out
    return blocks_cost(
        launch,
        unit,
        _occ(launch, res, gpu),
        gpu,
        c,
        total,
        {"instructions_from": source, "units_per_tile": rounds, "tiles_per_block": tiles_per_block},
    )


def weight_stream_grad(launch: Launch, res: dict | None, gpu: Gpu, c: Constants) -> Cost:
    """gemm_stream_grad.cuh: the weight stream reducing over N. Each warp streams its chunks
    (chunk_rows W rows x strip_bytes of columns) through its own ``stages``-deep cp.async
    pipeline, strip after strip; a unit is one chunk per warp of the block. W (evict-first)
    and its bit words come from DRAM, the chunk's dy rows from L2 (copied with every chunk);
    the chunk's HMMA (8 per n8 tile used: 2 k16 steps x 4 m-tiles, or 4 k8 x 2 in TF32)
    follow its byte permutes (16-bit: one per A register), so loads overlap math as in
    weight_stream. At a strip's end warps 1-3 leave their sums in shared memory and warp 0
    adds them (two barriers). The fp32-weight form (``weight_bytes`` 4 for 16-bit dy) keeps
    the strip's columns, so a chunk is twice the W bytes, each piece two copies rounded to
    16 bits before its mask (in the SASS counts where the resource table has that kernel).
    Extrapolated: no GPU has run this kernel yet."""
    p, e = launch.params, elem_bytes(launch.kernel)
    we = p.get("weight_bytes", e)
    f = gpu.clock_ghz * 1e9
    warps, stages = p["warps"], p["stages"]
    chunk = p["chunk_rows"] * p["strip_bytes"] * we // e  # W bytes of one chunk
    used = p["used_tiles"]
    cps = p["chunks_per_split"]
    rounds = math.ceil(cps / warps)  # a warp's chunks per strip (the busiest warp's)
    strips_per_block = math.ceil(p["strips"] / p["strip_blocks"])
    units = strips_per_block * rounds
    w_unit = cps * chunk / rounds  # the block's W bytes per unit, all warps
    bits_unit = w_unit / we / 8
    dy_unit = cps / rounds * p["M"] * p["chunk_rows"] * e
    hmma = cps / rounds * 8 * used
    kv = 16 // e
    # One warp's chunk: 8 W pieces masked (and 16-bit: 16 permutes per k16 step), the dy
    # copies (M x chunk rows x e over 32 lanes x 16 bytes) and reads, 8 HMMA per tile.
    dy_copies = math.ceil(p["M"] * p["chunk_rows"] * e / (32 * 16))
    instr, source = per_unit_instructions(
        res,
        "HMMA",
        8 * used,
        230 + (32 if kv == 8 else 0) + 12 * used + 6 * dy_copies + (64 if we != e else 0),
    )
    # Shared-memory wavefronts per warp chunk: W copied in and read back (32 + 32), the bit
    # words (2 four-byte copies, 2 LDS.128), dy copied in and read (per tile: 2 LDS.128 of
    # 16-bit, 4 of fp32: 4 wavefronts each).
    wavefronts = 64 * we // e + 2 + 8 + dy_copies * 4 + used * (8 if kv == 8 else 16)
    regs = (kv // 2) * p["tiles"] * 4  # sums per lane
    # A strip's end: two barriers, warps 1-3 store their sums, warp 0 loads and adds them.
    flush_clk = 2 * 40 + regs * 4 + (warps - 1) * regs * 8
    unit = Unit(
        count=units,
        dram_bytes=w_unit + bits_unit,
        l2_bytes=dy_unit,
        instructions=instr,
        warps=warps,
        chain_s=c.mem_latency_ns * 1e-9 / (stages - 1),
        overlapped=True,
        hmma=hmma,
        smem_wavefronts=wavefronts * warps,
        fixed_s=flush_clk / f / rounds,
        prologue_s=c.mem_latency_ns * 1e-9,
    )
    m, n, k = p["M"], p["N"], p["K"]
    out = (4 * p["splits"] if launch.workspace_bytes else e) * m * k
    total = n * k * (we + 1 / 8) + m * n * e + out
    return blocks_cost(
        launch,
        unit,
        _occ(launch, res, gpu),
        gpu,
        c,
        total,
        {
            "instructions_from": source,
            "units_per_strip": rounds,
            "strips_per_block": strips_per_block,
        },
    )


def _view_kind(kernel: str) -> str:
    """linear, conv_nhwc (a tiles by cp.async), conv (gathered a tiles), the 3x3 tap-window
    tiles of conv_window.cuh (window_nhwc, window), or the one-pass weight gradient of
    gemm_weight_grad.cuh (weight_grad)."""
    if "WeightGradView" in kernel:
        return "weight_grad"
    if "ConvWindowView" in kernel:
        m = re.search(r"ConvWindowView<.*>,(true|false),\d+(,\d+)?>", kernel)
        return "window_nhwc" if m and m.group(1) == "true" else "window"
    if "ConvMmaView" not in kernel:
        return "linear"
    m = re.search(r"ConvMmaView<.*>,(true|false)>", kernel)
    return "conv_nhwc" if m and m.group(1) == "true" else "conv"


def mma_smem_wavefronts(
    kind: str, tile_m: int, tile_n: int, stage_bytes: int, k_steps: int
) -> float:
    """Shared-memory wavefronts (128 bytes) of one block's stage in gemm_mma.cuh.

    ldmatrix.x4 (4 wavefronts): per k-step, each of the warps_n warp columns reads the a tile's
    tile_m / 16 row blocks and each of the warps_m warp rows the W tile's tile_n / 16 (the
    128 x 128 tile: 2 x 4 warps, 24 per warp; 128 x 64: 4 x 2 warps, 16 per warp). The fill:
    the a tile by cp.async or 16-byte stores (one wavefront per 128 bytes); the linear W tile
    by cp.async, then read and written again by the in-place mask; the one-tap conv W' by
    4-byte spans; the tap-window W' by 4-byte stores 16 bytes apart across a warp (its rows),
    4 wavefronts per 128 bytes."""
    warps_n = 4 if tile_n == 128 else 2
    warps_m = 8 // warps_n
    ldmatrix = 4 * k_steps * (warps_n * tile_m // 16 + warps_m * tile_n // 16)
    a_fill, w_bytes = tile_m * stage_bytes / 128, tile_n * stage_bytes / 128
    if kind == "linear":
        w_fill = 3 * w_bytes
    elif kind == "weight_grad":
        w_fill = w_bytes  # x by cp.async, nothing masked
    elif kind.startswith("window"):
        w_fill = 4 * w_bytes
    else:
        w_fill = w_bytes
    return ldmatrix + a_fill + w_fill


def mma(launch: Launch, res: dict | None, gpu: Gpu, c: Constants, taps: int = 1) -> Cost:
    """gemm_mma.cuh: tile_m x tile_n tiles through a ``ring``-stage cp.async ring, ``k_steps``
    mma k-steps per stage (mma::Layout: 128 x 128, 3 stages of 4 k-steps, 128 bytes of
    reduction; the tap-window conv tiles: 128 x 128 or 128 x 64, 4 stages of 5 k-steps, 144
    bytes: 9 taps of a 16-byte channel block, the last k-step half zeros); per stage and block
    tile_m / 16 x tile_n / 8 HMMA per k-step, the operand tiles from L2, and the shared-memory
    wavefronts of mma_smem_wavefronts."""
    p, e = launch.params, elem_bytes(launch.kernel)
    kind = _view_kind(launch.kernel)
    f = gpu.clock_ghz * 1e9
    tile_m, tile_n = p.get("tile_m", 128), p.get("tile_n", 128)
    stage_bytes, k_steps = p.get("stage_bytes", 128), p.get("k_steps", 4)
    warps = 8
    hmma_block = tile_m // 16 * (tile_n // 8) * k_steps
    # Without SASS: the linear loop's count (review of d93db6f), the one-tap conv gather's,
    # and for the tap-window tiles the mma loop's plus the half-run transposes (an estimate).
    fallback = {"linear": 450, "weight_grad": 450, "window": 1100, "window_nhwc": 900}.get(
        kind, 2600
    )
    instr, source = per_unit_instructions(res, "HMMA", hmma_block / warps, fallback)
    wavefronts = mma_smem_wavefronts(kind, tile_m, tile_n, stage_bytes, k_steps)
    # The one-tap conv W' gather (kernels larger than 1x1): per thread 16 spans of 4 bytes,
    # each element a bit-word load, a branch, then its W load (conv_views.cuh weight_span).
    # The tap-window tiles load whole runs before the multiply and use them after it: one
    # L2 round trip per stage, overlapped by the multiply.
    chain = 0.0
    if kind in ("conv", "conv_nhwc") and taps > 1:
        chain = 16 * (4 // e) * (gpu.l1_latency_ns + 10) * 1e-9
    elif kind.startswith("window"):
        chain = gpu.l2_latency_ns * 1e-9
    latency = c.mem_latency_ns * 1e-9
    stages = p["stages_per_split"]
    splits = p["splits"]
    out_elem = epilogue_bytes(launch.kernel, e)
    out_bytes = tile_m * tile_n * (4 if splits > 1 else out_elem)
    a_bytes, w_bytes = tile_m * stage_bytes, tile_n * stage_bytes
    if kind.startswith("window"):
        # Bits: the tile's rows' share of the stage. L2 sectors: an NHWC pixel's 16 bytes of
        # one tap are half a sector; a W run's 144 bytes span 5 sectors.
        bits = tile_n * stage_bytes / e / 8
        a_bytes *= 2 if kind == "window_nhwc" else 1
        w_bytes *= 160 / 144
    elif kind == "weight_grad":
        bits = 0  # no mask on the way in: the rule acts at the store
    else:
        bits = 1024  # the one-tap views and linear: 1 KB, as first modeled
    store_s = out_bytes / (gpu.dram_gbps * 1e9 / gpu.sms)
    if kind == "weight_grad" and splits == 1:
        # Its epilogue loads two streams and stores two per element (the others store one):
        # the function's instructions outside the main loop, issued by the block's warps.
        store_s = max(
            store_s,
            warps * epilogue_instructions(res) / (gpu.schedulers * f * c.tile_issue_efficiency),
        )
    unit = Unit(
        count=stages,
        l2_bytes=a_bytes + w_bytes + bits,
        instructions=instr,
        warps=warps,
        chain_s=chain,
        overlapped=True,
        hmma=hmma_block,
        smem_wavefronts=wavefronts,
        fixed_s=c.tile_sync_clk / f,
        prologue_s=2 * latency + store_s,
    )
    rows, cols = p["rows"], p["cols"]
    red = p["stages"] * stage_bytes // e
    z = launch.grid[2] // splits
    total = z * (
        cols * red * (e + 1 / 8)
        + rows * red * e / max(taps, 1)
        + rows * cols * (4 * splits if splits > 1 else out_elem)
    )
    if kind == "weight_grad":  # no bits: the B operand is x, the A operand dy
        total -= z * cols * red / 8
    return blocks_cost(
        launch,
        unit,
        _occ(launch, res, gpu),
        gpu,
        c,
        total,
        {"instructions_from": source, "view": kind},
        tiled=True,
    )


def epilogue_instructions(res: dict | None) -> float:
    """Warp instructions of a tiled kernel outside its main loop (prologue and epilogue), from
    SASS; without it, the bf16 weight-gradient kernel's count in the table of 2026-12-02 (2900:
    the sums staged in shared memory, then 4 runs of 16 columns per thread in 16-byte
    accesses)."""
    loop = hot_loop(res, "HMMA")
    if not res or loop is None:
        return 2900.0
    return res["mix"]["total"] - loop["mix"]["total"]


def epilogue_bytes(kernel: str, e: int) -> float:
    """Bytes per output element of a tiled kernel's store: the element itself, or for the
    one-pass weight gradient its rule's traffic in the training form with the mask gradient
    (the owner byte and W read; dW and the fp32 dm written). Its fp32-weight form
    (F32WeightGradView) reads and writes W and dW as fp32."""
    if "F32WeightGradView" in kernel:
        return 1 + 2 * 4 + 4
    return 1 + 2 * e + 4 if "WeightGradView" in kernel else e


def simt(launch: Launch, res: dict | None, gpu: Gpu, c: Constants) -> Cost:
    """gemm_simt.cuh: 128 x 128 tiles, 8 reduction indices per slice, 8 x 8 FMAs per thread
    per index; the next slice's operands (each weight bit-tested, then loaded) are fetched
    while this one is multiplied, one barrier per slice."""
    p, e = launch.params, elem_bytes(launch.kernel)
    f = gpu.clock_ghz * 1e9
    instr, source = per_unit_instructions(res, "FFMA", 512, 800)
    latency = c.mem_latency_ns * 1e-9
    slices = p["per_split"] // p["tile_k"]
    unit = Unit(
        count=slices,
        l2_bytes=2 * 128 * 8 * e + 128 * 8 / 8,
        instructions=instr,
        warps=8,
        chain_s=gpu.l1_latency_ns * 1e-9 + latency,
        overlapped=True,
        smem_wavefronts=8 * 16 * 4 + 64,
        fixed_s=c.simt_sync_clk / f,
        prologue_s=2 * latency,
    )
    rows, cols, red, splits = p["rows"], p["cols"], p["reduction"], p["splits"]
    z = launch.grid[2] // splits
    total = z * (
        cols * red * (e + 1 / 8) + rows * red * e + rows * cols * (4 * splits if splits > 1 else e)
    )
    return blocks_cost(
        launch,
        unit,
        _occ(launch, res, gpu),
        gpu,
        c,
        total,
        {"instructions_from": source},
        tiled=True,
    )


def direct(launch: Launch, res: dict | None, gpu: Gpu, c: Constants) -> Cost:
    """conv_direct.cuh: one output per thread, taps x channels FMAs from L1/L2, each weight
    bit-tested then loaded."""
    p = launch.params
    f = gpu.clock_ghz * 1e9
    macs = p["outputs"] * p["taps"] * p["reduction_channels"]
    per_mac, source = per_unit_instructions(res, "FFMA", 1, 14)
    occ = _occ(launch, res, gpu)
    resident = min(launch.blocks, occ * gpu.sms) * launch.threads
    t_issue = macs * per_mac / 32 / (gpu.sms * gpu.schedulers * f * c.issue_efficiency)
    t_lat = macs / resident * 2 * gpu.l1_latency_ns * 1e-9
    t = max(t_issue, t_lat)
    return Cost(
        t + c.launch_gap_us * 1e-6,
        "issue" if t_issue >= t_lat else "latency",
        {"macs": macs, "instructions_from": source, "instructions_per_mac": per_mac},
    )


# Grid-stride helpers: bytes read + written, and the bytes a thread has in flight.
def _streaming(
    launch: Launch,
    res: dict | None,
    gpu: Gpu,
    c: Constants,
    nbytes: float,
    inflight_per_thread: float,
) -> Cost:
    occ = _occ(launch, res, gpu)
    resident = min(launch.blocks, max(occ, 1) * gpu.sms) * launch.threads
    t_bw = nbytes / (gpu.dram_gbps * 1e9)
    t_lat = nbytes / (resident * inflight_per_thread / (c.mem_latency_ns * 1e-9))
    bound = "dram" if t_bw >= t_lat else "latency"
    return Cost(max(t_bw, t_lat) + c.launch_gap_us * 1e-6, bound, {"bytes": nbytes})


def reduce_splits(launch: Launch, res, gpu, c, out_elem: int) -> Cost:
    p = launch.params
    nbytes = p["elements"] * (4 * p["splits"] + out_elem)
    return _streaming(launch, res, gpu, c, nbytes, 4 * min(p["splits"], 4))


def unfold(launch: Launch, res, gpu, c) -> Cost:
    """conv_unfolded.cuh's gathers: the windows (unfold_kernel) or NCHW dy's pixels as rows
    (dy_rows_kernel), each element read once and written once."""
    e = elem_bytes(launch.kernel)
    return _streaming(launch, res, gpu, c, 2 * launch.params["elements"] * e, e)


def fold(launch: Launch, res, gpu, c) -> Cost:
    """conv_unfolded.cuh fold_kernel: each dx element's taps x splits fp32 partial sums, read by
    ``lanes`` lanes (one load in flight each: the grid's threads are elements x lanes), then
    its store. Every partial sum is read once (``partial_sums``; plans from before it was
    reported: elements x taps x splits, exact for a stride-1 conv)."""
    p, e = launch.params, elem_bytes(launch.kernel)
    partials = p.get("partial_sums", p["elements"] * p["taps"] * p["splits"])
    nbytes = p["elements"] * e + 4 * partials
    return _streaming(launch, res, gpu, c, nbytes, 4)


def launch_cost(
    launch: Launch,
    res: dict | None,
    gpu: Gpu,
    c: Constants,
    taps: int = 1,
    single: dict | None = None,
) -> Cost:
    """Device time of one planned launch (``single``: for the multi-task small-batch kernel,
    the resources of its single-task form)."""
    fam = launch.family
    if fam == "small_batch::masked_linear_small_batch_kernel":
        return small_batch(launch, res, gpu, c, single)
    if fam in (
        "weight_stream::masked_linear_stream_kernel",
        "weight_stream::masked_linear_f32_weight_stream_kernel",
    ):
        return weight_stream(launch, res, gpu, c)
    if fam == "small_batch_grad::masked_linear_grad_input_small_batch_kernel":
        return small_batch_grad(launch, res, gpu, c)
    if fam in (
        "weight_stream_grad::masked_linear_grad_input_stream_kernel",
        "weight_stream_grad::masked_linear_grad_input_f32_weight_stream_kernel",
    ):
        return weight_stream_grad(launch, res, gpu, c)
    if fam == "mma::masked_gemm_mma_kernel":
        return mma(launch, res, gpu, c, taps)
    if fam == "simt::masked_gemm_simt_kernel":
        return simt(launch, res, gpu, c)
    if fam == "conv::direct::masked_conv_direct_kernel":
        return direct(launch, res, gpu, c)
    if fam in (
        "split_k::reduce_splits_kernel",
        "small_batch_grad::sum_splits_kernel",
        "weight_stream::sum_splits_kernel",
        "weight_stream_grad::sum_splits_kernel",
    ):
        e = elem_bytes(launch.kernel)
        return reduce_splits(launch, res, gpu, c, epilogue_bytes(launch.kernel, e))
    if fam in ("conv::unfolded::unfold_kernel", "conv::unfolded::dy_rows_kernel"):
        return unfold(launch, res, gpu, c)
    if fam == "conv::unfolded::fold_kernel":
        return fold(launch, res, gpu, c)
    raise ValueError(f"model: no cost model for kernel {launch.kernel}")


def _occ(launch: Launch, res: dict | None, gpu: Gpu) -> int:
    regs = res.get("regs", 64) if res else 64
    shared = res.get("shared", 0) if res else launch.params.get("static_smem", 0)
    return max(1, occupancy(regs, launch.threads, shared, launch.dynamic_smem, gpu))


# ------------------------------------------------------------ steps outside the plan


def elementwise(nbytes: float, gpu: Gpu, c: Constants, inflight_per_thread: float = 64) -> Cost:
    """A grid-stride elementwise kernel at 8 blocks of 256 threads per SM."""
    resident = 8 * 256 * gpu.sms
    t_bw = nbytes / (gpu.dram_gbps * 1e9)
    t_lat = nbytes / (resident * inflight_per_thread / (c.mem_latency_ns * 1e-9))
    return Cost(
        max(t_bw, t_lat) + c.launch_gap_us * 1e-6,
        "dram" if t_bw >= t_lat else "latency",
        {"bytes": nbytes},
    )


def vendor_gemm(
    m: int, n: int, k: int, e: int, dtype: str, gpu: Gpu, c: Constants, conv: bool = False
) -> Cost:
    """cuBLAS (or cuDNN for conv) on dense operands: the larger of its compute at a share of
    the measured 8192^3 peak and its bytes at a share of copy bandwidth, plus a launch."""
    flops = 2.0 * m * n * k
    nbytes = (m * k + n * k + m * n) * e
    peak = gpu.peak_tflops[dtype] * 1e12 * (c.vendor_conv_eff if conv else c.vendor_gemm_eff)
    t_c, t_m = flops / peak, nbytes / (gpu.dram_gbps * 1e9 * c.vendor_bw_eff)
    fixed = (c.vendor_conv_us if conv else 0.0) * 1e-6 + c.launch_gap_us * 1e-6
    return Cost(
        max(t_c, t_m) + fixed,
        "compute" if t_c >= t_m else "dram",
        {"flops": flops, "bytes": nbytes},
    )
