// How the CPU path splits work across threads: ranges of at least kGrainEntries
// weight entries per task, and none at all below that (waking the thread pool
// costs microseconds, more than a small layer's whole op).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace cpg::cpu {

constexpr int64_t kGrainEntries = int64_t{1} << 16;

// fn(begin, end) over [0, count) items of `entries_per_item` entries each.
template <class Fn>
void parallel_over(int64_t count, int64_t entries_per_item, const Fn& fn) {
  if (count <= 0) return;
  const int64_t per = std::max<int64_t>(entries_per_item, 1);
  if (count * per <= kGrainEntries) {
    fn(int64_t{0}, count);
    return;
  }
  at::parallel_for(0, count, std::max<int64_t>(1, kGrainEntries / per), fn);
}

}  // namespace cpg::cpu
