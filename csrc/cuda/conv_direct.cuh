// Masked conv2d with one output element per thread, for outputs too narrow
// for the tiled kernels: when a group has only a few output columns
// (depthwise and other narrow grouped convs, or an input gradient with few
// input channels per group), a 128-column tile would be almost all padding.
//
// A thread sums its element over (tap, channel) straight from global memory;
// the few weights and the image neighbourhood it reads are read by its
// neighbours too and come from the caches. Threads take consecutive elements
// in the output's memory order, so that stores and image reads coalesce in
// NCHW and NHWC alike. fp32 FMA in a fixed order: deterministic.
#pragma once

#include "cuda/conv_views.cuh"

namespace cpg {
namespace CPG_KERNEL_NS {
namespace conv {
namespace direct {

constexpr int kThreads = 256;

// Output element i as (pixel row m, group z, column c) of `groups` groups of
// rows x cols: columns fastest for NHWC ([pixel][group][column] is the
// channel order), rows fastest for NCHW (channels outermost within a batch).
struct Element {
  int64_t m, z, c;
};

CPG_DEVICE Element element_of(int64_t i, int64_t rows, int64_t groups, int64_t cols,
                              bool channels_last) {
  if (channels_last) {
    const DivMod pixel_col = divmod(i, cols), pixel_group = divmod(pixel_col.q, groups);
    return {pixel_group.q, pixel_group.r, pixel_col.r};
  }
  const DivMod col_row = divmod(i, rows), group_col = divmod(col_row.q, cols);
  return {col_row.r, group_col.q, group_col.r};
}

// Grid-stride over every output element of all groups.
template <typename View>
CPG_GLOBAL void CPG_LAUNCH_BOUNDS(kThreads)
    masked_conv_direct_kernel(View problem, int64_t groups, bool channels_last) {
  const int64_t rows = problem.rows(), cols = problem.cols();
  const int64_t total = rows * groups * cols;
  for (int64_t i = global_thread_index(); i < total; i += global_thread_count()) {
    const Element e = element_of(i, rows, groups, cols, channels_last);
    View v = problem;
    v.select_z(e.z);
    const ImageRow row = v.a_row(e.m);
    float acc = 0.0f;
    for (int t = 0; t < v.taps(); ++t) {
      const Tap tap = v.tap_of(t);
      for (int64_t ch = 0; ch < v.reduction_channels(); ++ch) {
        acc += v.a(row, v.a_col_at(ch, tap)) * v.weight_tap(ch, tap.index, e.c);
      }
    }
    v.store(v.out_row(e.m), v.out_col(e.c), acc);
  }
}

template <typename View>
void launch_view(const View& v, int64_t groups, bool channels_last, cpgdev::stream_t stream) {
  const unsigned blocks = grid_stride_blocks(v.rows() * groups * v.cols(), kThreads);
  auto* kernel = &masked_conv_direct_kernel<View>;
  CPG_LAUNCH(kernel, blocks, kThreads, 0, stream, v, groups, channels_last);
}

// The launch launch_view(v, groups, ...) makes on sm_count multiprocessors.
template <typename View>
void describe_view(const View& v, int64_t groups, int sm_count, LaunchPlan& out) {
  const int64_t outputs = v.rows() * groups * v.cols();
  out.push_back(planned_launch(
      "conv::direct::masked_conv_direct_kernel<" + type_name<View>() + ">",
      dim3(grid_stride_blocks(outputs, kThreads, sm_count)), kThreads, 0,
      {{"outputs", outputs}, {"taps", v.taps()}, {"reduction_channels", v.reduction_channels()}}));
}

}  // namespace direct
}  // namespace conv
}  // namespace CPG_KERNEL_NS
}  // namespace cpg
