// Split-K for the tiled kernels (gemm_mma.cuh, gemm_simt.cuh). A tiled block
// holds most of a multiprocessor, so a grid of fewer output tiles than
// multiprocessors leaves the rest idle (a 4096-wide layer at batch 128 is 32
// tiles of 128 x 128 on 132 SMs). The launcher then runs `splits` blocks per
// tile, each over a slice of the reduction, through a view adaptor:
//   StageSplit      the mma kernel's stages [split * per_split, ...)
//   ReductionSplit  the simt kernel's reduction indices, likewise
// Both put (sub-problem, split) on blockIdx.z and store fp32 sums to a
// workspace, plane blockIdx.z = sub-problem * splits + split; then
// reduce_splits_kernel adds each element's splits in split order and stores
// it through the original view (its bias, dtype and layout). Fixed order, no
// atomics: the same bits every run.
#pragma once

#include "cuda/gemm_common.cuh"

namespace cpg {
namespace CPG_KERNEL_NS {
namespace split_k {

constexpr int kThreads = 256;
constexpr int kMaxSplits = 16;
constexpr int64_t kMaxGridZ = 65535;

// What both adaptors change: blockIdx.z, and where the sums go.
template <typename View>
struct SplitOutput : View {
  using Original = View;
  float* partials;
  int splits;
  int split;        // set by select_z
  int64_t block_z;  // blockIdx.z: this block's sums go to plane block_z

  CPG_DEVICE void select_z(int64_t z) {
    split = static_cast<int>(z % splits);
    block_z = z;
    View::select_z(z / splits);
  }
  CPG_DEVICE int64_t out_row(int64_t m) const {
    return (block_z * this->rows() + m) * this->cols();
  }
  CPG_DEVICE int64_t out_col(int64_t c) const { return c; }
  CPG_DEVICE void store(int64_t row, int64_t col, float acc) const { partials[row + col] = acc; }
  static constexpr bool kStagedEpilogue = false;  // partials one by one, whatever View does
};

// The mma kernel's view over stages [split * stages_per_split, ...).
template <typename View>
struct StageSplit : SplitOutput<View> {
  int64_t stages_per_split;

  CPG_DEVICE int64_t first_stage() const { return this->split * stages_per_split; }
  CPG_DEVICE int64_t stages() const {
    const int64_t left = View::stages() - first_stage();
    return left < stages_per_split ? (left > 0 ? left : 0) : stages_per_split;
  }
  CPG_DEVICE void issue_stage(int64_t stage, int64_t m0, int64_t c0,
                              const typename View::BlockRows& rows, typename View::Elem* buf,
                              typename View::Pending& pending,
                              typename View::Staged& staged) const {
    View::issue_stage(first_stage() + stage, m0, c0, rows, buf, pending, staged);
  }
  CPG_DEVICE void land_stage(int64_t stage, int64_t c0, typename View::Elem* buf,
                             const typename View::Pending& pending) const {
    View::land_stage(first_stage() + stage, c0, buf, pending);
  }
};

// The simt kernel's view over reduction indices [split * per_split, ...);
// per_split is a multiple of the kernel's slice, so no slice reads past its
// split's end (past the whole reduction, the view reads zeros).
template <typename View>
struct ReductionSplit : SplitOutput<View> {
  int64_t per_split;

  CPG_DEVICE int64_t first() const { return this->split * per_split; }
  CPG_HD int64_t reduction() const {
    const int64_t left = View::reduction() - this->split * per_split;
    return left < per_split ? (left > 0 ? left : 0) : per_split;
  }
  CPG_DEVICE typename View::ACol a_col(int64_t r) const { return View::a_col(first() + r); }
  CPG_DEVICE float weight(int64_t r, int64_t c) const { return View::weight(first() + r, c); }
};

// Sub-problem z's output = its splits' partial sums added in split order,
// stored through the view. Consecutive threads take consecutive columns.
template <typename View>
CPG_GLOBAL void CPG_LAUNCH_BOUNDS(kThreads)
    reduce_splits_kernel(View problem, const float* partials, int splits, int64_t subproblems) {
  const int64_t rows = problem.rows(), cols = problem.cols(), plane = rows * cols;
  for (int64_t i = global_thread_index(); i < subproblems * plane; i += global_thread_count()) {
    const int64_t z = i / plane, m = i % plane / cols, c = i % cols;
    const float* p = partials + z * splits * plane + m * cols + c;
    float sum = p[0];
    for (int split = 1; split < splits; ++split) sum += p[split * plane];
    View v = problem;
    v.select_z(z);
    v.store(v.out_row(m), v.out_col(c), sum);
  }
}

// Splits per tile: enough that the grid gives each of `sm_count`
// multiprocessors a block, with at least min_units of the kernel's reduction
// units (stages, slices) per split; 1 means no split.
inline int choose_splits(int64_t blocks, int64_t units, int64_t min_units, int64_t subproblems,
                         int sm_count) {
  const int64_t by_device = sm_count / (blocks > 0 ? blocks : 1);
  const int64_t by_units = units / min_units;
  int64_t splits = by_device < by_units ? by_device : by_units;
  if (splits > kMaxSplits) splits = kMaxSplits;
  if (splits * subproblems > kMaxGridZ) splits = kMaxGridZ / subproblems;
  return splits > 1 ? static_cast<int>(splits) : 1;
}

// What a split launch adds: the fp32 partials' workspace and the grid of the
// reduction over them.
struct Plan {
  int splits;
  int64_t elements;  // outputs of all sub-problems
  int64_t workspace_bytes;
  unsigned reduce_blocks;
};

template <typename View>
Plan plan(const View& original, int splits, int64_t subproblems, int sm_count) {
  Plan p;
  p.splits = splits;
  p.elements = subproblems * original.rows() * original.cols();
  p.workspace_bytes = static_cast<int64_t>(sizeof(float)) * splits * p.elements;
  p.reduce_blocks = grid_stride_blocks(p.elements, kThreads, sm_count);
  return p;
}

// The reduction's launch, as launch() makes it after the split kernel.
template <typename View>
PlannedLaunch describe_reduce(const Plan& p) {
  return planned_launch("split_k::reduce_splits_kernel<" + type_name<View>() + ">",
                        dim3(p.reduce_blocks), kThreads, 0,
                        {{"elements", p.elements}, {"splits", p.splits}});
}

// Runs run(split_view, grid_z) (the tiled kernel's launch) on a workspace,
// then the reduction into the original view's output. split_view is a
// StageSplit or ReductionSplit of that view with its share per split set; p
// is plan(original view, splits, subproblems, sm_count()).
template <typename Split, typename Run>
void launch(Split split_view, const Plan& p, int64_t subproblems, cpgdev::stream_t stream,
            Run&& run) {
  using View = typename Split::Original;
  const View& original = split_view;
  DeviceWorkspace partials(static_cast<size_t>(p.workspace_bytes), stream);
  split_view.partials = partials.as<float>();
  split_view.splits = p.splits;
  run(split_view, subproblems * p.splits);
  auto* reduce = &reduce_splits_kernel<View>;
  CPG_LAUNCH(reduce, dim3(p.reduce_blocks), kThreads, 0, stream, original, partials.as<float>(),
             p.splits, subproblems);
  partials.release();
}

}  // namespace split_k
}  // namespace CPG_KERNEL_NS
}  // namespace cpg
