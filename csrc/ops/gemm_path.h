// Which path a masked layer's GEMM takes on a kernel backend (CUDA, or the
// emulator): the fused kernels of csrc/cuda, or the library path, which
// decodes the masked weight into a bounded tile (at most
// decode_chunk_elements() entries, 1M by default: 2-4 MB, well inside L2;
// never saved for backward) with the apply_bits kernel and hands the tile to
// cuBLAS / cuDNN, one tile of output channels at a time.
//
// Where the fused kernels save little traffic (many rows per weight element:
// large batches, early convs) the bar is the vendor library itself, and the
// fused tiles (mma.sync, ~36-44% of bf16 peak, docs/wgmma-decision.md) fall
// short of it; there the decode costs one element-wise pass over the weight,
// small against the GEMM. The rule, first match:
//   1. forced by set_gemm_path_override ("fused" / "library"; tests)
//   2. GEMM rows (x rows for linear, batch * Ho * Wo for conv; per task
//      for the multi-task ops, which always stay fused) >= the dtype's
//      threshold                                                 -> library
//   3. otherwise                                                 -> fused
// Thresholds (GEMM rows): 4096 for fp16 / bf16 and for fp32 with TF32,
// 128 for exact fp32. They are the performance model's (predicted, H100 SXM,
// calibrated on the 2026-11-27 H100 report) until a GPU report replaces
// them: benchmarks/perfmodel/library_path.py predicts every inference case
// of the benchmark grid both ways and picks, for each dtype class, the row
// threshold with the least predicted loss against the per-case better path
// (its output: benchmarks/results/2026-12-01-predicted/library-path.md).
// The rule reads only the shape and dtype, so a call gives the same bits
// every time: the decode is exact, the tiles depend on the shape alone,
// cuBLAS is bit-reproducible for a given toolkit, architecture and SM count
// on one stream (torch gives each stream its own cuBLAS workspace), and the
// convolutions are called with cuDNN's benchmark mode off and deterministic
// algorithms on, whatever torch.backends.cudnn says.
#pragma once

#include <cstdint>
#include <string>

#include "core/dtype.h"

namespace cpg::ops {

enum class GemmPath { Fused, Library };

// The rule above for a problem of `rows` GEMM rows (override included).
GemmPath gemm_path(cpg::DType dtype, bool allow_tf32, int64_t rows);

// The threshold of rule 2 for a dtype.
int64_t library_min_rows(cpg::DType dtype, bool allow_tf32);

// "auto" (the rule), "fused" or "library"; returns the previous setting.
std::string set_gemm_path_override(const std::string& path);

}  // namespace cpg::ops
