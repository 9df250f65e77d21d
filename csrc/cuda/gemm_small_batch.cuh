// The forward at small batch (M <= 16, any number of tasks): weight-bandwidth
// bound, so the kernel streams W exactly once per group of up to 16 x rows.
//
// The x rows of a problem are its T * M rows [task][row]; a group is up to 16
// of them (blockIdx.y), and every x row is multiplied by its own task's bits,
// so multitask inference reads W once for many tasks. Several tasks: a group
// is whole tasks (M <= 16). One task with M > 16: the groups are 16 rows
// each, and every group streams W again (from L2 while W fits there); the
// conv layers' unfolded path (conv_unfolded.cuh) uses this up to 64 rows.
//
// A block of 8 warps owns a few W rows. Each warp streams 2 of those rows
// (one x read serves both, and twice the loads are in flight) with four
// 16-byte loads per lane per row, decodes the bits in registers and dots
// against the x chunk that the block stages in shared memory. When N alone
// cannot fill the device, the warps of a row group split the K range
// (`slices`); their partial sums meet in shared memory and are added in a
// fixed order, so results are bit-reproducible (no atomics).
#pragma once

#include "cuda/gemm_common.cuh"

namespace cpg {
namespace CPG_KERNEL_NS {
namespace small_batch {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kRowsPerWarp = 2;
constexpr int kLoadsPerRow = 4;  // 16-byte loads per lane per W row per chunk
constexpr int kMaxXRows = 16;
constexpr int kSmemBudget = 48 * 1024;  // no opt-in attribute needed up to here

// Columns of one W row that a warp covers per chunk.
template <typename T>
CPG_HD constexpr int warp_chunk() {
  return kWarpSize * kLoadsPerRow * vec_elems<T>();
}

// How a launch divides the work (choose_shape).
struct Shape {
  int slices;          // warps splitting one row group's K range: 1, 2, 4 or 8
  int rows_per_block;  // W rows per block: kWarps / slices * kRowsPerWarp
  int group_rows;      // x rows per group (blockIdx.y): whole tasks, or kXRows of one task
  bool w_aligned;      // every W row starts 16-byte aligned
  bool x_aligned;      // every x row likewise
};

// The x rows of this block's group and the task each belongs to: group row r
// is row first_row + r of the problem's T * M rows, which x holds [task][row]
// (a_task_stride = M * K, as make_gemm sets it).
struct GroupRows {
  int64_t first_row;
  int64_t first_task;    // the task of group row 0
  int first_offset;      // and its row within that task
  int rows;              // x rows in the group (<= kXRows)
  int M;                 // rows per task
  uint32_t task_starts;  // bit r set where x row r is a task's first row

  CPG_DEVICE bool starts_task(int r) const { return (task_starts >> r) & 1u; }
  CPG_DEVICE int64_t task_of(int r) const { return first_task + (first_offset + r) / M; }
  CPG_DEVICE int row_in_task(int r) const { return (first_offset + r) % M; }

  template <typename T>
  CPG_DEVICE const T* x_row(const MaskedGemm<T>& g, int r) const {
    return g.a + (first_row + r) * g.K;
  }
};

template <typename T>
struct WeightChunk {
  T v[kRowsPerWarp][kLoadsPerRow][vec_elems<T>()];
};

// First column of load u of this lane: a warp's 32 lanes read 512
// consecutive bytes per load.
template <typename T>
CPG_DEVICE int lane_offset(int u, int lane) {
  return (u * kWarpSize + lane) * vec_elems<T>();
}

template <typename T>
CPG_DEVICE void fetch_weights(const MaskedGemm<T>& g, int64_t n_first, int64_t k_warp, int lane,
                              bool aligned, WeightChunk<T>& chunk) {
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int64_t n = n_first + i < g.N ? n_first + i : g.N - 1;  // rows past N are never used
#pragma unroll
    for (int u = 0; u < kLoadsPerRow; ++u) {
      load_row_vec(g.w + n * g.K, k_warp + lane_offset<T>(u, lane), g.K, aligned, chunk.v[i][u]);
    }
  }
}

// The group's x rows [0, kXRows) x columns [kb, kb + width) into
// stage[r * width + c], all threads of the block together. Zeros past K and
// in the rows past the group's, so the dot products can run over all kXRows
// rows unguarded.
template <typename T, int kXRows, typename Smem>
CPG_DEVICE void stage_x(const MaskedGemm<T>& g, const GroupRows& group, int64_t kb, int width,
                        bool aligned, Smem stage) {
  constexpr int kV = vec_elems<T>();
  const int vecs_per_row = width / kV;
  for (int i = static_cast<int>(threadIdx.x); i < kXRows * vecs_per_row; i += kThreads) {
    const int r = i / vecs_per_row, c = (i % vecs_per_row) * kV;
    T v[kV];
    if (r < group.rows) {
      load_row_vec(group.x_row(g, r), kb + c, g.K, aligned, v);
    } else {
#pragma unroll
      for (int j = 0; j < kV; ++j) v[j] = cpgdev::from_float<T>(0.0f);
    }
    store_vec(stage + r * width + c, v);
  }
}

// This lane's weights of load u under one task's bits, as floats.
template <typename T>
CPG_DEVICE void decode_weights(const MaskedGemm<T>& g, const int32_t* task_bits, int64_t n_first,
                               int64_t k, const WeightChunk<T>& chunk, int u,
                               float (&wm)[kRowsPerWarp][vec_elems<T>()]) {
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int64_t n = n_first + i;
    const uint32_t word = n < g.N ? static_cast<uint32_t>(task_bits[n * g.words + word_of(k)]) : 0u;
#pragma unroll
    for (int j = 0; j < vec_elems<T>(); ++j) {
      wm[i][j] = (word & bit_of(k + j)) != 0u ? cpgdev::to_float(chunk.v[i][u][j]) : 0.0f;
    }
  }
}

// acc[i][r] += wm[i] . x_row (one lane's columns of one load).
template <typename T, int kXRows, typename Smem>
CPG_DEVICE void dot_row(const float (&wm)[kRowsPerWarp][vec_elems<T>()], Smem x_row, int r,
                        float (&acc)[kRowsPerWarp][kXRows]) {
  constexpr int kV = vec_elems<T>();
  T xr[kV];
  load_vec(x_row, xr);
#pragma unroll
  for (int j = 0; j < kV; ++j) {
    const float xv = cpgdev::to_float(xr[j]);
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) acc[i][r] += wm[i][j] * xv;
  }
}

// acc[i][r] += W'[n_first + i, this lane's columns] . x[r, same columns].
// One task: the weights are decoded once per load and the row loop has no
// branch, so the 2 * kXRows accumulation chains interleave. Several tasks:
// the weights are decoded again where x row r starts the next task.
template <typename T, int kXRows, bool kMultiTask, typename Smem>
CPG_DEVICE void accumulate_chunk(const MaskedGemm<T>& g, const GroupRows& group,
                                 const WeightChunk<T>& chunk, Smem x_cols, int stage_width,
                                 int64_t n_first, int64_t k_warp, int lane,
                                 float (&acc)[kRowsPerWarp][kXRows]) {
  constexpr int kV = vec_elems<T>();
#pragma unroll
  for (int u = 0; u < kLoadsPerRow; ++u) {
    const int64_t k = k_warp + lane_offset<T>(u, lane);
    if (k >= g.K) continue;
    const auto x_u = x_cols + lane_offset<T>(u, lane);
    float wm[kRowsPerWarp][kV] = {};
    if constexpr (!kMultiTask) decode_weights(g, g.bits, n_first, k, chunk, u, wm);
#pragma unroll
    for (int r = 0; r < kXRows; ++r) {
      if constexpr (kMultiTask) {
        if (group.starts_task(r)) {
          const int32_t* task_bits = g.bits + group.task_of(r) * g.bits_task_stride;
          decode_weights(g, task_bits, n_first, k, chunk, u, wm);
        }
      }
      dot_row<T>(wm, x_u + r * stage_width, r, acc);
    }
  }
}

// Adds the slices' partial sums of each (W row, x row) in slice order, adds
// the bias once, and writes y; consecutive threads write consecutive n.
template <typename T, int kXRows, typename Smem>
CPG_DEVICE void write_outputs(const MaskedGemm<T>& g, const Shape& s, const GroupRows& group,
                              Smem partials) {
  for (int t = static_cast<int>(threadIdx.x); t < group.rows * s.rows_per_block; t += kThreads) {
    const int r = t / s.rows_per_block, b = t % s.rows_per_block;
    const int64_t n = static_cast<int64_t>(blockIdx.x) * s.rows_per_block + b;
    if (n >= g.N) continue;
    const int row_group = b / kRowsPerWarp, i = b % kRowsPerWarp;
    float sum = 0.0f;
    for (int slice = 0; slice < s.slices; ++slice) {
      const int warp = row_group * s.slices + slice;
      sum += partials[(warp * kRowsPerWarp + i) * kXRows + r];
    }
    if (g.bias != nullptr) sum += cpgdev::to_float(g.bias[n]);
    T* out = g.out + group.task_of(r) * g.out_task_stride;
    out[planar_offset(group.row_in_task(r), n, g.N, g.out_plane)] = cpgdev::from_float<T>(sum);
  }
}

// Grid: (ceil(N / rows_per_block), task groups); dynamic shared memory: the x
// stage, smem_bytes(slices).
template <typename T, int kXRows, bool kMultiTask>
CPG_GLOBAL void CPG_LAUNCH_BOUNDS(kThreads)
    masked_linear_small_batch_kernel(MaskedGemm<T> g, Shape s) {
  CPG_DYNAMIC_SHARED(T, x_stage);  // [kXRows][stage_width]
  CPG_SHARED_ARRAY(float, partials, kWarps * kRowsPerWarp * kXRows);
  const int stage_width = s.slices * warp_chunk<T>();

  GroupRows group;
  group.M = static_cast<int>(g.M);
  group.first_row = static_cast<int64_t>(blockIdx.y) * s.group_rows;
  group.first_task = group.first_row / g.M;
  group.first_offset = static_cast<int>(group.first_row % g.M);
  const int64_t rows_left = g.tasks * g.M - group.first_row;
  group.rows = static_cast<int>(rows_left < s.group_rows ? rows_left : s.group_rows);
  group.task_starts = 0;
  for (int r = 0; r < group.rows; ++r) {
    if (group.row_in_task(r) == 0) group.task_starts |= 1u << r;
  }

  const int lane = cpgdev::lane_id(), warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int slice = warp % s.slices;
  const int64_t n_first =
      static_cast<int64_t>(blockIdx.x) * s.rows_per_block + (warp / s.slices) * kRowsPerWarp;
  const auto x_cols = x_stage + slice * warp_chunk<T>();  // this slice's columns

  float acc[kRowsPerWarp][kXRows] = {};
  for (int64_t kb = 0; kb < g.K; kb += stage_width) {
    const int64_t k_warp = kb + slice * warp_chunk<T>();
    WeightChunk<T> chunk;
    fetch_weights(g, n_first, k_warp, lane, s.w_aligned, chunk);  // in flight across the staging
    cpgdev::syncthreads();  // the previous chunk's x is no longer read
    stage_x<T, kXRows>(g, group, kb, stage_width, s.x_aligned, x_stage);
    cpgdev::syncthreads();
    accumulate_chunk<T, kXRows, kMultiTask>(g, group, chunk, x_cols, stage_width, n_first, k_warp,
                                            lane, acc);
  }

#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
#pragma unroll
    for (int r = 0; r < kXRows; ++r) {
      if (r >= group.rows) continue;  // uniform across the warp: all lanes shuffle
      const float total = warp_sum(acc[i][r]);
      if (lane == 0) partials[(warp * kRowsPerWarp + i) * kXRows + r] = total;
    }
  }
  cpgdev::syncthreads();
  write_outputs<T, kXRows>(g, s, group, partials);
}

// Dynamic shared memory: the x stage of x_rows rows.
template <typename T>
size_t smem_bytes(int x_rows, int slices) {
  return static_cast<size_t>(x_rows) * slices * warp_chunk<T>() * sizeof(T);
}

// Static shared memory: the partial sums.
constexpr size_t static_smem_bytes(int x_rows) {
  return sizeof(float) * kWarps * kRowsPerWarp * x_rows;
}

// The fewest slices that give the grid two blocks per multiprocessor (of
// sm_count), within the K range's chunks and the shared-memory budget.
template <typename T>
Shape choose_shape(const MaskedGemm<T>& g, int x_rows, int group_rows, int sm_count) {
  Shape s;
  s.group_rows = group_rows;
  s.w_aligned = is_aligned16(g.w) && (g.K * sizeof(T)) % kVecBytes == 0;
  s.x_aligned = is_aligned16(g.a) && (g.K * sizeof(T)) % kVecBytes == 0;
  const int64_t groups = ceil_div(g.tasks * g.M, group_rows);
  const int64_t k_chunks = ceil_div(g.K, warp_chunk<T>());
  const int64_t wanted_blocks = 2 * static_cast<int64_t>(sm_count);
  s.slices = 1;
  while (s.slices < kWarps && 2 * s.slices <= k_chunks &&
         smem_bytes<T>(x_rows, 2 * s.slices) + static_smem_bytes(x_rows) <=
             static_cast<size_t>(kSmemBudget) &&
         ceil_div(g.N, kWarps / s.slices * kRowsPerWarp) * groups < wanted_blocks) {
    s.slices *= 2;
  }
  s.rows_per_block = kWarps / s.slices * kRowsPerWarp;
  return s;
}

// A launch: the kernel's kXRows and kMultiTask, its shape and grid.
struct Plan {
  int x_rows;      // kXRows: the x rows of a group, rounded up to 1, 2, 4, 8 or 16
  bool multitask;  // kMultiTask
  Shape shape;
  dim3 grid;
  size_t smem;  // dynamic
};

// Requires g.M <= kMaxXRows when g.tasks > 1 (one task: any M, in groups of
// kMaxXRows rows). The x rows are rounded up to a power of two (one task) or
// to 4 or 16 (several tasks); the extra rows are zeros.
template <typename T>
Plan plan(const MaskedGemm<T>& g, int sm_count) {
  Plan p;
  int group_rows;
  if (g.tasks == 1) {
    group_rows = static_cast<int>(g.M < kMaxXRows ? g.M : kMaxXRows);
    p.multitask = false;
    p.x_rows = g.M == 1 ? 1 : g.M <= 2 ? 2 : g.M <= 4 ? 4 : g.M <= 8 ? 8 : kMaxXRows;
  } else {
    const int64_t per_group = kMaxXRows / g.M;
    const int tasks_per_group = static_cast<int>(g.tasks < per_group ? g.tasks : per_group);
    group_rows = tasks_per_group * static_cast<int>(g.M);
    p.multitask = true;
    p.x_rows = group_rows <= 4 ? 4 : kMaxXRows;
  }
  p.shape = choose_shape(g, p.x_rows, group_rows, sm_count);
  p.grid = dim3(static_cast<unsigned>(ceil_div(g.N, p.shape.rows_per_block)),
                static_cast<unsigned>(ceil_div(g.tasks * g.M, group_rows)));
  p.smem = smem_bytes<T>(p.x_rows, p.shape.slices);
  return p;
}

template <typename T>
void launch(const MaskedGemm<T>& g, cpgdev::stream_t stream) {
  const Plan p = plan(g, cpgdev::sm_count());
  auto run = [&](auto kernel) { CPG_LAUNCH(kernel, p.grid, kThreads, p.smem, stream, g, p.shape); };
  if (p.multitask) {
    if (p.x_rows == 4) return run(&masked_linear_small_batch_kernel<T, 4, true>);
    return run(&masked_linear_small_batch_kernel<T, kMaxXRows, true>);
  }
  switch (p.x_rows) {
    case 1: return run(&masked_linear_small_batch_kernel<T, 1, false>);
    case 2: return run(&masked_linear_small_batch_kernel<T, 2, false>);
    case 4: return run(&masked_linear_small_batch_kernel<T, 4, false>);
    case 8: return run(&masked_linear_small_batch_kernel<T, 8, false>);
    default: return run(&masked_linear_small_batch_kernel<T, kMaxXRows, false>);
  }
}

// The launch launch(g, ...) makes on sm_count multiprocessors, appended to `out`.
template <typename T>
void describe(const MaskedGemm<T>& g, int sm_count, LaunchPlan& out) {
  const Plan p = plan(g, sm_count);
  const int64_t stage_width = int64_t{p.shape.slices} * warp_chunk<T>();
  out.push_back(
      planned_launch("small_batch::masked_linear_small_batch_kernel<" + type_name<T>() + ", " +
                         std::to_string(p.x_rows) + ", " + (p.multitask ? "true" : "false") + ">",
                     p.grid, kThreads, static_cast<int64_t>(p.smem),
                     {{"M", g.M},
                      {"N", g.N},
                      {"K", g.K},
                      {"tasks", g.tasks},
                      {"x_rows", p.x_rows},
                      {"group_rows", p.shape.group_rows},
                      {"slices", p.shape.slices},
                      {"rows_per_block", p.shape.rows_per_block},
                      {"stage_width", stage_width},
                      {"chunks", ceil_div(g.K, stage_width)},
                      {"static_smem", static_cast<int64_t>(static_smem_bytes(p.x_rows))}}));
}

}  // namespace small_batch
}  // namespace CPG_KERNEL_NS
}  // namespace cpg
