// The general masked GEMM on CUDA cores: any dtype, shape and alignment, fp32
// FMA throughout (the exact-fp32 path, and the fallback of every other one).
//
// A block computes a 128 x 128 output tile with 256 threads, each owning an
// 8 x 8 register tile. The reduction advances 8 at a time through two shared
// slices: while one is multiplied, the next is fetched into registers (its
// weights decoded there) and then stored into the other, so a step needs one
// barrier. The problem is seen through a view (gemm_common.cuh), so the same
// kernel runs the linear layer and the implicit-GEMM convolutions; tasks of a
// batched GEMM, or conv groups, run on gridDim.z.
#pragma once

#include <type_traits>

#include "cuda/gemm_common.cuh"
#include "cuda/gemm_split_k.cuh"

namespace cpg {
namespace CPG_KERNEL_NS {
namespace simt {

constexpr int kThreads = 256;
constexpr int kTile = 128;  // output tile edge
constexpr int kTileK = 8;   // reduction steps per slice
constexpr int kAxisThreads = 16;
constexpr int kStrip = 4;
constexpr int kThreadTile = 2 * kStrip;            // per axis: two strips, kTile / 2 apart
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

// The a rows a thread fetches: element e = threadIdx.x + l * kThreads of a
// slice is (e / 8, e % 8), so 8 consecutive threads read one row segment and
// a thread's rows stay the same for the whole reduction.
template <typename View>
struct ARows {
  typename View::ARow row[kLoads];
};

template <typename View>
CPG_DEVICE ARows<View> a_rows(const View& v, int64_t m0) {
  ARows<View> rows;
#pragma unroll
  for (int l = 0; l < kLoads; ++l) {
    const int e = static_cast<int>(threadIdx.x) + l * kThreads;
    rows.row[l] = v.a_row(m0 + e / kTileK);
  }
  return rows;
}

// a[the thread's rows, r0 + threadIdx.x % 8].
template <typename View>
CPG_DEVICE void fetch_a(const View& v, const ARows<View>& rows, int64_t r0, float (&out)[kLoads]) {
  const auto col = v.a_col(r0 + static_cast<int>(threadIdx.x) % kTileK);
#pragma unroll
  for (int l = 0; l < kLoads; ++l) out[l] = v.a(rows.row[l], col);
}

// W' of output columns [c0, c0 + 128) and reductions [r0, r0 + 8). Forward
// slices are fetched like a's (element e is column e / 8, reduction e % 8: a
// linear W row segment per 8 threads); grad_input slices reduction-major
// (element e is reduction e / 128, column e % 128: a warp reads 32
// consecutive columns of one W row).
template <typename View>
CPG_DEVICE void fetch_w(const View& v, int64_t c0, int64_t r0, float (&out)[kLoads]) {
#pragma unroll
  for (int l = 0; l < kLoads; ++l) {
    const int e = static_cast<int>(threadIdx.x) + l * kThreads;
    if constexpr (View::kGradInput) {
      out[l] = v.weight(r0 + e / kTile, c0 + e % kTile);
    } else {
      out[l] = v.weight(r0 + e % kTileK, c0 + e / kTileK);
    }
  }
}

template <typename View>
CPG_DEVICE void fetch_slice(const View& v, const ARows<View>& rows, int64_t c0, int64_t r0,
                            SliceRegs& regs) {
  fetch_a(v, rows, r0, regs.a);
  fetch_w(v, c0, r0, regs.w);
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

template <typename View>
CPG_DEVICE void write_tile(const View& v, int64_t m0, int64_t c0, int ty, int tx,
                           const float (&acc)[kThreadTile][kThreadTile]) {
#pragma unroll
  for (int i = 0; i < kThreadTile; ++i) {
    const int64_t m = m0 + strip_offset(ty, i);
    if (m >= v.rows()) continue;
    const auto row = v.out_row(m);
#pragma unroll
    for (int j = 0; j < kThreadTile; ++j) {
      const int64_t c = c0 + strip_offset(tx, j);
      if (c >= v.cols()) continue;
      v.store(row, v.out_col(c), acc[i][j]);
    }
  }
}

// Grid: (ceil(rows / 128), ceil(cols / 128), sub-problems).
template <typename View>
CPG_GLOBAL void CPG_LAUNCH_BOUNDS(kThreads) masked_gemm_simt_kernel(View problem) {
  CPG_SHARED_ARRAY(float, a_slices, 2 * kSliceFloats);
  CPG_SHARED_ARRAY(float, w_slices, 2 * kSliceFloats);
  View v = problem;
  v.select_z(blockIdx.z);
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * kTile;
  const int tx = static_cast<int>(threadIdx.x) % kAxisThreads;
  const int ty = static_cast<int>(threadIdx.x) / kAxisThreads;
  const ARows<View> rows = a_rows(v, m0);

  SliceRegs regs;
  fetch_slice(v, rows, c0, 0, regs);
  store_slice<View::kGradInput>(a_slices, w_slices, regs);
  cpgdev::syncthreads();

  float acc[kThreadTile][kThreadTile] = {};
  const int64_t slices = ceil_div(v.reduction(), kTileK);
  for (int64_t s = 0; s < slices; ++s) {
    const int cur = static_cast<int>(s & 1) * kSliceFloats;
    const int next = kSliceFloats - cur;
    const bool more = s + 1 < slices;
    if (more) fetch_slice(v, rows, c0, (s + 1) * kTileK, regs);
    multiply_slice(a_slices + cur, w_slices + cur, ty, tx, acc);
    // The other buffer was last read before the previous barrier.
    if (more) store_slice<View::kGradInput>(a_slices + next, w_slices + next, regs);
    cpgdev::syncthreads();
  }
  write_tile(v, m0, c0, ty, tx, acc);
}

// A split's share of the reduction: at least this many slices.
constexpr int64_t kMinSplitSlices = 32;

// A launch's shape: (row tiles, column tiles, subproblems * splits) blocks,
// each over per_split reduction indices (slices of kTileK), and split-K's
// workspace and reduction when splits > 1.
struct Plan {
  unsigned row_tiles, col_tiles;
  int64_t subproblems;
  int64_t slices;
  int64_t per_split;
  split_k::Plan split;
};

// `subproblems` is the grid's z extent (tasks, conv groups). Where the tiles
// are fewer than the multiprocessors, the reduction is split across blocks
// (gemm_split_k.cuh).
template <typename View>
Plan plan_view(const View& v, int64_t subproblems, int sm_count) {
  Plan p;
  p.row_tiles = static_cast<unsigned>(ceil_div(v.rows(), kTile));
  p.col_tiles = static_cast<unsigned>(ceil_div(v.cols(), kTile));
  p.subproblems = subproblems;
  p.slices = ceil_div(v.reduction(), kTileK);
  const int splits = split_k::choose_splits(int64_t{p.row_tiles} * p.col_tiles * subproblems,
                                            p.slices, kMinSplitSlices, subproblems, sm_count);
  p.per_split = ceil_div(p.slices, splits) * kTileK;
  p.split = split_k::plan(v, splits, subproblems, sm_count);
  return p;
}

template <typename View>
void launch_view(const View& v, int64_t subproblems, cpgdev::stream_t stream) {
  const Plan p = plan_view(v, subproblems, cpgdev::sm_count());
  auto run = [&](const auto& view, int64_t z) {
    auto* kernel = &masked_gemm_simt_kernel<std::decay_t<decltype(view)>>;
    CPG_LAUNCH(kernel, dim3(p.row_tiles, p.col_tiles, static_cast<unsigned>(z)), kThreads, 0,
               stream, view);
  };
  if (p.split.splits == 1) return run(v, subproblems);
  split_k::ReductionSplit<View> split_view;
  static_cast<View&>(split_view) = v;
  split_view.per_split = p.per_split;
  split_k::launch(split_view, p.split, subproblems, stream, run);
}

// The launches launch_view(v, subproblems, ...) makes on sm_count
// multiprocessors, appended to `out`.
template <typename View>
void describe_view(const View& v, int64_t subproblems, int sm_count, LaunchPlan& out) {
  const Plan p = plan_view(v, subproblems, sm_count);
  const bool split = p.split.splits > 1;
  const std::string kernel_view =
      split ? type_name<split_k::ReductionSplit<View>>() : type_name<View>();
  out.push_back(planned_launch(
      "simt::masked_gemm_simt_kernel<" + kernel_view + ">",
      dim3(p.row_tiles, p.col_tiles, static_cast<unsigned>(subproblems * p.split.splits)), kThreads,
      0,
      {{"rows", v.rows()},
       {"cols", v.cols()},
       {"reduction", v.reduction()},
       {"tile", kTile},
       {"tile_k", kTileK},
       {"slices", p.slices},
       {"per_split", p.per_split},
       {"splits", p.split.splits}},
      split ? p.split.workspace_bytes : 0));
  if (split) out.push_back(split_k::describe_reduce<View>(p.split));
}

template <typename T, bool kGradInput>
void launch(const MaskedGemm<T>& g, cpgdev::stream_t stream) {
  launch_view(GemmView<T, kGradInput>{g}, g.tasks, stream);
}

template <typename T, bool kGradInput>
void describe(const MaskedGemm<T>& g, int sm_count, LaunchPlan& out) {
  describe_view(GemmView<T, kGradInput>{g}, g.tasks, sm_count, out);
}

}  // namespace simt
}  // namespace CPG_KERNEL_NS
}  // namespace cpg
