// The CPU path's hot loops on raw pointers, built once per instruction set.
//
// kernels_impl.h holds one source of every loop, written against a small
// vector policy (simd_*.h); kernels_{scalar,avx2,avx512}.cpp compile it for
// baseline x86-64 (or whatever the compiler targets), for AVX2 + FMA, and for
// AVX-512 (VL/BW mask registers), each in its own namespace. isa.cpp picks one
// table at run time, as ATen picks its own kernels (at::get_cpu_capability(),
// so ATEN_CPU_CAPABILITY=default forces the baseline). No torch headers here:
// the ISA units must not instantiate torch's inline code under a wider target.
//
// Every function works on a range that the caller (the CPU paths of
// ops/mask_ops.cpp and ops/linear_ops.cpp) chooses; threading lives there,
// with at::parallel_for.
// Tensors are contiguous; the mask format is core/mask_format.h's.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace cpg::cpu {

// y[r, n] = sum_k x[r, k] * (w[n, k] if bit (n, k) of the row's task else 0)
// (+ bias[n]) for the rows r of every task; the rows are `tasks` groups of
// rows / tasks, group g decoded with bits + g * N * words.
struct SmallBatchLinear {
  DType dtype;          // of w, bias and y
  const float* x;       // [rows, K], fp32 (the glue converts 16-bit inputs)
  const void* w;        // [N, K]
  const int32_t* bits;  // [tasks, N, words]
  const void* bias;     // [N] or null
  void* y;              // [rows, N]
  int64_t rows, tasks, N, K;
};

// dx[m, k] = sum_n dy[m, n] * (w[n, k] if bit (n, k) else 0), summed in
// order of n into the fp32 accumulator `acc` [M, K] (dx itself for fp32),
// then, where dx is 16-bit, rounded into dx.
struct SmallBatchGradInput {
  DType dtype;          // of w and dx
  const float* dy;      // [M, N], fp32
  const void* w;        // [N, K]
  const int32_t* bits;  // [N, words]
  float* acc;           // [M, K] fp32 accumulator
  void* dx;             // [M, K]; == acc for fp32
  int64_t M, N, K;
};

struct Kernels {
  const char* name;
  // out[r] = w[r] where the bit is set, else 0: an exact bit select on
  // elements of 2, 4 or 8 bytes, rows of K starting at w, bits and out.
  void (*decode_rows)(int elem_bytes, const void* w, const int32_t* bits, void* out, int64_t rows,
                      int64_t K);
  // The same from fp16/bf16 rows into fp32 (exact widening).
  void (*decode_rows_float)(DType dtype, const void* w, const int32_t* bits, float* out,
                            int64_t rows, int64_t K);
  void (*pack_rows)(const bool* mask, int32_t* bits, int64_t rows, int64_t K);
  void (*unpack_rows)(const int32_t* bits, bool* mask, int64_t rows, int64_t K);
  // Active set of `task` (picked by pick_bits, or by mask > threshold, or
  // all older weights when both are null).
  void (*active_rows)(const uint8_t* owner, int task, const int32_t* pick_bits, const float* mask,
                      float threshold, int32_t* bits, int64_t rows, int64_t K);
  void (*count_rows)(const int32_t* bits, int64_t* counts, int64_t rows, int64_t words);
  // counts[v] += number of entries equal to v.
  void (*histogram)(const uint8_t* owner, int64_t n, int64_t* counts);
  // grad_w = G * [owner == task]; grad_m = G * W * [0 < owner < task] in fp32
  // (skipped when grad_m is null). n entries, fp32/fp16/bf16.
  void (*grad_epilogue)(DType dtype, const void* G, const void* w, const uint8_t* owner, int task,
                        void* grad_w, float* grad_m, int64_t n);
  // Output columns [n0, n1) of every row.
  void (*small_batch_linear)(const SmallBatchLinear& a, int64_t n0, int64_t n1);
  // Columns [c0, c1) of dx (multiples of 32 except at K), every row.
  void (*small_batch_grad_input)(const SmallBatchGradInput& a, int64_t c0, int64_t c1);
};

// The tables the build holds (null where an instruction set is not built).
const Kernels* scalar_kernels();
const Kernels* avx2_kernels();
const Kernels* avx512_kernels();

}  // namespace cpg::cpu
