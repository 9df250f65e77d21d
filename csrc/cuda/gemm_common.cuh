// What the masked-GEMM kernels share: the problem description and the decode
// of weight elements through their packed mask bits.
#pragma once

#include <cstdint>
#include <cstring>

#include "core/mask_format.h"
#include "cuda/kernel_utils.cuh"

namespace cpg {
namespace CPG_KERNEL_NS {

// One masked GEMM against W' = W masked by `bits` (W is [N, K], bits [N, words]):
//   forward:    out[M, N] = a[M, K] W'^T (+ bias[N])
//   grad_input: out[M, K] = a[M, N] W'
// batched over `tasks` problems that share W (and bias) but not a, bits, out:
// task t's operands start at a + t * a_task_stride, and so on.
template <typename T>
struct MaskedGemm {
  const T* a;
  const T* w;
  const int32_t* bits;
  const T* bias;  // forward only; may be null
  T* out;
  int64_t M, N, K, words;
  int64_t tasks;
  int64_t a_task_stride, bits_task_stride, out_task_stride;
};

template <typename T>
MaskedGemm<T> make_gemm(const void* a, const void* w, const int32_t* bits, const void* bias,
                        void* out, int64_t tasks, int64_t M, int64_t N, int64_t K,
                        bool grad_input) {
  MaskedGemm<T> g;
  g.a = static_cast<const T*>(a);
  g.w = static_cast<const T*>(w);
  g.bits = bits;
  g.bias = static_cast<const T*>(bias);
  g.out = static_cast<T*>(out);
  g.M = M;
  g.N = N;
  g.K = K;
  g.words = words_per_row(K);
  g.tasks = tasks;
  g.a_task_stride = M * (grad_input ? N : K);
  g.bits_task_stride = N * g.words;
  g.out_task_stride = M * (grad_input ? K : N);
  return g;
}

// Offsets a, bits and out to task `task`'s problem.
template <typename T>
CPG_DEVICE MaskedGemm<T> for_task(MaskedGemm<T> g, int64_t task) {
  g.a += task * g.a_task_stride;
  g.bits += task * g.bits_task_stride;
  g.out += task * g.out_task_stride;
  return g;
}

// W'[n, k] as float (n < N, k < K).
template <typename T>
CPG_DEVICE float masked_weight(const MaskedGemm<T>& g, int64_t n, int64_t k) {
  return test_bit(g.bits + n * g.words, k) ? cpgdev::to_float(g.w[n * g.K + k]) : 0.0f;
}

// row[k .. k + 16 / sizeof(T)) with zeros past K: one 16-byte load when the
// vector is whole and `row_aligned` (the row starts 16-byte aligned).
template <typename T>
CPG_DEVICE void load_row_vec(const T* row, int64_t k, int64_t K, bool row_aligned,
                             T (&v)[vec_elems<T>()]) {
  constexpr int kV = vec_elems<T>();
  if (row_aligned && k + kV <= K) {
    load_vec(row + k, v);
    return;
  }
#pragma unroll
  for (int j = 0; j < kV; ++j) v[j] = k + j < K ? row[k + j] : cpgdev::from_float<T>(0.0f);
}

// All-ones over each element of a 32-bit lane whose bit is set; the lane's
// bits (one per element, LSB first) are the low bits of `bits`.
template <int kElemBytes>
CPG_DEVICE uint32_t keep_mask(uint32_t bits) {
  if constexpr (kElemBytes == 4) {
    return 0u - (bits & 1u);
  } else {
    // Two bits b0 b1 -> b0 at bit 0 and b1 at bit 16; times 0xFFFF fills each half.
    return ((bits & 3u) * 0x8001u & 0x10001u) * 0xFFFFu;
  }
}

// The 16 bytes of W at columns [k, k + 16 / sizeof(T)) of a row whose bit
// word for k is `word`, with every element whose bit is clear set to all-zero
// bits (+0 in any float format). Raw bits in, raw bits out: no rounding, and
// a NaN behind a clear bit is gone.
template <typename T>
CPG_DEVICE uint4 select_by_bits(uint4 raw, uint32_t word, int64_t k) {
  constexpr int kBytes = static_cast<int>(sizeof(T));
  constexpr int kPerLane = 4 / kBytes;
  // The vector's bits, LSB first as bit_of() numbers them.
  const uint32_t bits = word >> (static_cast<uint32_t>(k) % kBitsPerWord);
  raw.x &= keep_mask<kBytes>(bits);
  raw.y &= keep_mask<kBytes>(bits >> kPerLane);
  raw.z &= keep_mask<kBytes>(bits >> (2 * kPerLane));
  raw.w &= keep_mask<kBytes>(bits >> (3 * kPerLane));
  return raw;
}

}  // namespace CPG_KERNEL_NS
}  // namespace cpg
