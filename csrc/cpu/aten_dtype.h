// The CPU kernels' element type for a torch dtype (nullopt: float64 and the
// rest, which take the element-by-element or ATen paths).
#pragma once

#include <c10/core/ScalarType.h>

#include <optional>

#include "core/dtype.h"

namespace cpg::cpu {

inline std::optional<cpg::DType> kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cpg::DType::F32;
    case at::kHalf: return cpg::DType::F16;
    case at::kBFloat16: return cpg::DType::BF16;
    default: return std::nullopt;
  }
}

}  // namespace cpg::cpu
