// The general masked GEMM on CUDA cores: any dtype, shape and alignment, fp32
// FMA throughout (the exact-fp32 path, and the fallback of every other one).
//
// A block computes a 128 x 128 output tile with 256 threads, each owning an
// 8 x 8 register tile. The reduction advances 8 at a time through two shared
// slices: while one is multiplied, the next is fetched into registers (its
// weights decoded there) and then stored into the other, so a step needs one
// barrier. Tasks of a batched problem run on gridDim.z.
#pragma once

#include "cuda/gemm_common.cuh"

namespace cpg {
namespace CPG_KERNEL_NS {
namespace simt {

constexpr int kThreads = 256;
constexpr int kTile = 128;  // output tile edge
constexpr int kTileK = 8;   // reduction steps per slice
constexpr int kAxisThreads = 16;
constexpr int kStrip = 4;
constexpr int kThreadTile = 2 * kStrip;  // per axis: two strips, kTile / 2 apart
constexpr int kLoads = kTile * kTileK / kThreads;  // elements per thread per operand slice
// Slices are stored reduction-major, [kTileK][kStride] floats, so a thread
// reads a 4-wide strip of one step with one 16-byte load. The pad of 4 makes
// the transposed stores of row-major tiles conflict-free: a warp stores 4
// tile rows x 8 steps, which fall on 4 * step + row, 32 distinct banks.
constexpr int kStride = kTile + 4;
constexpr int kSliceFloats = kTileK * kStride;

static_assert(kAxisThreads * kAxisThreads == kThreads, "one thread per 8 x 8 sub-tile");
static_assert(kAxisThreads * kThreadTile == kTile, "thread tiles cover the tile");

// Tile offset of element i (0..7) of the thread at position t (0..15) of an
// axis: the two strips of a half-tile's 16 threads are contiguous, so their
// 16-byte reads are conflict-free.
CPG_DEVICE int strip_offset(int t, int i) {
  return (i / kStrip) * (kTile / 2) + t * kStrip + i % kStrip;
}

// The operands of one reduction slice, staged in registers.
struct SliceRegs {
  float a[kLoads];
  float w[kLoads];
};

// a[m0 .. m0+128, r0 .. r0+8) of the row-major [M, R] operand; element e of
// the slice is (e / 8, e % 8), so 8 consecutive threads read one row segment.
template <typename T>
CPG_DEVICE void fetch_a(const MaskedGemm<T>& g, int64_t R, int64_t m0, int64_t r0,
                        float (&v)[kLoads]) {
#pragma unroll
  for (int l = 0; l < kLoads; ++l) {
    const int e = static_cast<int>(threadIdx.x) + l * kThreads;
    const int64_t m = m0 + e / kTileK, r = r0 + e % kTileK;
    v[l] = (m < g.M && r < R) ? cpgdev::to_float(g.a[m * R + r]) : 0.0f;
  }
}

// Forward: W'[n0 .. n0+128, k0 .. k0+8), laid out like a's slice.
template <typename T>
CPG_DEVICE void fetch_w_rows(const MaskedGemm<T>& g, int64_t n0, int64_t k0, float (&v)[kLoads]) {
#pragma unroll
  for (int l = 0; l < kLoads; ++l) {
    const int e = static_cast<int>(threadIdx.x) + l * kThreads;
    const int64_t n = n0 + e / kTileK, k = k0 + e % kTileK;
    v[l] = (n < g.N && k < g.K) ? masked_weight(g, n, k) : 0.0f;
  }
}

// grad_input: W'[r0 .. r0+8, c0 .. c0+128) (reduction over N); element e is
// (e / 128, e % 128), so a warp reads 32 consecutive columns of one row.
template <typename T>
CPG_DEVICE void fetch_w_cols(const MaskedGemm<T>& g, int64_t r0, int64_t c0, float (&v)[kLoads]) {
#pragma unroll
  for (int l = 0; l < kLoads; ++l) {
    const int e = static_cast<int>(threadIdx.x) + l * kThreads;
    const int64_t n = r0 + e / kTile, k = c0 + e % kTile;
    v[l] = (n < g.N && k < g.K) ? masked_weight(g, n, k) : 0.0f;
  }
}

template <typename T, bool kGradInput>
CPG_DEVICE void fetch_slice(const MaskedGemm<T>& g, int64_t m0, int64_t c0, int64_t r0,
                            SliceRegs& regs) {
  fetch_a(g, kGradInput ? g.N : g.K, m0, r0, regs.a);
  if (kGradInput) {
    fetch_w_cols(g, r0, c0, regs.w);
  } else {
    fetch_w_rows(g, c0, r0, regs.w);
  }
}

// Row-major fetches (e / 8, e % 8) go to slice[e % 8][e / 8].
template <typename Smem>
CPG_DEVICE void store_transposed(Smem slice, const float (&v)[kLoads]) {
#pragma unroll
  for (int l = 0; l < kLoads; ++l) {
    const int e = static_cast<int>(threadIdx.x) + l * kThreads;
    slice[(e % kTileK) * kStride + e / kTileK] = v[l];
  }
}

// Column fetches (e / 128, e % 128) are already reduction-major.
template <typename Smem>
CPG_DEVICE void store_direct(Smem slice, const float (&v)[kLoads]) {
#pragma unroll
  for (int l = 0; l < kLoads; ++l) {
    const int e = static_cast<int>(threadIdx.x) + l * kThreads;
    slice[(e / kTile) * kStride + e % kTile] = v[l];
  }
}

template <bool kGradInput, typename Smem>
CPG_DEVICE void store_slice(Smem a_slice, Smem w_slice, const SliceRegs& regs) {
  store_transposed(a_slice, regs.a);
  if (kGradInput) {
    store_direct(w_slice, regs.w);
  } else {
    store_transposed(w_slice, regs.w);
  }
}

// The 8 values of one step that a thread at axis position t multiplies.
template <typename Smem>
CPG_DEVICE void load_strips(Smem step, int t, float (&v)[kThreadTile]) {
  const uint4 lo = cpgdev::load16(step + t * kStrip);
  const uint4 hi = cpgdev::load16(step + kTile / 2 + t * kStrip);
  memcpy(&v[0], &lo, kVecBytes);
  memcpy(&v[kStrip], &hi, kVecBytes);
}

template <typename Smem>
CPG_DEVICE void multiply_slice(Smem a_slice, Smem w_slice, int ty, int tx,
                               float (&acc)[kThreadTile][kThreadTile]) {
#pragma unroll
  for (int s = 0; s < kTileK; ++s) {
    float a[kThreadTile], w[kThreadTile];
    load_strips(a_slice + s * kStride, ty, a);
    load_strips(w_slice + s * kStride, tx, w);
#pragma unroll
    for (int i = 0; i < kThreadTile; ++i) {
#pragma unroll
      for (int j = 0; j < kThreadTile; ++j) acc[i][j] += a[i] * w[j];
    }
  }
}

template <typename T, bool kGradInput>
CPG_DEVICE void write_tile(const MaskedGemm<T>& g, int64_t m0, int64_t c0, int ty, int tx,
                           const float (&acc)[kThreadTile][kThreadTile]) {
  const int64_t cols = kGradInput ? g.K : g.N;
  const bool add_bias = !kGradInput && g.bias != nullptr;
#pragma unroll
  for (int i = 0; i < kThreadTile; ++i) {
    const int64_t m = m0 + strip_offset(ty, i);
    if (m >= g.M) continue;
#pragma unroll
    for (int j = 0; j < kThreadTile; ++j) {
      const int64_t c = c0 + strip_offset(tx, j);
      if (c >= cols) continue;
      const float bias = add_bias ? cpgdev::to_float(g.bias[c]) : 0.0f;
      g.out[m * cols + c] = cpgdev::from_float<T>(acc[i][j] + bias);
    }
  }
}

// Grid: (ceil(M / 128), ceil(out columns / 128), tasks).
template <typename T, bool kGradInput>
CPG_GLOBAL void CPG_LAUNCH_BOUNDS(kThreads) masked_gemm_simt_kernel(MaskedGemm<T> problem) {
  CPG_SHARED_ARRAY(float, a_slices, 2 * kSliceFloats);
  CPG_SHARED_ARRAY(float, w_slices, 2 * kSliceFloats);
  const MaskedGemm<T> g = for_task(problem, blockIdx.z);
  const int64_t reduction = kGradInput ? g.N : g.K;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int tx = static_cast<int>(threadIdx.x) % kAxisThreads;
  const int ty = static_cast<int>(threadIdx.x) / kAxisThreads;

  SliceRegs regs;
  fetch_slice<T, kGradInput>(g, m0, c0, 0, regs);
  store_slice<kGradInput>(a_slices, w_slices, regs);
  cpgdev::syncthreads();

  float acc[kThreadTile][kThreadTile] = {};
  const int64_t slices = ceil_div(reduction, kTileK);
  for (int64_t s = 0; s < slices; ++s) {
    const int cur = static_cast<int>(s & 1) * kSliceFloats;
    const int next = kSliceFloats - cur;
    const bool more = s + 1 < slices;
    if (more) fetch_slice<T, kGradInput>(g, m0, c0, (s + 1) * kTileK, regs);
    multiply_slice(a_slices + cur, w_slices + cur, ty, tx, acc);
    // The other buffer was last read before the previous barrier.
    if (more) store_slice<kGradInput>(a_slices + next, w_slices + next, regs);
    cpgdev::syncthreads();
  }
  write_tile<T, kGradInput>(g, m0, c0, ty, tx, acc);
}

template <typename T, bool kGradInput>
void launch(const MaskedGemm<T>& g, cpgdev::stream_t stream) {
  const int64_t cols = kGradInput ? g.K : g.N;
  const dim3 grid(static_cast<unsigned>(ceil_div(g.M, kTile)),
                  static_cast<unsigned>(ceil_div(cols, kTile)), static_cast<unsigned>(g.tasks));
  auto* kernel = &masked_gemm_simt_kernel<T, kGradInput>;
  CPG_LAUNCH(kernel, grid, kThreads, 0, stream, g);
}

}  // namespace simt
}  // namespace CPG_KERNEL_NS
}  // namespace cpg
