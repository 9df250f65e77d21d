// The masked linear launchers of launchers.h, and the dispatcher that picks a
// kernel for each problem. W is always decoded on chip, tile by tile or in
// registers; no kernel writes W' = W masked to global memory.
//
// Kernels (each in its own header):
//   weight_stream     forward only, M <= 64 rows per task, tensor cores
//                     (f16 / bf16, or fp32 as TF32 where allowed): streams W
//                     once per group of up to 64 x rows (up to 8 tasks' rows
//                     in multitask) through a per-warp cp.async pipeline, the
//                     mask applied in registers, W the mma's A operand.
//   weight_stream_grad
//                     grad_input only, M <= 64, tensor cores (as weight_stream):
//                     the same stream reducing over N, W once for all dy rows;
//                     N split across a block's warps and, when K's strips alone
//                     cannot fill the device, across blocks (fp32 partials,
//                     added in split order by a second kernel).
//   small_batch       forward only, M <= 16: streams W once per group of up to
//                     16 x rows (several tasks' rows at once in multitask),
//                     fp32 FMA: exact fp32 without TF32, and any alignment.
//   small_batch_grad  grad_input only, M <= 16: the transpose, streams W once
//                     for all dy rows, fp32 FMA; the reduction over N is split
//                     across warps and, when K alone cannot fill the device,
//                     across blocks (fp32 partials, added by a second kernel).
//   mma               tensor cores, fp32 accumulate: f16/bf16 operands as they
//                     are, fp32 operands rounded to TF32; splits the reduction
//                     across blocks (split-K, ordered fp32 sums) when its
//                     128 x 128 tiles alone would leave multiprocessors idle.
//   simt              CUDA-core tiles, exact fp32 FMA; any shape, any alignment;
//                     split-K like mma (gemm_split_k.cuh).
//
// Dispatch, first rule that matches:
//   1. forward / multitask with M <= 64, f16 / bf16 or f32
//      with allow_tf32, K in whole 16-byte vectors, x and
//      w 16-byte aligned, a block fitting shared memory   -> weight_stream
//   2. forward / multitask with M <= 16                  -> small_batch
//   3. grad_input (dx = dy W', reduction over N) with
//      M <= 64, f16 / bf16 or f32 with allow_tf32, K and
//      N in whole 16-byte vectors, dy, w and dx 16-byte
//      aligned, a block fitting shared memory            -> weight_stream_grad
//   4. grad_input with M <= 16                            -> small_batch_grad
//   5. f16 / bf16, or f32 with allow_tf32, where the
//      tensor-core layout holds (the reduction and W rows
//      are whole 16-byte vectors, a and w 16-byte aligned) -> mma
//   6. everything else (f32 without TF32, odd K, offset
//      views, an empty reduction)                         -> simt
//
// The mixed forms (fp32 W, 16-bit activations: autocast's) run only in the
// streams: masked_linear_f32_weight in weight_stream, its input gradient
// masked_linear_grad_input_f32_weight in weight_stream_grad; the ops layer
// casts W and takes the rules above where they do not take the problem.
//
// The weight gradient of the training step (linear_weight_grad) has one
// kernel, weight_grad (gemm_weight_grad.cuh): the mma pipeline over the batch
// rows with the gradient rule in its epilogue, W and dW of the dtype or (mixed)
// fp32. The ops layer decides when it runs (csrc/ops/gemm_path.h) and takes
// aten's mm otherwise.
//
// Multitask beyond rules 1-2 runs tasks on gridDim.z of the tiled kernels (5-6). All
// kernels are deterministic: no atomics, fixed reduction orders.
#include "cuda/gemm_common.cuh"
#include "cuda/gemm_mma.cuh"
#include "cuda/gemm_simt.cuh"
#include "cuda/gemm_small_batch.cuh"
#include "cuda/gemm_small_batch_grad.cuh"
#include "cuda/gemm_stream.cuh"
#include "cuda/gemm_stream_grad.cuh"
#include "cuda/gemm_weight_grad.cuh"

namespace cpg {
namespace CPG_KERNEL_NS {
namespace {

// The rules below run once per call, generic over what happens to the chosen
// kernel: GemmLauncher launches it, GemmPlanner records its launches (the
// plan query, launch_plan.h), so that a plan is what the launchers do.
struct GemmLauncher {
  cpgdev::stream_t stream;
  cpgdev::SmemLimits smem() const { return cpgdev::smem_limits(); }
  template <typename T>
  void stream_forward(const MaskedGemm<T>& g) const {
    weight_stream::launch(g, stream);
  }
  template <typename T>
  void stream_grad_input(const MaskedGemm<T>& g) const {
    weight_stream_grad::launch(g, stream);
  }
  template <typename T>
  void small_batch(const MaskedGemm<T>& g) const {
    small_batch::launch(g, stream);
  }
  template <typename T>
  void small_batch_grad(const MaskedGemm<T>& g) const {
    small_batch_grad::launch(g, stream);
  }
  template <typename T, bool kGradInput>
  void mma(const MaskedGemm<T>& g) const {
    mma::launch<T, kGradInput>(g, stream);
  }
  template <typename T, bool kGradInput>
  void simt(const MaskedGemm<T>& g) const {
    simt::launch<T, kGradInput>(g, stream);
  }
};

struct GemmPlanner {
  int sm_count;
  LaunchPlan* plan;
  cpgdev::SmemLimits smem() const { return weight_stream::kSm90Smem; }
  template <typename T>
  void stream_forward(const MaskedGemm<T>& g) const {
    weight_stream::describe(g, sm_count, *plan);
  }
  template <typename T>
  void stream_grad_input(const MaskedGemm<T>& g) const {
    weight_stream_grad::describe(g, sm_count, *plan);
  }
  template <typename T>
  void small_batch(const MaskedGemm<T>& g) const {
    small_batch::describe(g, sm_count, *plan);
  }
  template <typename T>
  void small_batch_grad(const MaskedGemm<T>& g) const {
    small_batch_grad::describe(g, sm_count, *plan);
  }
  template <typename T, bool kGradInput>
  void mma(const MaskedGemm<T>& g) const {
    mma::describe<T, kGradInput>(g, sm_count, *plan);
  }
  template <typename T, bool kGradInput>
  void simt(const MaskedGemm<T>& g) const {
    simt::describe<T, kGradInput>(g, sm_count, *plan);
  }
};

template <typename T, bool kGradInput, typename Exec>
void run_tiled(const MaskedGemm<T>& g, bool allow_tf32, const Exec& exec) {
  if (tensor_cores_allowed<T>(allow_tf32) && mma::supports<T, kGradInput>(g)) {
    exec.template mma<T, kGradInput>(g);
  } else {
    exec.template simt<T, kGradInput>(g);
  }
}

template <typename T, typename Exec>
void run_forward(const MaskedGemm<T>& g, bool allow_tf32, const Exec& exec) {
  if (weight_stream::supports(g, allow_tf32, exec.smem())) {
    exec.stream_forward(g);
  } else if (g.M <= small_batch::kMaxXRows) {
    exec.small_batch(g);
  } else {
    run_tiled<T, false>(g, allow_tf32, exec);
  }
}

template <typename T, typename Exec>
void run_grad_input(const MaskedGemm<T>& g, bool allow_tf32, const Exec& exec) {
  if (weight_stream_grad::supports(g, allow_tf32, exec.smem())) {
    exec.stream_grad_input(g);
  } else if (g.M <= small_batch_grad::kMaxDyRows) {
    exec.small_batch_grad(g);
  } else {
    run_tiled<T, true>(g, allow_tf32, exec);
  }
}

template <typename Exec>
void linear_forward(DType dtype, const void* x, const void* w, const int32_t* bits,
                    const void* bias, void* y, int64_t T, int64_t M, int64_t N, int64_t K,
                    bool allow_tf32, const Exec& exec) {
  if (T == 0 || M == 0 || N == 0) return;  // K == 0 still writes y = bias (or 0)
  dispatch_dtype(dtype, [&](auto tag) {
    using E = typename decltype(tag)::type;
    const MaskedGemm<E> g = make_gemm<E>(x, w, bits, bias, y, T, M, N, K, /*grad_input=*/false);
    run_forward(g, allow_tf32, exec);
  });
}

template <typename Exec>
void linear_grad_input(DType dtype, const void* dy, const void* w, const int32_t* bits, void* dx,
                       int64_t M, int64_t N, int64_t K, bool allow_tf32, const Exec& exec) {
  if (M == 0 || K == 0) return;  // N == 0 still writes dx = 0
  dispatch_dtype(dtype, [&](auto tag) {
    using E = typename decltype(tag)::type;
    const MaskedGemm<E> g = make_gemm<E>(dy, w, bits, nullptr, dx, 1, M, N, K, /*grad_input=*/true);
    run_grad_input(g, allow_tf32, exec);
  });
}

// A mixed form's problem for 16-bit dtype (fp32 W): the forward's, or with
// grad_input the input gradient's (a is dy, out dx); false: dtype is not 16-bit.
template <typename Fn>
bool with_f32_weight_gemm(DType dtype, const void* a, const void* w, const int32_t* bits,
                          const void* bias, void* out, int64_t T, int64_t M, int64_t N, int64_t K,
                          bool grad_input, Fn&& fn) {
  bool sixteen_bit = false;
  dispatch_dtype(dtype, [&](auto tag) {
    using E = typename decltype(tag)::type;
    if constexpr (sizeof(E) == 2) {
      sixteen_bit = true;
      fn(make_gemm<E, float>(a, w, bits, bias, out, T, M, N, K, grad_input));
    }
  });
  return sixteen_bit;
}

template <typename T, typename WT = T>
weight_grad::WeightGrad<T, WT> make_weight_grad(const void* dy, const void* x, const void* w,
                                                const uint8_t* owner, const int32_t* bits, int task,
                                                void* grad_w, float* grad_m, int64_t M, int64_t N,
                                                int64_t K) {
  return weight_grad::WeightGrad<T, WT>{static_cast<const T*>(dy),
                                        static_cast<const T*>(x),
                                        static_cast<const WT*>(w),
                                        owner,
                                        bits,
                                        task,
                                        static_cast<WT*>(grad_w),
                                        grad_m,
                                        M,
                                        N,
                                        K,
                                        words_per_row(K)};
}

// fn on the weight-gradient problem of dtype with W of dtype or (f32_weight,
// 16-bit dtype only) fp32.
template <typename Fn>
void with_weight_grad(DType dtype, bool f32_weight, const void* dy, const void* x, const void* w,
                      const uint8_t* owner, const int32_t* bits, int task, void* grad_w,
                      float* grad_m, int64_t M, int64_t N, int64_t K, Fn&& fn) {
  dispatch_dtype(dtype, [&](auto tag) {
    using E = typename decltype(tag)::type;
    if (!f32_weight) {
      fn(make_weight_grad<E>(dy, x, w, owner, bits, task, grad_w, grad_m, M, N, K));
      return;
    }
    if constexpr (sizeof(E) == 2) {
      fn(make_weight_grad<E, float>(dy, x, w, owner, bits, task, grad_w, grad_m, M, N, K));
    } else {
      throw std::invalid_argument(
          "cpg_kernels: linear_weight_grad: f32_weight needs a 16-bit dtype");
    }
  });
}

}  // namespace

bool linear_weight_grad_supported(DType dtype, const void* dy, const void* x, int64_t M, int64_t N,
                                  int64_t K, bool allow_tf32) {
  bool ok = false;
  dispatch_dtype(dtype, [&](auto tag) {
    using E = typename decltype(tag)::type;
    ok = weight_grad::supports(
        make_weight_grad<E>(dy, x, nullptr, nullptr, nullptr, 0, nullptr, nullptr, M, N, K),
        allow_tf32);
  });
  return ok;
}

void linear_weight_grad(DType dtype, const void* dy, const void* x, const void* w,
                        const uint8_t* owner, const int32_t* bits, int task, void* grad_w,
                        float* grad_m, int64_t M, int64_t N, int64_t K, bool allow_tf32,
                        bool f32_weight, void* stream) {
  if (N == 0 || K == 0) return;
  with_weight_grad(dtype, f32_weight, dy, x, w, owner, bits, task, grad_w, grad_m, M, N, K,
                   [&](const auto& g) {
                     if (!weight_grad::supports(g, allow_tf32)) {
                       throw std::invalid_argument(
                           "cpg_kernels: linear_weight_grad: the fused kernel does not take this "
                           "problem (check linear_weight_grad_supported)");
                     }
                     weight_grad::launch(g, as_stream(stream));
                   });
}

LaunchPlan plan_linear_weight_grad(DType dtype, int64_t M, int64_t N, int64_t K, bool allow_tf32,
                                   bool f32_weight, int sm_count) {
  if (sm_count < 1) throw std::invalid_argument("cpg_kernels: plan: sm_count must be >= 1");
  LaunchPlan plan;
  // Null operands count as aligned, as in plan_masked_linear.
  if (N == 0 || K == 0 ||
      !linear_weight_grad_supported(dtype, nullptr, nullptr, M, N, K, allow_tf32)) {
    return plan;
  }
  with_weight_grad(dtype, f32_weight, nullptr, nullptr, nullptr, nullptr, nullptr, 0, nullptr,
                   nullptr, M, N, K,
                   [&](const auto& g) { weight_grad::describe(g, sm_count, plan); });
  return plan;
}

bool masked_linear_f32_weight_supported(DType dtype, const void* x, const void* w, int64_t T,
                                        int64_t M, int64_t N, int64_t K) {
  bool ok = false;
  with_f32_weight_gemm(
      dtype, x, w, nullptr, nullptr, nullptr, T, M, N, K, /*grad_input=*/false, [&](const auto& g) {
        ok = T >= 1 && weight_stream::supports(g, /*allow_tf32=*/false, cpgdev::smem_limits());
      });
  return ok;
}

bool masked_linear_grad_input_f32_weight_supported(DType dtype, const void* dy, const void* w,
                                                   const void* dx, int64_t M, int64_t N,
                                                   int64_t K) {
  bool ok = false;
  with_f32_weight_gemm(dtype, dy, w, nullptr, nullptr, const_cast<void*>(dx), 1, M, N, K,
                       /*grad_input=*/true, [&](const auto& g) {
                         ok = weight_stream_grad::supports(g, /*allow_tf32=*/false,
                                                           cpgdev::smem_limits());
                       });
  return ok;
}

void masked_linear_grad_input_f32_weight(DType dtype, const void* dy, const float* w,
                                         const int32_t* bits, void* dx, int64_t M, int64_t N,
                                         int64_t K, void* stream) {
  if (!masked_linear_grad_input_f32_weight_supported(dtype, dy, w, dx, M, N, K)) {
    throw std::invalid_argument(
        "cpg_kernels: masked_linear_grad_input_f32_weight: the weight stream does not take "
        "this problem (check masked_linear_grad_input_f32_weight_supported)");
  }
  with_f32_weight_gemm(dtype, dy, w, bits, nullptr, dx, 1, M, N, K, /*grad_input=*/true,
                       [&](const auto& g) { weight_stream_grad::launch(g, as_stream(stream)); });
}

void masked_linear_f32_weight(DType dtype, const void* x, const float* w, const int32_t* bits,
                              const void* bias, void* y, int64_t T, int64_t M, int64_t N, int64_t K,
                              void* stream) {
  if (!masked_linear_f32_weight_supported(dtype, x, w, T, M, N, K)) {
    throw std::invalid_argument(
        "cpg_kernels: masked_linear_f32_weight: the weight stream does not take this problem "
        "(check masked_linear_f32_weight_supported)");
  }
  with_f32_weight_gemm(dtype, x, w, bits, bias, y, T, M, N, K, /*grad_input=*/false,
                       [&](const auto& g) { weight_stream::launch(g, as_stream(stream)); });
}

LaunchPlan plan_masked_linear_f32_weight(DType dtype, int64_t T, int64_t M, int64_t N, int64_t K,
                                         bool grad_input, int sm_count) {
  if (sm_count < 1) throw std::invalid_argument("cpg_kernels: plan: sm_count must be >= 1");
  if (grad_input && T != 1) {
    throw std::invalid_argument("cpg_kernels: plan: the input gradient has one task (T = 1)");
  }
  LaunchPlan plan;
  // Null operands count as aligned; sm_90's shared memory, as every plan.
  with_f32_weight_gemm(
      dtype, nullptr, nullptr, nullptr, nullptr, nullptr, T, M, N, K, grad_input,
      [&](const auto& g) {
        if (grad_input) {
          if (weight_stream_grad::supports(g, false, weight_stream::kSm90Smem)) {
            weight_stream_grad::describe(g, sm_count, plan);
          }
        } else if (T >= 1 && weight_stream::supports(g, false, weight_stream::kSm90Smem)) {
          weight_stream::describe(g, sm_count, plan);
        }
      });
  return plan;
}

void masked_linear_multitask(DType dtype, const void* x, const void* w, const int32_t* bits,
                             const void* bias, void* y, int64_t T, int64_t M, int64_t N, int64_t K,
                             bool allow_tf32, void* stream) {
  linear_forward(dtype, x, w, bits, bias, y, T, M, N, K, allow_tf32,
                 GemmLauncher{as_stream(stream)});
}

void masked_linear(DType dtype, const void* x, const void* w, const int32_t* bits, const void* bias,
                   void* y, int64_t M, int64_t N, int64_t K, bool allow_tf32, void* stream) {
  masked_linear_multitask(dtype, x, w, bits, bias, y, 1, M, N, K, allow_tf32, stream);
}

void masked_linear_grad_input(DType dtype, const void* dy, const void* w, const int32_t* bits,
                              void* dx, int64_t M, int64_t N, int64_t K, bool allow_tf32,
                              void* stream) {
  linear_grad_input(dtype, dy, w, bits, dx, M, N, K, allow_tf32, GemmLauncher{as_stream(stream)});
}

// Null operands: aligned, and never read while planning.
LaunchPlan plan_masked_linear(DType dtype, int64_t T, int64_t M, int64_t N, int64_t K,
                              bool grad_input, bool allow_tf32, int sm_count) {
  if (sm_count < 1) throw std::invalid_argument("cpg_kernels: plan: sm_count must be >= 1");
  if (grad_input && T != 1) {
    throw std::invalid_argument("cpg_kernels: plan: the input gradient has one task (T = 1)");
  }
  LaunchPlan plan;
  const GemmPlanner planner{sm_count, &plan};
  if (grad_input) {
    linear_grad_input(dtype, nullptr, nullptr, nullptr, nullptr, M, N, K, allow_tf32, planner);
  } else {
    linear_forward(dtype, nullptr, nullptr, nullptr, nullptr, nullptr, T, M, N, K, allow_tf32,
                   planner);
  }
  return plan;
}

}  // namespace CPG_KERNEL_NS
}  // namespace cpg
