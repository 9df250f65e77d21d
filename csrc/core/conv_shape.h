// Convolution index math shared by every backend.
#pragma once

#include <cstdint>

#include "core/hd.h"

namespace cpg {

CPG_HD int64_t conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil) {
  return (in + 2 * pad - dil * (k - 1) - 1) / stride + 1;
}

}  // namespace cpg
