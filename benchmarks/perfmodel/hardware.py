"""The GPUs the model predicts, as the numbers it needs.

Public figures (NVIDIA's H100/H200 data sheets and the Hopper tuning guide) unless marked:
"measured" figures are the 2026-11-27 H100 run's own (benchmarks/results/2026-11-27-h100);
H200 is the same GH100 chip with faster HBM3e, so its achievable bandwidth is the H100's measured
fraction of peak applied to its own peak.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

H100_COPY_GBPS = 2995.0  # measured: 1 GiB device copy, read + write
H100_PEAK_TFLOPS = {"bf16": 769.9, "tf32": 398.1, "fp32": 51.29}  # measured: cuBLAS 8192^3


@dataclass(frozen=True)
class Gpu:
    name: str
    slug: str
    sms: int
    clock_ghz: float  # sustained under load
    dram_gbps: float  # achievable, read + write
    dram_peak_gbps: float
    l2_bytes: int
    l2_gbps: float  # L2 -> SM, whole chip
    peak_tflops: dict  # vendor GEMM (cuBLAS, wgmma) per precision
    regs_per_sm: int = 65536
    smem_per_sm: int = 228 * 1024
    smem_reserved_per_block: int = 1024
    max_threads_per_sm: int = 2048
    max_blocks_per_sm: int = 32
    schedulers: int = 4  # warp instructions issued per clock per SM, at most
    smem_bytes_per_clk: int = 128
    # mma.sync (HMMA.16816, bf16/f16) on Hopper: about 2 clocks per SM per instruction, half the
    # wgmma rate (the review of d93db6f: ~1.9); TF32 m16n8k8 moves half the work per instruction
    hmma_clk: float = 1.9
    l1_latency_ns: float = 20.0
    l2_latency_ns: float = 150.0


H100 = Gpu(
    name="NVIDIA H100 SXM (80GB HBM3)",
    slug="h100-sxm",
    sms=132,
    clock_ghz=1.755,
    dram_gbps=H100_COPY_GBPS,
    dram_peak_gbps=3350.0,
    l2_bytes=50 << 20,
    l2_gbps=5500.0,
    peak_tflops=dict(H100_PEAK_TFLOPS),
)
H200 = replace(
    H100,
    name="NVIDIA H200 SXM (141GB HBM3e)",
    slug="h200-sxm",
    dram_gbps=H100_COPY_GBPS * 4800.0 / 3350.0,
    dram_peak_gbps=4800.0,
)
GPUS = {g.slug: g for g in (H100, H200)}

# The measured run's device name -> the model's GPU
MEASURED_DEVICES = {"NVIDIA H100 80GB HBM3": H100}
