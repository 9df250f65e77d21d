#include "ops/gemm_path.h"

#include <c10/util/Exception.h>

#include <atomic>

namespace cpg::ops {

namespace {

enum class Override { Auto, Fused, Library };
std::atomic<Override> g_override{Override::Auto};

constexpr int64_t kLibraryMinRowsTensorCore = 4096;  // fp16, bf16, fp32 as TF32
constexpr int64_t kLibraryMinRowsExactF32 = 128;

// Predicted, H100 SXM: benchmarks/perfmodel/weight_grad_path.py (its output:
// benchmarks/results/2026-12-02-predicted/weight-grad-path.md).
constexpr int64_t kWeightGradLibraryMinRows = 256;  // fp16, bf16, fp32 as TF32

const char* name_of(Override o) {
  switch (o) {
    case Override::Fused: return "fused";
    case Override::Library: return "library";
    default: return "auto";
  }
}

}  // namespace

int64_t library_min_rows(cpg::DType dtype, bool allow_tf32) {
  return dtype == cpg::DType::F32 && !allow_tf32 ? kLibraryMinRowsExactF32
                                                 : kLibraryMinRowsTensorCore;
}

GemmPath gemm_path(cpg::DType dtype, bool allow_tf32, int64_t rows) {
  switch (g_override.load()) {
    case Override::Fused: return GemmPath::Fused;
    case Override::Library: return GemmPath::Library;
    default: break;
  }
  return rows >= library_min_rows(dtype, allow_tf32) ? GemmPath::Library : GemmPath::Fused;
}

int64_t weight_grad_library_min_rows(cpg::DType dtype, bool allow_tf32) {
  return dtype == cpg::DType::F32 && !allow_tf32 ? 0 : kWeightGradLibraryMinRows;
}

GemmPath weight_grad_path(cpg::DType dtype, bool allow_tf32, int64_t rows) {
  switch (g_override.load()) {
    case Override::Fused: return GemmPath::Fused;
    case Override::Library: return GemmPath::Library;
    default: break;
  }
  return rows >= weight_grad_library_min_rows(dtype, allow_tf32) ? GemmPath::Library
                                                                 : GemmPath::Fused;
}

std::string set_gemm_path_override(const std::string& path) {
  Override next;
  if (path == "auto") {
    next = Override::Auto;
  } else if (path == "fused") {
    next = Override::Fused;
  } else if (path == "library") {
    next = Override::Library;
  } else {
    TORCH_CHECK_VALUE(false, "gemm path: expected \"auto\", \"fused\" or \"library\", got \"", path,
                      "\"");
  }
  return name_of(g_override.exchange(next));
}

}  // namespace cpg::ops
