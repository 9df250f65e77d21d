// The masked conv2d launchers of launchers.h: implicit GEMMs on the masked-GEMM
// kernels (gemm_simt.cuh, gemm_mma.cuh) through the conv views of
// conv_views.cuh. W is decoded on chip tile by tile, as for the linear layer;
// no kernel writes W' = W masked to global memory, and no im2col matrix exists
// (except the at most 64 pixel windows of the unfolded path, rule 3).
//
// Layouts: x / y (forward) and dy / dx (grad_input) are dense NCHW or dense
// NHWC (channels_last), both handled directly. NHWC is the fast layout: a
// pixel's channels are contiguous, so the tensor-core kernel copies its a
// tiles with cp.async; NCHW tiles are gathered element by element.
//
// Dispatch, first rule that matches (forward and grad_input alike; "columns"
// are a group's output channels forward, its input channels grad_input, and
// the "reduction channels" the other ones):
//   1. 1x1 kernel, stride 1, no padding, one group, NHWC: a linear layer on
//      the [batch * H * W, C] pixel matrix -> the masked-linear launchers
//      (their dispatcher: small_batch, mma, simt)
//   2. at most kDirectMaxCols columns (depthwise, narrow groups), where a
//      128-column tile would be nearly all padding      -> direct
//   3. one group and at most 64 output pixels (batch * Ho * Wo, forward and
//      grad_input alike): late layers, where reading W is the cost and a
//      128-row tile would be mostly padding               -> unfolded
//      (conv_unfolded.cuh: the small-batch linear kernels on the windows)
//   4. f16 / bf16, or f32 with allow_tf32, where the reduction channels are
//      whole 16-byte vectors and an NHWC image is 16-byte aligned -> mma:
//      a. 3x3 kernels walking all 9 taps (forward, and grad_input where one
//         stride phase holds every tap) with input channels in whole vectors
//         and aligned W rows: every tap of a 16-byte channel block per stage,
//         W loaded by 16-byte runs, a 128 x 64 tile (two blocks per SM) where
//         the columns fit it, else 128 x 128             (ConvWindowView)
//      b. otherwise one tap per stage              (ConvMmaView)
//   5. everything else (f32 without TF32, odd channel counts)
//                                                        -> simt
// All paths are deterministic: no atomics, fixed reduction orders. The
// unfolded path computes in exact fp32 even where TF32 is allowed.
//
// A strided input gradient on the tiled kernels (rules 4-5) runs one implicit
// GEMM per stride phase (conv_views.cuh, Phase): the input pixels whose
// padded position has one residue modulo the stride, against only the taps
// that reach them, about 1 / (stride_h * stride_w) of the taps each, instead
// of multiplying the zeros between dy's pixels.
//
// Multi-task forward (T tasks' images against one W, each with its own bits):
// a pointwise conv is the linear multi-task GEMM; one group with at most 16
// output pixels per task unfolds every task's windows and runs the
// small-batch kernel's multi-task form, which reads W once for all tasks;
// anything larger runs one conv per task (compute-bound there).
//
// The mixed forward (masked_conv2d_f32_weight: fp32 W, 16-bit x and y, the
// autocast form) runs where a weight stream takes it: a pointwise conv (rule 1)
// in the linear weight stream, the unfolded path (rule 3) in its windows'
// weight stream; the ops layer casts W and takes the rules above elsewhere.
//
// Not yet here: the unfolded path for grouped convs.
#include <algorithm>

#include "cuda/conv_direct.cuh"
#include "cuda/conv_unfolded.cuh"
#include "cuda/conv_views.cuh"
#include "cuda/conv_window.cuh"
#include "cuda/gemm_mma.cuh"
#include "cuda/gemm_simt.cuh"

namespace cpg {
namespace CPG_KERNEL_NS {
namespace {

constexpr int64_t kMaxGridZ = 65535;   // groups per launch of the tiled kernels
constexpr int64_t kDirectMaxCols = 8;  // rule 2

// The views decode image and channel sizes as 32-bit ints.
void check_dims(const ConvShape& s) {
  constexpr int64_t kMax = int64_t{1} << 31;
  const int64_t sizes[] = {s.C, s.N, s.H * s.W, s.Ho() * s.Wo(), s.taps()};
  for (int64_t v : sizes) {
    if (v >= kMax) throw std::invalid_argument("cpg_kernels: conv2d dimensions exceed 2^31");
  }
}

// Rule 1: a 1x1 conv that every pixel applies alone, to NHWC rows.
bool is_pointwise(const ConvShape& s, bool channels_last) {
  return channels_last && s.kh == 1 && s.kw == 1 && s.stride_h == 1 && s.stride_w == 1 &&
         s.pad_h == 0 && s.pad_w == 0 && s.groups == 1;
}

template <typename View>
View make_view(const void* a, const void* w, const int32_t* bits, const void* bias, void* out,
               const ConvShape& s, bool channels_last) {
  using T = typename View::Elem;
  View v{};
  v.image = static_cast<const T*>(a);
  v.w = static_cast<const T*>(w);
  v.bits = bits;
  v.bias = static_cast<const T*>(bias);
  v.out = static_cast<T*>(out);
  v.d = conv::conv_dims(s);
  const conv::ImageStrides input = conv::dense_strides(s.C, s.H, s.W, channels_last);
  const conv::ImageStrides output = conv::dense_strides(s.N, s.Ho(), s.Wo(), channels_last);
  v.image_strides = View::kGradInput ? output : input;
  v.out_strides = View::kGradInput ? input : output;
  v.group = 0;
  v.w_rows_aligned = is_aligned16(w) && (s.K() * sizeof(T)) % kVecBytes == 0;
  if constexpr (View::kGradInput) v.phase = conv::full_phase(v.d);
  return v;
}

// launch(part, n) for the groups, at most kMaxGridZ (gridDim.z) at a time.
template <typename View, typename Launch>
void for_group_chunks(const View& v, int64_t groups, Launch&& launch) {
  for (int64_t g0 = 0; g0 < groups; g0 += kMaxGridZ) {
    View part = v;
    part.group = g0;
    launch(part, std::min(kMaxGridZ, groups - g0));
  }
}

template <typename View>
bool mma_supports(const View& v, bool channels_last) {
  const int64_t kV = vec_elems<typename View::Elem>();
  return v.reduction_channels() % kV == 0 && (!channels_last || is_aligned16(v.image));
}

template <bool kChannelsContiguous, typename View>
conv::ConvMmaView<View, kChannelsContiguous> mma_view(const View& v) {
  conv::ConvMmaView<View, kChannelsContiguous> staged;
  static_cast<View&>(staged) = v;
  return staged;
}

template <bool kChannelsContiguous, int kTileN, typename View>
conv::ConvWindowView<View, kChannelsContiguous, kTileN> window_view(const View& v) {
  conv::ConvWindowView<View, kChannelsContiguous, kTileN> staged;
  static_cast<View&>(staged) = v;
  return staged;
}

// The rules below run once per call, generic over what happens to the chosen
// kernel: ConvLauncher launches it, ConvPlanner records its launches (the
// plan query, launch_plan.h), so that a plan is what the launchers do. Each
// call is one family's launcher.
struct ConvLauncher {
  cpgdev::stream_t stream;
  template <typename View>
  void direct(const View& v, int64_t groups, bool channels_last) const {
    conv::direct::launch_view(v, groups, channels_last, stream);
  }
  template <typename View>
  void unfolded(const View& v, bool channels_last, int64_t tasks) const {
    if constexpr (View::kGradInput) {
      conv::unfolded::launch(v, channels_last, stream);
    } else {
      conv::unfolded::launch(v, channels_last, stream, tasks);
    }
  }
  template <typename View>
  void mma(const View& v, int64_t groups) const {
    mma::launch_view(v, groups, stream);
  }
  template <typename View>
  void simt(const View& v, int64_t groups) const {
    simt::launch_view(v, groups, stream);
  }
  // The masked-linear launchers, for pointwise convs.
  void linear_forward(DType dtype, const void* x, const void* w, const int32_t* bits,
                      const void* bias, void* y, int64_t T, int64_t M, int64_t N, int64_t K,
                      bool allow_tf32) const {
    masked_linear_multitask(dtype, x, w, bits, bias, y, T, M, N, K, allow_tf32, stream);
  }
  void linear_grad_input(DType dtype, const void* dy, const void* w, const int32_t* bits, void* dx,
                         int64_t M, int64_t N, int64_t K, bool allow_tf32) const {
    masked_linear_grad_input(dtype, dy, w, bits, dx, M, N, K, allow_tf32, stream);
  }
};

struct ConvPlanner {
  int sm_count;
  LaunchPlan* plan;
  template <typename View>
  void direct(const View& v, int64_t groups, bool) const {
    conv::direct::describe_view(v, groups, sm_count, *plan);
  }
  template <typename View>
  void unfolded(const View& v, bool channels_last, int64_t tasks) const {
    if constexpr (View::kGradInput) {
      conv::unfolded::describe(v, channels_last, sm_count, *plan);
    } else {
      conv::unfolded::describe(v, channels_last, tasks, sm_count, *plan);
    }
  }
  template <typename View>
  void mma(const View& v, int64_t groups) const {
    mma::describe_view(v, groups, sm_count, *plan);
  }
  template <typename View>
  void simt(const View& v, int64_t groups) const {
    simt::describe_view(v, groups, sm_count, *plan);
  }
  void linear_forward(DType dtype, const void*, const void*, const int32_t*, const void*, void*,
                      int64_t T, int64_t M, int64_t N, int64_t K, bool allow_tf32) const {
    append(plan_masked_linear(dtype, T, M, N, K, /*grad_input=*/false, allow_tf32, sm_count));
  }
  void linear_grad_input(DType dtype, const void*, const void*, const int32_t*, void*, int64_t M,
                         int64_t N, int64_t K, bool allow_tf32) const {
    append(plan_masked_linear(dtype, 1, M, N, K, /*grad_input=*/true, allow_tf32, sm_count));
  }
  void append(const LaunchPlan& more) const { plan->insert(plan->end(), more.begin(), more.end()); }
};

// Rules 4-5 for one view.
template <typename View, typename Exec>
void run_tiled(const View& v, const ConvShape& shape, bool channels_last, bool allow_tf32,
               const Exec& exec) {
  auto tiled = [&](const auto& view, auto launch) {
    for_group_chunks(view, shape.groups, [&](const auto& part, int64_t n) { launch(part, n); });
  };
  if (tensor_cores_allowed<typename View::Elem>(allow_tf32) && mma_supports(v, channels_last)) {
    auto mma = [&](const auto& part, int64_t n) { exec.mma(part, n); };
    if (conv::window_supports(v)) {
      const bool narrow = conv::window_narrow(v);
      if (channels_last) {
        narrow ? tiled(window_view<true, 64>(v), mma) : tiled(window_view<true, 128>(v), mma);
      } else {
        narrow ? tiled(window_view<false, 64>(v), mma) : tiled(window_view<false, 128>(v), mma);
      }
      return;
    }
    if (channels_last) {
      tiled(mma_view<true>(v), mma);
    } else {
      tiled(mma_view<false>(v), mma);
    }
    return;
  }
  tiled(v, [&](const auto& part, int64_t n) { exec.simt(part, n); });
}

// Rules 2-5.
template <typename View, typename Exec>
void run_implicit_gemm(const View& v, const ConvShape& shape, bool channels_last, bool allow_tf32,
                       const Exec& exec) {
  if (v.cols() <= kDirectMaxCols) {
    exec.direct(v, shape.groups, channels_last);
    return;
  }
  if (conv::unfolded::applies(shape, shape.batch * shape.Ho() * shape.Wo())) {
    exec.unfolded(v, channels_last, 1);
    return;
  }
  const bool strided = shape.stride_h > 1 || shape.stride_w > 1;
  if constexpr (View::kGradInput) {
    if (strided) {
      // One implicit GEMM per stride phase, over the taps that reach it; a
      // phase that no tap reaches is zeros, which the direct kernel writes.
      for (int qy = 0; qy < shape.stride_h; ++qy) {
        for (int qx = 0; qx < shape.stride_w; ++qx) {
          View part = v;
          part.phase = conv::stride_phase(v.d, qy, qx);
          if (part.rows() == 0) continue;
          if (part.taps() == 0) {
            exec.direct(part, shape.groups, channels_last);
          } else {
            run_tiled(part, shape, channels_last, allow_tf32, exec);
          }
        }
      }
      return;
    }
  }
  run_tiled(v, shape, channels_last, allow_tf32, exec);
}

// Task t's part of T tasks' activations (null stays null: planning).
template <typename E, typename P>
P* task_part(P* base, int64_t t, int64_t elems_per_task) {
  return base == nullptr ? base : static_cast<E*>(base) + t * elems_per_task;
}

template <typename Exec>
void conv_forward(DType dtype, const void* x, const void* w, const int32_t* bits, const void* bias,
                  void* y, const ConvShape& shape, bool channels_last, bool allow_tf32,
                  const Exec& exec) {
  if (shape.batch == 0 || shape.N == 0) return;  // C == 0 still writes y = bias (or 0)
  check_dims(shape);
  if (is_pointwise(shape, channels_last)) {
    exec.linear_forward(dtype, x, w, bits, bias, y, 1, shape.batch * shape.H * shape.W, shape.N,
                        shape.C, allow_tf32);
    return;
  }
  dispatch_dtype(dtype, [&](auto tag) {
    using E = typename decltype(tag)::type;
    const auto v = make_view<conv::ForwardView<E>>(x, w, bits, bias, y, shape, channels_last);
    run_implicit_gemm(v, shape, channels_last, allow_tf32, exec);
  });
}

template <typename Exec>
void conv_multitask(DType dtype, const void* x, const void* w, const int32_t* bits,
                    const void* bias, void* y, int64_t T, const ConvShape& shape,
                    bool channels_last, bool allow_tf32, const Exec& exec) {
  if (T == 0 || shape.batch == 0 || shape.N == 0) return;
  ConvShape all = shape;  // every task's images
  all.batch = T * shape.batch;
  check_dims(all);
  if (is_pointwise(shape, channels_last)) {
    exec.linear_forward(dtype, x, w, bits, bias, y, T, shape.batch * shape.H * shape.W, shape.N,
                        shape.C, allow_tf32);
    return;
  }
  if (conv::unfolded::applies_multitask(shape, shape.batch * shape.Ho() * shape.Wo())) {
    dispatch_dtype(dtype, [&](auto tag) {
      using E = typename decltype(tag)::type;
      const auto v = make_view<conv::ForwardView<E>>(x, w, bits, bias, y, all, channels_last);
      exec.unfolded(v, channels_last, T);
    });
    return;
  }
  // Compute-bound sizes: one conv per task, each reading W.
  dispatch_dtype(dtype, [&](auto tag) {
    using E = typename decltype(tag)::type;
    const int64_t x_task = shape.batch * shape.C * shape.H * shape.W;
    const int64_t y_task = shape.batch * shape.N * shape.Ho() * shape.Wo();
    const int64_t bits_task = shape.N * words_per_row(shape.K());
    for (int64_t t = 0; t < T; ++t) {
      conv_forward(dtype, task_part<const E>(x, t, x_task), w,
                   task_part<const int32_t>(bits, t, bits_task), bias, task_part<E>(y, t, y_task),
                   shape, channels_last, allow_tf32, exec);
    }
  });
}

template <typename Exec>
void conv_grad_input(DType dtype, const void* dy, const void* w, const int32_t* bits, void* dx,
                     const ConvShape& shape, bool channels_last, bool allow_tf32,
                     const Exec& exec) {
  if (shape.batch == 0 || shape.C == 0) return;  // N == 0 still writes dx = 0
  check_dims(shape);
  if (is_pointwise(shape, channels_last)) {
    exec.linear_grad_input(dtype, dy, w, bits, dx, shape.batch * shape.H * shape.W, shape.N,
                           shape.C, allow_tf32);
    return;
  }
  dispatch_dtype(dtype, [&](auto tag) {
    using E = typename decltype(tag)::type;
    const auto v =
        make_view<conv::GradInputView<E>>(dy, w, bits, nullptr, dx, shape, channels_last);
    run_implicit_gemm(v, shape, channels_last, allow_tf32, exec);
  });
}

// The mixed form (fp32 W, 16-bit activations) for 16-bit dtype: fn(view) with
// the view of everything but W (the fp32 weight is passed beside it), the
// forward's (a = x, out = y) or with grad_input the input gradient's (a = dy,
// out = dx); false: dtype is not 16-bit.
template <typename Fn>
bool with_f32_weight_view(DType dtype, const void* a, const int32_t* bits, const void* bias,
                          void* out, const ConvShape& shape, bool channels_last, bool grad_input,
                          Fn&& fn) {
  bool sixteen_bit = false;
  dispatch_dtype(dtype, [&](auto tag) {
    using E = typename decltype(tag)::type;
    if constexpr (sizeof(E) == 2) {
      sixteen_bit = true;
      if (grad_input) {
        fn(make_view<conv::GradInputView<E>>(a, nullptr, bits, nullptr, out, shape, channels_last));
      } else {
        fn(make_view<conv::ForwardView<E>>(a, nullptr, bits, bias, out, shape, channels_last));
      }
    }
  });
  return sixteen_bit;
}

// Whether the unfolded path (rule 3) takes the mixed form: the rules before
// it do not apply, and the weight stream takes the GEMM on the windows
// (forward) or on dy's pixels (input gradient).
template <typename View>
bool unfolded_f32_weight(const View& v, const float* w, const ConvShape& shape, bool channels_last,
                         const cpgdev::SmemLimits& smem) {
  return v.cols() > kDirectMaxCols &&
         conv::unfolded::applies(shape, shape.batch * shape.Ho() * shape.Wo()) &&
         conv::unfolded::supports_f32_weight(v, w, channels_last, smem);
}

// The mixed form's kernels for a problem: none (the op casts the weight),
// the linear weight stream (a pointwise conv: rule 1), or the unfolded path.
enum class F32WeightConv { None, Pointwise, Unfolded };

F32WeightConv f32_weight_conv_path(DType dtype, const void* a, const void* w,
                                   const ConvShape& shape, bool channels_last, bool grad_input,
                                   const cpgdev::SmemLimits& smem) {
  if (shape.batch == 0 || shape.N == 0 || shape.C == 0) return F32WeightConv::None;
  check_dims(shape);
  if (is_pointwise(shape, channels_last)) {
    const int64_t rows = shape.batch * shape.H * shape.W;
    bool ok = false;
    dispatch_dtype(dtype, [&](auto tag) {
      using E = typename decltype(tag)::type;
      if constexpr (sizeof(E) == 2) {
        const MaskedGemm<E, float> g = make_gemm<E, float>(a, w, nullptr, nullptr, nullptr, 1, rows,
                                                           shape.N, shape.C, grad_input);
        ok = grad_input ? weight_stream_grad::supports(g, /*allow_tf32=*/false, smem)
                        : weight_stream::supports(g, /*allow_tf32=*/false, smem);
      }
    });
    return ok ? F32WeightConv::Pointwise : F32WeightConv::None;
  }
  F32WeightConv path = F32WeightConv::None;
  with_f32_weight_view(
      dtype, a, nullptr, nullptr, nullptr, shape, channels_last, grad_input, [&](const auto& v) {
        if (unfolded_f32_weight(v, static_cast<const float*>(w), shape, channels_last, smem)) {
          path = F32WeightConv::Unfolded;
        }
      });
  return path;
}

F32WeightConv checked_f32_weight_path(DType dtype, const void* a, const void* w,
                                      const ConvShape& shape, bool channels_last, bool grad_input,
                                      const char* launcher) {
  const F32WeightConv path =
      f32_weight_conv_path(dtype, a, w, shape, channels_last, grad_input, cpgdev::smem_limits());
  if (path == F32WeightConv::None) {
    throw std::invalid_argument(std::string("cpg_kernels: ") + launcher +
                                ": no kernel takes this problem (check " + launcher +
                                "_supported)");
  }
  return path;
}

}  // namespace

bool masked_conv2d_f32_weight_supported(DType dtype, const void* x, const void* w,
                                        const ConvShape& shape, bool channels_last) {
  return f32_weight_conv_path(dtype, x, w, shape, channels_last, /*grad_input=*/false,
                              cpgdev::smem_limits()) != F32WeightConv::None;
}

void masked_conv2d_f32_weight(DType dtype, const void* x, const float* w, const int32_t* bits,
                              const void* bias, void* y, const ConvShape& shape, bool channels_last,
                              void* stream) {
  const F32WeightConv path =
      checked_f32_weight_path(dtype, x, w, shape, channels_last,
                              /*grad_input=*/false, "masked_conv2d_f32_weight");
  if (path == F32WeightConv::Pointwise) {
    masked_linear_f32_weight(dtype, x, w, bits, bias, y, 1, shape.batch * shape.H * shape.W,
                             shape.N, shape.C, stream);
    return;
  }
  with_f32_weight_view(dtype, x, bits, bias, y, shape, channels_last, /*grad_input=*/false,
                       [&](const auto& v) {
                         conv::unfolded::launch_f32_weight(v, w, channels_last, as_stream(stream));
                       });
}

bool masked_conv2d_grad_input_f32_weight_supported(DType dtype, const void* dy, const void* w,
                                                   const ConvShape& shape, bool channels_last) {
  return f32_weight_conv_path(dtype, dy, w, shape, channels_last, /*grad_input=*/true,
                              cpgdev::smem_limits()) != F32WeightConv::None;
}

void masked_conv2d_grad_input_f32_weight(DType dtype, const void* dy, const float* w,
                                         const int32_t* bits, void* dx, const ConvShape& shape,
                                         bool channels_last, void* stream) {
  const F32WeightConv path =
      checked_f32_weight_path(dtype, dy, w, shape, channels_last,
                              /*grad_input=*/true, "masked_conv2d_grad_input_f32_weight");
  if (path == F32WeightConv::Pointwise) {
    masked_linear_grad_input_f32_weight(dtype, dy, w, bits, dx, shape.batch * shape.H * shape.W,
                                        shape.N, shape.C, stream);
    return;
  }
  with_f32_weight_view(dtype, dy, bits, nullptr, dx, shape, channels_last, /*grad_input=*/true,
                       [&](const auto& v) {
                         conv::unfolded::launch_f32_weight(v, w, channels_last, as_stream(stream));
                       });
}

LaunchPlan plan_masked_conv2d_f32_weight(DType dtype, const ConvShape& shape, bool channels_last,
                                         bool grad_input, int sm_count) {
  if (sm_count < 1) throw std::invalid_argument("cpg_kernels: plan: sm_count must be >= 1");
  // Null operands count as aligned; sm_90's shared memory, as every plan.
  const F32WeightConv path = f32_weight_conv_path(dtype, nullptr, nullptr, shape, channels_last,
                                                  grad_input, weight_stream::kSm90Smem);
  if (path == F32WeightConv::Pointwise) {
    return plan_masked_linear_f32_weight(dtype, 1, shape.batch * shape.H * shape.W, shape.N,
                                         shape.C, grad_input, sm_count);
  }
  LaunchPlan plan;
  if (path == F32WeightConv::Unfolded) {
    with_f32_weight_view(dtype, nullptr, nullptr, nullptr, nullptr, shape, channels_last,
                         grad_input, [&](const auto& v) {
                           conv::unfolded::describe_f32_weight(v, channels_last, sm_count, plan);
                         });
  }
  return plan;
}

void masked_conv2d(DType dtype, const void* x, const void* w, const int32_t* bits, const void* bias,
                   void* y, const ConvShape& shape, bool channels_last, bool allow_tf32,
                   void* stream) {
  conv_forward(dtype, x, w, bits, bias, y, shape, channels_last, allow_tf32,
               ConvLauncher{as_stream(stream)});
}

void masked_conv2d_multitask(DType dtype, const void* x, const void* w, const int32_t* bits,
                             const void* bias, void* y, int64_t T, const ConvShape& shape,
                             bool channels_last, bool allow_tf32, void* stream) {
  conv_multitask(dtype, x, w, bits, bias, y, T, shape, channels_last, allow_tf32,
                 ConvLauncher{as_stream(stream)});
}

void masked_conv2d_grad_input(DType dtype, const void* dy, const void* w, const int32_t* bits,
                              void* dx, const ConvShape& shape, bool channels_last, bool allow_tf32,
                              void* stream) {
  conv_grad_input(dtype, dy, w, bits, dx, shape, channels_last, allow_tf32,
                  ConvLauncher{as_stream(stream)});
}

// Null operands: aligned, and never read while planning.
LaunchPlan plan_masked_conv2d(DType dtype, int64_t T, const ConvShape& shape, bool channels_last,
                              bool grad_input, bool allow_tf32, int sm_count) {
  if (sm_count < 1) throw std::invalid_argument("cpg_kernels: plan: sm_count must be >= 1");
  if (grad_input && T != 1) {
    throw std::invalid_argument("cpg_kernels: plan: the input gradient has one task (T = 1)");
  }
  LaunchPlan plan;
  const ConvPlanner planner{sm_count, &plan};
  if (grad_input) {
    conv_grad_input(dtype, nullptr, nullptr, nullptr, nullptr, shape, channels_last, allow_tf32,
                    planner);
  } else if (T == 1) {  // masked_conv2d
    conv_forward(dtype, nullptr, nullptr, nullptr, nullptr, nullptr, shape, channels_last,
                 allow_tf32, planner);
  } else {
    conv_multitask(dtype, nullptr, nullptr, nullptr, nullptr, nullptr, T, shape, channels_last,
                   allow_tf32, planner);
  }
  return plan;
}

}  // namespace CPG_KERNEL_NS
}  // namespace cpg
