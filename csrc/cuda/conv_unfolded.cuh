// Masked conv2d for late layers: few pixels, a large weight. When the
// implicit GEMM has at most kMaxRows rows (batch * Ho * Wo output pixels), a
// 128-row tile of the tiled kernels is mostly padding and a grid of
// ceil(C_out / 128) blocks leaves the device idle, while reading W is the
// real cost. Here the masked-linear small-batch kernels, which stream W
// across the whole device, do the work on the pixels' unfolded windows:
//
//   forward     cols[m, (c, tap)] = x under pixel m's window (unfold_kernel),
//               then y = cols W'^T (+ bias) by weight_stream (f16 / bf16 on
//               tensor cores, gemm_stream.cuh) or small_batch (fp32, exact),
//               written straight into NCHW or NHWC y (out_plane)
//   grad_input  dcols = dy W', left as fp32 partial sums: 16-bit by
//               weight_stream_grad (tensor cores, gemm_stream_grad.cuh) on
//               dy's pixels as rows (NHWC dy as it is, NCHW dy gathered by
//               dy_rows_kernel: the stream copies 16-byte row pieces), fp32
//               or shapes the stream does not take by small_batch_grad, which
//               reads NCHW or NHWC dy straight (a_plane); then fold_kernel
//               adds each dx element's taps (and the partials' splits) in a
//               fixed order and rounds once
//
//   multi-task  the windows of T tasks' images (at most 16 pixels a task),
//               then the same kernels' multi-task form: each task's rows
//               under its own bits, W read once for a group of tasks
//   fp32 W      (16-bit x and y: autocast's) the windows, then the weight
//               stream's mixed form, which reads the fp32 weight and rounds
//               it in registers (gemm_stream.cuh): no 16-bit copy of W
//
// The workspaces are activation-sized: cols holds at most kMaxRows pixel
// windows (kMaxRows * K elements; multi-task, 16 per task), dcols the same in
// fp32 per split, gathered dy rows kMaxRows * N elements. Nothing weight-sized is written; W' is
// decoded in registers as in the linear layer. One group only (grouped late layers take the tiled
// kernels). Every sum has a fixed order: deterministic.
#pragma once

#include <type_traits>

#include "cuda/conv_direct.cuh"
#include "cuda/conv_views.cuh"
#include "cuda/gemm_small_batch.cuh"
#include "cuda/gemm_small_batch_grad.cuh"
#include "cuda/gemm_stream.cuh"
#include "cuda/gemm_stream_grad.cuh"

namespace cpg {
namespace CPG_KERNEL_NS {
namespace conv {
namespace unfolded {

constexpr int kThreads = 256;
// Up to 4 groups of 16 rows, each a pass over W. Beyond that the tiled
// kernels' grids fill the device better (a model, pending GPU timings).
constexpr int64_t kMaxRows = 64;

// Whether a conv with `rows` GEMM rows (output pixels forward, dy pixels for
// the input gradient) takes this path.
inline bool applies(const ConvShape& s, int64_t rows) {
  return s.groups == 1 && rows <= kMaxRows && s.K() > 0 && s.N > 0;
}

// Whether T tasks' forward convs with `rows` output pixels each take this
// path together: the small-batch kernel's multi-task form reads W once for
// all tasks, and holds up to 16 rows per pass.
inline bool applies_multitask(const ConvShape& s, int64_t rows) {
  return s.groups == 1 && rows <= small_batch::kMaxXRows && s.K() > 0 && s.N > 0;
}

// cols[m, k] = a[m, k] of the forward view: x under pixel m's window, channel
// k / taps at tap k % taps (the weight's own order), zero in the padding.
template <typename T>
CPG_GLOBAL void CPG_LAUNCH_BOUNDS(kThreads) unfold_kernel(ForwardView<T> v, T* cols) {
  const int64_t K = v.d.K, total = v.rows() * K;
  for (int64_t i = global_thread_index(); i < total; i += global_thread_count()) {
    const DivMod mk = divmod(i, K);
    const DivMod ct = divmod(mk.r, v.d.taps);
    const T* p = v.a_ptr(v.a_row(mk.q), v.a_col_at(ct.q, v.tap_of(static_cast<int>(ct.r))));
    cols[i] = p != nullptr ? *p : cpgdev::from_float<T>(0.0f);
  }
}

// Lanes that share one dx element's terms (its taps times the partials'
// splits) in fold_kernel: the power of two at or above the term count, at most
// a warp, so that a term count past one is not a chain of dependent loads.
inline int fold_lanes(int terms) {
  int lanes = 1;
  while (lanes < terms && lanes < kWarpSize) lanes *= 2;
  return lanes;
}

// dx[b, c, h, w] = sum over taps and splits of dcols[split][dy pixel][c, tap],
// for the dy pixels whose windows put a tap on (h, w). Each dx element takes
// `lanes` lanes of a warp (fold_lanes): lane j sums the element's terms j,
// j + lanes, ... (term = tap * splits + split, a tap that reaches no dy pixel
// being zeros), then the lanes' sums meet in a fixed butterfly, so every sum
// has one order. Elements go in dx's memory order (NCHW or NHWC), so the
// stores coalesce. The view's phase is full_phase (every pixel, every tap).
template <typename T>
CPG_GLOBAL void CPG_LAUNCH_BOUNDS(kThreads) fold_kernel(GradInputView<T> v, const float* partials,
                                                        int splits, bool channels_last, int lanes) {
  const ConvDims& d = v.d;
  const int64_t rows = v.rows(), cols = v.cols(), elements = rows * cols;
  const int64_t dy_rows = d.batch * d.Ho * d.Wo, split_stride = dy_rows * d.K;
  const int terms = v.taps() * splits;
  const int per_warp = kWarpSize / lanes, member = cpgdev::lane_id() % lanes;
  const int64_t warp = global_thread_index() / kWarpSize;
  const int64_t warps = global_thread_count() / kWarpSize;
  // The loop is warp-uniform: every lane reaches the butterfly's shuffles.
  for (int64_t first = warp * per_warp; first < elements; first += warps * per_warp) {
    const int64_t i = first + cpgdev::lane_id() / lanes;
    float acc = 0.0f;
    direct::Element e{};
    if (i < elements) {
      e = direct::element_of(i, rows, 1, cols, channels_last);
      const Pixel p = v.input_pixel(e.m);
      for (int term = member; term < terms; term += lanes) {
        const Tap tap = v.tap_of(term / splits);
        int oy, ox;
        if (!v.source_pixel(p.y + d.pad_h, p.x + d.pad_w, tap.dy, tap.dx, oy, ox)) continue;
        const int64_t dy_pixel = (p.b * d.Ho + oy) * d.Wo + ox;
        acc += partials[(term % splits) * split_stride + dy_pixel * d.K + e.c * d.taps + tap.index];
      }
    }
    for (int m = lanes / 2; m > 0; m /= 2) acc += cpgdev::shfl_xor(acc, m);
    if (i < elements && member == 0) v.store(v.out_row(e.m), v.out_col(e.c), acc);
  }
}

// rows[m, n] = dy at pixel m, channel n, for NCHW dy (images of `plane`
// pixels) or dy whose pixels are rows not 16-byte aligned (plane 1). Threads
// take dy's elements in its memory order, so the reads coalesce.
template <typename T>
CPG_GLOBAL void CPG_LAUNCH_BOUNDS(kThreads)
    dy_rows_kernel(const T* dy, T* rows, int64_t M, int64_t N, int64_t plane) {
  for (int64_t i = global_thread_index(); i < M * N; i += global_thread_count()) {
    // i = (image * N + n) * plane + pixel: dy's own order.
    const DivMod ip = divmod(i, plane);
    const DivMod bn = divmod(ip.q, N);
    rows[(bn.q * plane + ip.r) * N + bn.r] = dy[i];
  }
}

// The forward GEMM on the windows `cols` of a view over `tasks` tasks' images,
// against W stored as WT: the view's own (WT = T), or an fp32 weight w beside it.
template <typename T, typename WT = T>
MaskedGemm<T, WT> windows_gemm(const ForwardView<T>& v, const T* cols, bool channels_last,
                               int64_t tasks, const WT* w = nullptr) {
  const void* weight = std::is_same<T, WT>::value ? static_cast<const void*>(v.w) : w;
  MaskedGemm<T, WT> g = make_gemm<T, WT>(cols, weight, v.bits, v.bias, v.out, tasks,
                                         v.rows() / tasks, v.cols(), v.d.K, /*grad_input=*/false);
  g.out_plane = channels_last ? 1 : static_cast<int64_t>(v.d.Ho) * v.d.Wo;
  return g;
}

// Runs gemm(cols) on the windows of v's pixels, unfolded into a workspace.
template <typename T, typename Gemm>
void on_windows(const ForwardView<T>& v, cpgdev::stream_t stream, Gemm&& gemm) {
  const int64_t rows = v.rows(), K = v.d.K;
  DeviceWorkspace cols(sizeof(T) * rows * K, stream);
  auto* unfold = &unfold_kernel<T>;
  CPG_LAUNCH(unfold, grid_stride_blocks(rows * K, kThreads), kThreads, 0, stream, v, cols.as<T>());
  gemm(cols.as<T>());
  cols.release();
}

template <typename T>
void describe_unfold(const ForwardView<T>& v, int sm_count, LaunchPlan& out) {
  const int64_t rows = v.rows(), K = v.d.K;
  out.push_back(planned_launch("conv::unfolded::unfold_kernel<" + type_name<T>() + ">",
                               dim3(grid_stride_blocks(rows * K, kThreads, sm_count)), kThreads, 0,
                               {{"elements", rows * K}, {"taps", v.d.taps}},
                               static_cast<int64_t>(sizeof(T)) * rows * K));
}

// The input gradient's GEMM on dy's pixels.
// Against W stored as WT: the view's own (WT = T), or an fp32 weight w beside it.
template <typename T, typename WT = T>
MaskedGemm<T, WT> pixels_gemm(const GradInputView<T>& v, bool channels_last,
                              const WT* w = nullptr) {
  const int64_t dy_rows = v.d.batch * v.d.Ho * v.d.Wo;
  const void* weight = std::is_same<T, WT>::value ? static_cast<const void*>(v.w) : w;
  MaskedGemm<T, WT> g = make_gemm<T, WT>(v.image, weight, v.bits, nullptr, nullptr, 1, dy_rows,
                                         v.d.Ng, v.d.K, /*grad_input=*/true);
  g.a_plane = channels_last ? 1 : static_cast<int64_t>(v.d.Ho) * v.d.Wo;
  return g;
}

// y of `tasks` tasks for a view over all their images ([task][image]; bits
// [tasks, N, words]), with applies(shape, v.rows()) for one task and
// applies_multitask(shape, v.rows() / tasks) for several.
template <typename T>
void launch(const ForwardView<T>& v, bool channels_last, cpgdev::stream_t stream,
            int64_t tasks = 1) {
  on_windows(v, stream, [&](const T* cols) {
    const MaskedGemm<T> g = windows_gemm(v, cols, channels_last, tasks);
    if (weight_stream::supports(g, /*allow_tf32=*/false, cpgdev::smem_limits())) {
      weight_stream::launch(g, stream);
    } else {
      small_batch::launch(g, stream);
    }
  });
}

// The mixed form (one task, 16-bit T, w fp32 [N, K]): whether the weight
// stream takes the windows' GEMM on a device with shared memory `smem` (the
// windows' workspace is fresh, so 16-byte aligned: null stands for it), and
// the launches.
template <typename T>
bool supports_f32_weight(const ForwardView<T>& v, const float* w, bool channels_last,
                         const cpgdev::SmemLimits& smem) {
  const MaskedGemm<T, float> g = windows_gemm<T, float>(v, nullptr, channels_last, 1, w);
  return weight_stream::supports(g, /*allow_tf32=*/false, smem);
}

template <typename T>
void launch_f32_weight(const ForwardView<T>& v, const float* w, bool channels_last,
                       cpgdev::stream_t stream) {
  on_windows(v, stream, [&](const T* cols) {
    weight_stream::launch(windows_gemm<T, float>(v, cols, channels_last, 1, w), stream);
  });
}

template <typename T>
void describe_f32_weight(const ForwardView<T>& v, bool channels_last, int sm_count,
                         LaunchPlan& out) {
  describe_unfold(v, sm_count, out);
  const float* no_weight = nullptr;
  weight_stream::describe(windows_gemm<T, float>(v, nullptr, channels_last, 1, no_weight), sm_count,
                          out);
}

// The launches launch(v, channels_last, ..., tasks) makes on sm_count
// multiprocessors, appended to `out`.
template <typename T>
void describe(const ForwardView<T>& v, bool channels_last, int64_t tasks, int sm_count,
              LaunchPlan& out) {
  describe_unfold(v, sm_count, out);
  // The windows' workspace is 16-byte aligned, as the planning operands are.
  const MaskedGemm<T> g = windows_gemm<T>(v, nullptr, channels_last, tasks);
  if (weight_stream::supports(g, /*allow_tf32=*/false, weight_stream::kSm90Smem)) {
    weight_stream::describe(g, sm_count, out);
  } else {
    small_batch::describe(g, sm_count, out);
  }
}

// Whether the weight stream needs dy's pixels gathered as rows (NCHW dy, or
// rows not 16-byte aligned), and g reading them from `rows` if so.
template <typename T, typename WT>
bool needs_rows(const MaskedGemm<T, WT>& g) {
  return g.a_plane != 1 || !is_aligned16(g.a);
}
template <typename T, typename WT>
MaskedGemm<T, WT> on_rows(MaskedGemm<T, WT> g, const T* rows) {
  if (needs_rows(g)) {
    g.a = rows;
    g.a_plane = 1;
  }
  return g;
}

// Whether weight_stream_grad takes dcols = dy W' on a device with shared
// memory `smem` (a gathered workspace is fresh, so 16-byte aligned: null
// stands for it). fp32 stays exact (no TF32), as the forward's windows do.
template <typename T, typename WT>
bool streams_grad(const MaskedGemm<T, WT>& g, const cpgdev::SmemLimits& smem) {
  return weight_stream_grad::supports(on_rows(g, static_cast<const T*>(nullptr)),
                                      /*allow_tf32=*/false, smem);
}

template <typename T>
void launch_fold(const GradInputView<T>& v, const float* partials, int splits, bool channels_last,
                 cpgdev::stream_t stream) {
  const int lanes = fold_lanes(v.taps() * splits);
  auto* fold = &fold_kernel<T>;
  CPG_LAUNCH(fold, grid_stride_blocks(v.rows() * v.cols() * lanes, kThreads), kThreads, 0, stream,
             v, partials, splits, channels_last, lanes);
}

template <typename T>
void describe_fold(const GradInputView<T>& v, int splits, int sm_count, LaunchPlan& out) {
  const int lanes = fold_lanes(v.taps() * splits);
  out.push_back(planned_launch(
      "conv::unfolded::fold_kernel<" + type_name<T>() + ">",
      dim3(grid_stride_blocks(v.rows() * v.cols() * lanes, kThreads, sm_count)), kThreads, 0,
      {{"elements", v.rows() * v.cols()},
       {"taps", v.taps()},
       {"splits", splits},
       {"lanes", lanes},
       // Each partial sum is read once (taps in the padding never): a strided conv's dx
       // has more elements than taps x dy pixels reach.
       {"partial_sums", int64_t{splits} * v.d.batch * v.d.Ho * v.d.Wo * v.d.K}}));
}

// dcols = dy W' on the weight stream (streams_grad(g, ...)) into fp32
// partials, NCHW dy gathered into rows first, then the fold into dx.
template <typename T, typename WT>
void launch_stream(const GradInputView<T>& v, const MaskedGemm<T, WT>& g, bool channels_last,
                   cpgdev::stream_t stream) {
  const weight_stream_grad::Plan p = weight_stream_grad::plan(
      on_rows(g, static_cast<const T*>(nullptr)), cpgdev::sm_count(), cpgdev::smem_limits());
  const bool gather = needs_rows(g);
  DeviceWorkspace rows(gather ? sizeof(T) * g.M * g.N : 0, stream);
  if (gather) {
    auto* dy_rows = &dy_rows_kernel<T>;
    CPG_LAUNCH(dy_rows, grid_stride_blocks(g.M * g.N, kThreads), kThreads, 0, stream, g.a,
               rows.as<T>(), g.M, g.N, g.a_plane);
  }
  DeviceWorkspace partials(sizeof(float) * p.shape.splits * g.M * v.d.K, stream);
  weight_stream_grad::launch_kernel(on_rows(g, rows.as<T>()), p, partials.as<float>(), stream);
  rows.release();
  launch_fold(v, partials.as<float>(), p.shape.splits, channels_last, stream);
  partials.release();
}

template <typename T, typename WT>
void describe_stream(const GradInputView<T>& v, const MaskedGemm<T, WT>& g, int sm_count,
                     LaunchPlan& out) {
  const MaskedGemm<T, WT> streamed = on_rows(g, static_cast<const T*>(nullptr));
  const weight_stream_grad::Plan p =
      weight_stream_grad::plan(streamed, sm_count, weight_stream::kSm90Smem);
  if (needs_rows(g)) {
    out.push_back(planned_launch("conv::unfolded::dy_rows_kernel<" + type_name<T>() + ">",
                                 dim3(grid_stride_blocks(g.M * g.N, kThreads, sm_count)), kThreads,
                                 0, {{"elements", g.M * g.N}},
                                 static_cast<int64_t>(sizeof(T)) * g.M * g.N));
  }
  weight_stream_grad::describe_kernel(
      streamed, p, static_cast<int64_t>(sizeof(float)) * p.shape.splits * g.M * v.d.K, out);
  describe_fold(v, p.shape.splits, sm_count, out);
}

// dx for a view with applies(shape, batch * Ho * Wo).
template <typename T>
void launch(const GradInputView<T>& v, bool channels_last, cpgdev::stream_t stream) {
  const MaskedGemm<T> g = pixels_gemm(v, channels_last);
  if (streams_grad(g, cpgdev::smem_limits())) return launch_stream(v, g, channels_last, stream);
  const small_batch_grad::Plan p = small_batch_grad::plan(g, cpgdev::sm_count());
  DeviceWorkspace partials(sizeof(float) * p.shape.splits * g.M * v.d.K, stream);
  small_batch_grad::launch_kernel(g, p, partials.as<float>(), stream);
  launch_fold(v, partials.as<float>(), p.shape.splits, channels_last, stream);
  partials.release();
}

template <typename T>
void describe(const GradInputView<T>& v, bool channels_last, int sm_count, LaunchPlan& out) {
  const MaskedGemm<T> g = pixels_gemm(v, channels_last);
  if (streams_grad(g, weight_stream::kSm90Smem)) return describe_stream(v, g, sm_count, out);
  const small_batch_grad::Plan p = small_batch_grad::plan(g, sm_count);
  small_batch_grad::describe_kernel(g, p, out);
  out.back().workspace_bytes = static_cast<int64_t>(sizeof(float)) * p.shape.splits * g.M * v.d.K;
  describe_fold(v, p.shape.splits, sm_count, out);
}

// The input gradient's mixed form (16-bit T, w fp32 [N, K]: a training step
// under autocast): whether the weight stream's mixed form takes it, its
// launches, and their plan. The same operands as W cast to T, so the same
// bits as the cast form's dx.
template <typename T>
bool supports_f32_weight(const GradInputView<T>& v, const float* w, bool channels_last,
                         const cpgdev::SmemLimits& smem) {
  return streams_grad(pixels_gemm<T, float>(v, channels_last, w), smem);
}

template <typename T>
void launch_f32_weight(const GradInputView<T>& v, const float* w, bool channels_last,
                       cpgdev::stream_t stream) {
  launch_stream(v, pixels_gemm<T, float>(v, channels_last, w), channels_last, stream);
}

template <typename T>
void describe_f32_weight(const GradInputView<T>& v, bool channels_last, int sm_count,
                         LaunchPlan& out) {
  const float* no_weight = nullptr;
  describe_stream(v, pixels_gemm<T, float>(v, channels_last, no_weight), sm_count, out);
}

}  // namespace unfolded
}  // namespace conv
}  // namespace CPG_KERNEL_NS
}  // namespace cpg
