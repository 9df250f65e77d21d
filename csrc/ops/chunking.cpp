#include "ops/chunking.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>

namespace cpg::ops {

namespace {
// 1M entries: 4 MB of fp32, big enough that the library call dominates.
std::atomic<int64_t> g_chunk_elements{int64_t{1} << 20};
}  // namespace

int64_t decode_chunk_elements() { return g_chunk_elements; }

int64_t set_decode_chunk_elements(int64_t n) {
  TORCH_CHECK_VALUE(n >= 1, "decode chunk size: expected a positive number of elements, got ", n);
  return g_chunk_elements.exchange(n);
}

int64_t chunk_rows(int64_t K) {
  return std::max<int64_t>(1, decode_chunk_elements() / std::max<int64_t>(K, 1));
}

}  // namespace cpg::ops
