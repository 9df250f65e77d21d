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
//
// a and out are row-major, except that the small-batch kernels also read a
// (grad_input) and write out (forward) whose rows are the pixels of
// channel-planar (NCHW) images of `a_plane` / `out_plane` pixels each: the
// conv layers' unfolded path (conv_unfolded.cuh). A plane of 1 is row-major.
//
// W is stored as WT: T, except in the weight stream's mixed form, which reads
// an fp32 W for 16-bit a and out and rounds it to T in registers (as a cast
// of W to T would; gemm_stream.cuh).
template <typename T, typename WT = T>
struct MaskedGemm {
  const T* a;
  const WT* w;
  const int32_t* bits;
  const T* bias;  // forward only; may be null
  T* out;
  int64_t M, N, K, words;
  int64_t tasks;
  int64_t a_task_stride, bits_task_stride, out_task_stride;
  int64_t a_plane, out_plane;
};

// Element (row m, column c) of a matrix with `cols` columns whose rows are
// the pixels of channel-planar images of `plane` pixels each (plane 1:
// row-major, element m * cols + c).
CPG_HD int64_t planar_offset(int64_t m, int64_t c, int64_t cols, int64_t plane) {
  if (plane == 1) return m * cols + c;
  const int64_t image = m / plane;
  return (image * cols + c) * plane + (m - image * plane);
}

template <typename T, typename WT = T>
MaskedGemm<T, WT> make_gemm(const void* a, const void* w, const int32_t* bits, const void* bias,
                            void* out, int64_t tasks, int64_t M, int64_t N, int64_t K,
                            bool grad_input) {
  MaskedGemm<T, WT> g;
  g.a = static_cast<const T*>(a);
  g.w = static_cast<const WT*>(w);
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
  g.a_plane = 1;
  g.out_plane = 1;
  return g;
}

// Tensor cores take 16-bit operands as they are, and fp32 ones only rounded
// to TF32, which the caller must allow (torch's TF32 switches).
template <typename T>
CPG_HD bool tensor_cores_allowed(bool allow_tf32) {
  return sizeof(T) == 2 || allow_tf32;
}

// Offsets a, bits and out to task `task`'s problem.
template <typename T>
CPG_DEVICE MaskedGemm<T> for_task(MaskedGemm<T> g, int64_t task) {
  g.a += task * g.a_task_stride;
  g.bits += task * g.bits_task_stride;
  g.out += task * g.out_task_stride;
  return g;
}

// W'[n, k] as float for W [N, K] with bits [N, words] (n < N, k < K).
template <typename T>
CPG_DEVICE float masked_weight(const T* w, const int32_t* bits, int64_t K, int64_t words, int64_t n,
                               int64_t k) {
  return test_bit(bits + n * words, k) ? cpgdev::to_float(w[n * K + k]) : 0.0f;
}

template <typename T>
CPG_DEVICE float masked_weight(const MaskedGemm<T>& g, int64_t n, int64_t k) {
  return masked_weight(g.w, g.bits, g.K, g.words, n, k);
}

// ------------------------------------------------------------------- views
//
// The tiled kernels (simt, mma) compute out[rows, cols] = a[rows, reduction]
// W' for a problem they see through a *view*: GemmView below for the linear
// layer, the conv views (conv_views.cuh) for an implicit GEMM that gathers a
// from an image. A view provides:
//   Elem                      the element type
//   kGradInput                W' is read with its rows along the reduction
//                             (grad_input) or along the output columns
//                             (forward); this picks the kernels' tile layouts
//   select_z(z)               narrows the view to blockIdx.z's sub-problem
//   rows() cols() reduction()
//   a_row(m) a_col(r)         handles of a's row m and reduction index r (any
//                             values: outside the problem they read zeros)
//   a(row, col)               a[m, r] as float
//   weight(r, c)              W' at reduction r, output column c, as float
//                             (zero outside)
//   out_row(m) out_col(c)     handles of an output element (m < rows, c < cols)
//   store(row, col, acc)      out[m, c] = acc (+ bias), in Elem
// Handles let a kernel decode a row or column once and reuse it across the
// reduction (an implicit GEMM's rows are image positions, costly to decode).
// The mma kernel needs a view's stage loads as well (gemm_mma.cuh).

// The linear layer's masked GEMM (one task of a MaskedGemm).
template <typename T, bool kGradInputV>
struct GemmView {
  using Elem = T;
  static constexpr bool kGradInput = kGradInputV;
  MaskedGemm<T> g;

  struct ARow {
    int64_t offset;  // of a[m, 0]
    bool valid;
  };
  struct ACol {
    int64_t r;
    bool valid;
  };
  struct OutCol {
    int64_t c;
    float bias;
  };

  CPG_DEVICE void select_z(int64_t z) { g = for_task(g, z); }
  CPG_HD int64_t rows() const { return g.M; }
  CPG_HD int64_t cols() const { return kGradInput ? g.K : g.N; }
  CPG_HD int64_t reduction() const { return kGradInput ? g.N : g.K; }

  CPG_DEVICE ARow a_row(int64_t m) const { return {m * reduction(), m < g.M}; }
  CPG_DEVICE ACol a_col(int64_t r) const { return {r, r < reduction()}; }
  CPG_DEVICE float a(const ARow& row, const ACol& col) const {
    return row.valid && col.valid ? cpgdev::to_float(g.a[row.offset + col.r]) : 0.0f;
  }

  CPG_DEVICE float weight(int64_t r, int64_t c) const {
    const int64_t n = kGradInput ? r : c, k = kGradInput ? c : r;
    return n < g.N && k < g.K ? masked_weight(g, n, k) : 0.0f;
  }

  CPG_DEVICE int64_t out_row(int64_t m) const { return m * cols(); }
  CPG_DEVICE OutCol out_col(int64_t c) const {
    const bool add_bias = !kGradInput && g.bias != nullptr;
    return {c, add_bias ? cpgdev::to_float(g.bias[c]) : 0.0f};
  }
  CPG_DEVICE void store(int64_t row, const OutCol& col, float acc) const {
    g.out[row + col.c] = cpgdev::from_float<T>(acc + col.bias);
  }
};

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
