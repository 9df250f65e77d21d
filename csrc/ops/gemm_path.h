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
//
// The weight gradient of a linear layer's training step has a rule of its
// own: the fused one-pass kernel (csrc/cuda/gemm_weight_grad.cuh: the dW
// GEMM with the gradient rule in its epilogue) or the two-pass path (aten's
// mm into a chunk of G, then grad_epilogue on it, chunk by chunk; never a
// weight-sized G). First match:
//   1. forced by set_gemm_path_override, as above
//   2. batch rows (the dW GEMM's reduction) >= the dtype's threshold -> two-pass
//   3. the fused kernel does not take the shape (exact fp32, rows not
//      in whole 16-byte vectors)                                  -> two-pass
//   4. otherwise                                                   -> fused
// Thresholds (batch rows): kWeightGradLibraryMinRows in gemm_path.cpp, the
// performance model's (predicted, as above) from
// benchmarks/perfmodel/weight_grad_path.py; exact fp32 always two-pass.
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

// Rules 1-2 of the weight-gradient rule (rule 3 is the kernel's own check).
GemmPath weight_grad_path(cpg::DType dtype, bool allow_tf32, int64_t rows);

// The threshold of the weight-gradient rule's rule 2 for a dtype.
int64_t weight_grad_library_min_rows(cpg::DType dtype, bool allow_tf32);

// "auto" (the rule), "fused" or "library"; returns the previous setting.
std::string set_gemm_path_override(const std::string& path);

}  // namespace cpg::ops
