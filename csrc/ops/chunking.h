// The chunked path: decode a block of weight rows into a small scratch tile and
// hand it to ATen (cuDNN/cuBLAS/oneDNN). Used by the CPU backend and for the
// dtypes the fused kernels do not take (float64). The tile never exceeds
// decode_chunk_elements() entries, so no weight-sized masked copy exists at
// any time.
#pragma once

#include <cstdint>

namespace cpg::ops {

int64_t decode_chunk_elements();
// Returns the previous value; tests shrink it to exercise multi-tile paths.
int64_t set_decode_chunk_elements(int64_t n);

// Rows per tile for rows of K elements (at least 1).
int64_t chunk_rows(int64_t K);

}  // namespace cpg::ops
