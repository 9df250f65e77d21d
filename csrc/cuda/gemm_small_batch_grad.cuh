// The input gradient at small batch (M <= 16): dx[M, K] = dy[M, N] W'[N, K],
// the transpose of small_batch's forward and, like it, bound by reading W once.
//
// Each lane owns one 16-byte vector of W's columns (4 floats or 8 halves), so
// a warp reads 512 contiguous bytes of every W row it visits. It walks down
// the rows kRowsPerStep at a time (that many 16-byte loads in flight per
// lane), selects the elements by their bits in registers, and accumulates
// dy[m, n] * W'[n, k..] for all M rows of dy at once. dy is tiny: the block
// stages it in shared memory as floats, row n's M values together, so a step
// reads them with broadcast loads.
//
// The reduction over N is split twice when the columns alone cannot fill the
// device:
//  - within a block, `slices` warps share a column tile and take interleaved
//    steps of rows; their sums meet in shared memory and are added in slice
//    order;
//  - across blocks (gridDim.y, `splits`), each block writes fp32 partial sums
//    to a workspace that the launcher allocates on the stream, and
//    sum_splits_kernel adds them in split order and converts them to the
//    output dtype.
// Every sum has a fixed order and there are no atomics, so the results are
// bit-reproducible.
//
// More than 16 dy rows (the conv layers' unfolded path, conv_unfolded.cuh)
// run in groups of 16 on gridDim.z, each streaming W again (from L2 while W
// fits there). That path also reads dy as NCHW pixels (a_plane) and takes
// the fp32 partials themselves (launch_kernel) to fold them into dx.
#pragma once

#include "cuda/gemm_common.cuh"

namespace cpg {
namespace CPG_KERNEL_NS {
namespace small_batch_grad {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kMaxDyRows = 16;
constexpr int kRowsPerStep = 4;     // W rows (16-byte loads per lane) in flight per step
constexpr int kStageFloats = 4096;  // 16 KiB: the dy chunk, then the slices' sums
constexpr int kBlocksPerSm = 4;     // per multiprocessor, the grid's aim
// A split's partials cost 8 * M bytes per column (written, then read back);
// each split streams enough W rows that this stays within 1/16 of its W bytes.
constexpr int kPartialsShare = 16;

// Columns of one W row that a warp covers.
template <typename T>
CPG_HD constexpr int warp_cols() {
  return kWarpSize * vec_elems<T>();
}

// dy rows staged per chunk: the stage holds kStageFloats floats.
template <int kDyRows>
CPG_HD constexpr int stage_rows() {
  return kStageFloats / kDyRows;
}

// dy rows whose slice sums fit the stage at once: each thread's kV floats
// per row.
template <typename T, int kDyRows>
CPG_HD constexpr int reduce_rows() {
  constexpr int kFit = kStageFloats / (kThreads * vec_elems<T>());
  return kFit < kDyRows ? kFit : kDyRows;
}

// How a launch divides the work (choose_shape).
struct Shape {
  int slices;              // warps sharing a column tile: 1, 2, 4 or 8
  int splits;              // blocks splitting N: gridDim.y
  int64_t rows_per_split;  // a multiple of slices * kRowsPerStep
  bool w_aligned;          // every W row starts 16-byte aligned
};

// One step's W rows at a lane's columns, raw, and their bit words.
struct WeightStep {
  uint4 raw[kRowsPerStep];
  uint32_t word[kRowsPerStep];
};

// W rows [n, n + kRowsPerStep) at columns [k, k + kV) (k < K); rows from
// n_end on read as zeros with no bits set.
template <typename T>
CPG_DEVICE void fetch_step(const MaskedGemm<T>& g, int64_t n, int64_t n_end, int64_t k,
                           bool w_aligned, WeightStep& step) {
#pragma unroll
  for (int i = 0; i < kRowsPerStep; ++i) {
    const int64_t row = n + i;
    step.raw[i] = uint4{0u, 0u, 0u, 0u};
    step.word[i] = 0u;
    if (row < n_end) {
      T v[vec_elems<T>()];
      load_row_vec(g.w + row * g.K, k, g.K, w_aligned, v);
      memcpy(&step.raw[i], v, kVecBytes);
      step.word[i] = static_cast<uint32_t>(g.bits[row * g.words + word_of(k)]);
    }
  }
}

// dy rows [m0, m0 + kDyRows) x [n0, n0 + rows) into
// stage[(n - n0) * kDyRows + (m - m0)] as floats, all threads of the block
// together (consecutive threads read consecutive n). Zeros for m >= M and for
// the rows up to the next whole step, so the accumulation runs unguarded.
template <typename T, int kDyRows, typename Smem>
CPG_DEVICE void stage_dy(const MaskedGemm<T>& g, int64_t m0, int64_t n0, int rows, Smem stage) {
  const int padded = static_cast<int>(ceil_div(rows, kRowsPerStep)) * kRowsPerStep;
  for (int i = static_cast<int>(threadIdx.x); i < kDyRows * padded; i += kThreads) {
    const int m = i / padded, r = i % padded;
    const bool inside = m0 + m < g.M && r < rows;
    stage[r * kDyRows + m] =
        inside ? cpgdev::to_float(g.a[planar_offset(m0 + m, n0 + r, g.N, g.a_plane)]) : 0.0f;
  }
}

// The kDyRows staged dy values of one W row.
template <int kDyRows, typename Smem>
CPG_DEVICE void load_dy(Smem p, float (&d)[kDyRows]) {
  if constexpr (kDyRows % vec_elems<float>() == 0) {
    load_vec(p, d);
  } else {
#pragma unroll
    for (int m = 0; m < kDyRows; ++m) d[m] = p[m];
  }
}

// acc[m][j] += dy[m, n] * W'[n, k + j] over the step's rows, in row order.
template <typename T, int kDyRows, typename Smem>
CPG_DEVICE void accumulate_step(const WeightStep& step, int64_t k, Smem dy_rows,
                                float (&acc)[kDyRows][vec_elems<T>()]) {
  constexpr int kV = vec_elems<T>();
#pragma unroll
  for (int i = 0; i < kRowsPerStep; ++i) {
    const uint4 kept = select_by_bits<T>(step.raw[i], step.word[i], k);
    T e[kV];
    memcpy(e, &kept, kVecBytes);
    float w[kV];
#pragma unroll
    for (int j = 0; j < kV; ++j) w[j] = cpgdev::to_float(e[j]);
    float d[kDyRows];
    load_dy(dy_rows + i * kDyRows, d);
#pragma unroll
    for (int m = 0; m < kDyRows; ++m) {
#pragma unroll
      for (int j = 0; j < kV; ++j) acc[m][j] += d[m] * w[j];
    }
  }
}

// Slice 0's threads add the other slices' acc to theirs, in slice order, a
// few dy rows per round through the stage (which is free by now).
template <typename T, int kDyRows, typename Smem>
CPG_DEVICE void add_slices(int group_rows, int slices, int slice, Smem stage,
                           float (&acc)[kDyRows][vec_elems<T>()]) {
  constexpr int kV = vec_elems<T>();
  constexpr int kRound = reduce_rows<T, kDyRows>();
  // Round row r of thread t sits at stage[(r * kThreads + t) * kV ..]; thread
  // t of slice 0 shares its columns with threads t + s * slice_threads.
  const auto own = stage + static_cast<int>(threadIdx.x) * kV;
  const int slice_stride = kThreads / slices * kV;
#pragma unroll
  for (int m0 = 0; m0 < kDyRows; m0 += kRound) {
    if (m0 >= group_rows) break;  // uniform: the rows past M are zeros, never written
    if (slice > 0) {
#pragma unroll
      for (int r = 0; r < kRound; ++r) store_vec(own + r * kThreads * kV, acc[m0 + r]);
    }
    cpgdev::syncthreads();
    if (slice == 0) {
#pragma unroll
      for (int r = 0; r < kRound; ++r) {
        for (int from = 1; from < slices; ++from) {
          float other[kV];
          load_vec(own + r * kThreads * kV + from * slice_stride, other);
#pragma unroll
          for (int j = 0; j < kV; ++j) acc[m0 + r][j] += other[j];
        }
      }
    }
    cpgdev::syncthreads();  // the slots are read before the next round writes them
  }
}

// Grid: (column tiles / (kWarps / slices), splits, groups of kDyRows dy
// rows). Writes dx when `partials` is null (then splits is 1), else this
// split's fp32 partial sums to partials[blockIdx.y][M][K].
template <typename T, int kDyRows>
CPG_GLOBAL void CPG_LAUNCH_BOUNDS(kThreads)
    masked_linear_grad_input_small_batch_kernel(MaskedGemm<T> g, Shape s, float* partials) {
  constexpr int kV = vec_elems<T>();
  constexpr int kStageRows = stage_rows<kDyRows>();
  static_assert(kStageRows % kRowsPerStep == 0, "the stage holds whole steps");
  CPG_SHARED_ARRAY(float, stage, kStageFloats);

  const int lane = cpgdev::lane_id(), warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int col_groups = kWarps / s.slices;
  const int col_group = warp % col_groups, slice = warp / col_groups;
  const int64_t k =
      (static_cast<int64_t>(blockIdx.x) * col_groups + col_group) * warp_cols<T>() + lane * kV;
  const int64_t n_begin = static_cast<int64_t>(blockIdx.y) * s.rows_per_split;
  const int64_t n_end = n_begin + s.rows_per_split < g.N ? n_begin + s.rows_per_split : g.N;
  const int64_t m_first = static_cast<int64_t>(blockIdx.z) * kDyRows;
  const int group_rows = static_cast<int>(g.M - m_first < kDyRows ? g.M - m_first : kDyRows);

  float acc[kDyRows][kV] = {};
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kStageRows) {
    const int rows = static_cast<int>(n_end - n0 < kStageRows ? n_end - n0 : kStageRows);
    cpgdev::syncthreads();  // the previous chunk's dy is no longer read
    stage_dy<T, kDyRows>(g, m_first, n0, rows, stage);
    cpgdev::syncthreads();
    if (k >= g.K) continue;  // a lane past the last column only keeps the barriers
    for (int r = slice * kRowsPerStep; r < rows; r += s.slices * kRowsPerStep) {
      WeightStep step;
      fetch_step(g, n0 + r, n_end, k, s.w_aligned, step);
      accumulate_step<T, kDyRows>(step, k, stage + r * kDyRows, acc);
    }
  }

  if (s.slices > 1) {
    cpgdev::syncthreads();  // the last chunk's dy is no longer read
    add_slices<T, kDyRows>(group_rows, s.slices, slice, stage, acc);
  }
  if (slice != 0 || k >= g.K) return;
  const int count = static_cast<int>(g.K - k < kV ? g.K - k : kV);
#pragma unroll
  for (int m = 0; m < kDyRows; ++m) {
    if (m >= group_rows) break;
    const int64_t row = m_first + m;
    if (partials == nullptr) {
      T out[kV];
#pragma unroll
      for (int j = 0; j < kV; ++j) out[j] = cpgdev::from_float<T>(acc[m][j]);
      store_prefix(g.out + row * g.K + k, count, out);
    } else {
      store_prefix(partials + (blockIdx.y * g.M + row) * g.K + k, count, acc[m]);
    }
  }
}

// out[i] = the splits' partials of element i added in split order, as T.
template <typename T>
CPG_GLOBAL void CPG_LAUNCH_BOUNDS(kThreads)
    sum_splits_kernel(const float* partials, T* out, int64_t count, int splits) {
  for (int64_t i = global_thread_index(); i < count; i += global_thread_count()) {
    float sum = partials[i];
    for (int split = 1; split < splits; ++split) sum += partials[split * count + i];
    out[i] = cpgdev::from_float<T>(sum);
  }
}

// Blocks along K: each holds the column tiles of kWarps / slices warps.
template <typename T>
int64_t col_blocks(int64_t K, int slices) {
  return ceil_div(ceil_div(K, warp_cols<T>()), kWarps / slices);
}

// Groups of dy rows (gridDim.z): up to kMaxDyRows rows each.
inline int64_t row_groups(int64_t M) { return ceil_div(M, kMaxDyRows); }

// The fewest slices that give the grid kBlocksPerSm blocks per multiprocessor
// (of sm_count) along K and the row groups alone; then as many splits of N as still
// needed, within kPartialsShare. A block's warps each get whole steps of
// every split.
template <typename T>
Shape choose_shape(const MaskedGemm<T>& g, int sm_count) {
  Shape s;
  s.w_aligned = is_aligned16(g.w) && (g.K * sizeof(T)) % kVecBytes == 0;
  const int64_t wanted_blocks = kBlocksPerSm * static_cast<int64_t>(sm_count);
  const int64_t groups = row_groups(g.M);
  const int64_t group_rows = g.M < kMaxDyRows ? g.M : kMaxDyRows;
  s.slices = 1;
  while (s.slices < kWarps && col_blocks<T>(g.K, s.slices) * groups < wanted_blocks) {
    s.slices *= 2;
  }
  const int64_t step_rows = static_cast<int64_t>(s.slices) * kRowsPerStep;
  const int64_t min_split_rows =
      group_rows * static_cast<int64_t>(kPartialsShare * 2 * sizeof(float) / sizeof(T));
  const int64_t max_splits = g.N / (min_split_rows > step_rows ? min_split_rows : step_rows);
  int64_t splits = ceil_div(wanted_blocks, col_blocks<T>(g.K, s.slices) * groups);
  if (splits > max_splits) splits = max_splits;
  if (splits < 1) splits = 1;
  s.rows_per_split = ceil_div(ceil_div(g.N, splits), step_rows) * step_rows;
  s.splits = static_cast<int>(g.N > 0 ? ceil_div(g.N, s.rows_per_split) : 1);
  return s;
}

// A launch: the shape, the kernel's kDyRows (the power of two that holds a
// row group), the grid, and the fp32 partials when splits > 1.
struct Plan {
  Shape shape;
  int dy_rows;
  dim3 grid;
  int64_t partials_bytes;  // 0 without splits
};

// Requires g.M >= 1 and g.tasks == 1.
template <typename T>
Plan plan(const MaskedGemm<T>& g, int sm_count) {
  Plan p;
  p.shape = choose_shape(g, sm_count);
  p.dy_rows = g.M == 1 ? 1 : g.M <= 2 ? 2 : g.M <= 4 ? 4 : g.M <= 8 ? 8 : kMaxDyRows;
  p.grid = dim3(static_cast<unsigned>(col_blocks<T>(g.K, p.shape.slices)),
                static_cast<unsigned>(p.shape.splits), static_cast<unsigned>(row_groups(g.M)));
  p.partials_bytes =
      p.shape.splits > 1 ? static_cast<int64_t>(sizeof(float)) * p.shape.splits * g.M * g.K : 0;
  return p;
}

// Runs the kernel of p (plan(g, ...)). partials null: writes dx (p.shape.splits
// must be 1); else leaves dx's fp32 partial sums in partials[splits][M][K],
// for a caller that adds them up itself.
template <typename T>
void launch_kernel(const MaskedGemm<T>& g, const Plan& p, float* partials,
                   cpgdev::stream_t stream) {
  const Shape& s = p.shape;
  auto run = [&](auto kernel) { CPG_LAUNCH(kernel, p.grid, kThreads, 0, stream, g, s, partials); };
  switch (p.dy_rows) {
    case 1: return run(&masked_linear_grad_input_small_batch_kernel<T, 1>);
    case 2: return run(&masked_linear_grad_input_small_batch_kernel<T, 2>);
    case 4: return run(&masked_linear_grad_input_small_batch_kernel<T, 4>);
    case 8: return run(&masked_linear_grad_input_small_batch_kernel<T, 8>);
    default: return run(&masked_linear_grad_input_small_batch_kernel<T, kMaxDyRows>);
  }
}

// The kernel's launch (launch_kernel) on sm_count multiprocessors, appended to
// `out`; its workspace is the partials when there are splits.
template <typename T>
void describe_kernel(const MaskedGemm<T>& g, const Plan& p, LaunchPlan& out) {
  out.push_back(planned_launch("small_batch_grad::masked_linear_grad_input_small_batch_kernel<" +
                                   type_name<T>() + ", " + std::to_string(p.dy_rows) + ">",
                               p.grid, kThreads, 0,
                               {{"M", g.M},
                                {"N", g.N},
                                {"K", g.K},
                                {"dy_rows", p.dy_rows},
                                {"slices", p.shape.slices},
                                {"splits", p.shape.splits},
                                {"rows_per_split", p.shape.rows_per_split},
                                {"rows_per_step", kRowsPerStep},
                                {"warp_cols", warp_cols<T>()}},
                               p.partials_bytes));
}

// dx = dy W' into g.out. Requires g.M >= 1 and g.tasks == 1; the dy rows are
// rounded up to a power of two (or to groups of kMaxDyRows); the extra rows
// are zeros.
template <typename T>
void launch(const MaskedGemm<T>& g, cpgdev::stream_t stream) {
  const Plan p = plan(g, cpgdev::sm_count());
  if (p.shape.splits == 1) return launch_kernel(g, p, nullptr, stream);
  const int64_t count = g.M * g.K;
  DeviceWorkspace partials(static_cast<size_t>(p.partials_bytes), stream);
  launch_kernel(g, p, partials.as<float>(), stream);
  auto* sum_kernel = &sum_splits_kernel<T>;
  CPG_LAUNCH(sum_kernel, grid_stride_blocks(count, kThreads), kThreads, 0, stream,
             partials.as<float>(), g.out, count, p.shape.splits);
  partials.release();
}

// The launches launch(g, ...) makes on sm_count multiprocessors, appended to
// `out`.
template <typename T>
void describe(const MaskedGemm<T>& g, int sm_count, LaunchPlan& out) {
  const Plan p = plan(g, sm_count);
  describe_kernel(g, p, out);
  if (p.shape.splits == 1) return;
  const int64_t count = g.M * g.K;
  out.push_back(planned_launch("small_batch_grad::sum_splits_kernel<" + type_name<T>() + ">",
                               dim3(grid_stride_blocks(count, kThreads, sm_count)), kThreads, 0,
                               {{"elements", count}, {"splits", p.shape.splits}}));
}

}  // namespace small_batch_grad
}  // namespace CPG_KERNEL_NS
}  // namespace cpg
