// The one definition of CPG's mask format and active-set rule (docs/design.md section 2).
//
// A masked layer is viewed as a matrix [N, K]. Packed masks are int32 words,
// least significant bit first, ceil(K/32) words per row; bit j of word w of row
// n is element (n, 32*w + j); padding bits past K are zero. Owners are uint8:
// 0 = free, t in 1..255 = trained by task t.
//
// Everything here is header-only and host/device clean: the CPU path, the CUDA
// kernels and the emulator build all decode through these functions.
#pragma once

#include <cstdint>

#include "core/hd.h"

namespace cpg {

constexpr int kBitsPerWord = 32;
constexpr int kMaxTask = 255;  // owner is uint8: task 256 is an error

CPG_HD int64_t words_per_row(int64_t K) { return (K + kBitsPerWord - 1) / kBitsPerWord; }

// Word index and bit position of column k inside a packed row.
CPG_HD int64_t word_of(int64_t k) { return k >> 5; }
CPG_HD uint32_t bit_of(int64_t k) { return 1u << (k & 31); }

// Bits of the last word of a row that correspond to real columns.
CPG_HD uint32_t tail_mask(int64_t K) {
  const int r = static_cast<int>(K & 31);
  return r ? ((1u << r) - 1u) : 0xFFFFFFFFu;
}

CPG_HD bool test_bit(const int32_t* row, int64_t k) {
  return (static_cast<uint32_t>(row[word_of(k)]) & bit_of(k)) != 0u;
}

// The bits of columns k, k+1, ... of a packed row, column k in bit 0: the
// lane mask of a vector of consecutive columns starting at k. Holds
// 32 - (k & 31) columns; vectors start at multiples of their width, so a
// vector of up to 32 columns never straddles two words.
CPG_HD uint32_t bits_from(const int32_t* row, int64_t k) {
  return static_cast<uint32_t>(row[word_of(k)]) >> (k & 31);
}

// Picking by a real-valued mask: m > threshold is picked (Piggyback). Every
// op takes the threshold as an argument; its default is cpg_kernels.masks.
// DEFAULT_THRESHOLD.
CPG_HD bool picked_by_mask(float m, float threshold) { return m > threshold; }

// Active set of `task`: its own weights, plus older tasks' weights it picks.
CPG_HD bool is_active(uint8_t owner, int task, bool picked) {
  return owner == task || (owner != 0 && owner < task && picked);
}

// Weights whose gradient reaches the task's own parameters (straight-through
// for the mask: every older task's weight gets a mask gradient, picked or not).
CPG_HD bool is_trainable(uint8_t owner, int task) { return owner == task; }
CPG_HD bool is_pickable(uint8_t owner, int task) { return owner != 0 && owner < task; }

}  // namespace cpg
