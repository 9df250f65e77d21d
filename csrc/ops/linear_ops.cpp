// The linear ops: y = x (W.bits)^T (+ bias), its input gradient and its
// multi-task form; their checks, their routing to the CPU path, the CUDA
// kernels or the emulator, their autograd formulas and their registration.
#include "ops/linear_ops.h"

#include "core/mask_format.h"
#include "core/stream_limits.h"
#include "cpu/aten_dtype.h"
#include "cpu/isa.h"
#include "cpu/parallel.h"
#include "cpu/precision.h"
#include "ops/autograd_support.h"
#include "ops/backend.h"
#include "ops/checks.h"
#include "ops/chunking.h"
#include "ops/gemm_path.h"
#include "ops/mask_ops.h"
#include "ops/registration.h"

namespace cpg::ops {

namespace {

// The fp32-weight form (ops/checks.h) of the linear ops: where the streams run
// (masked_linear_f32_weight, masked_linear_grad_input_f32_weight) the weight
// is rounded in registers, with the streams' own summation order; elsewhere by
// a cast. The weight gradient of this form holds the 16-bit form's values.

void check_linear_operands(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bits,
                           const char* x_name, bool f32_weight_ok = false) {
  check_floating(weight, "weight");
  TORCH_CHECK_VALUE(weight.dim() == 2, "weight: expected a 2-D linear weight [out, in], got ",
                    weight.dim(), " dimensions");
  if (!(f32_weight_ok && f32_weight_form(x, weight))) check_same_dtype(x, weight, x_name, "weight");
  check_same_device(x, weight, x_name, "weight");
  check_bits(bits, weight, matrix_shape(weight));
}

bool allow_tf32() { return at::globalContext().allowTF32CuBLAS(); }

// Whether a GEMM of `rows` rows on t's backend runs the fused kernels, or
// decodes the weight tile by tile for cuBLAS (the library path, gemm_path.h).
bool fused_gemm(const at::Tensor& t, int64_t rows) {
  return use_fused_kernels(t) &&
         gemm_path(*kernel_dtype(t.scalar_type()), allow_tf32(), rows) == GemmPath::Fused;
}

// t as a matrix [rows, cols] over its last dimension. reshape({-1, cols}) cannot infer the
// rows when cols == 0 (K = 0 in the forward, N = 0 in the input gradient), so count them.
at::Tensor as_matrix(const at::Tensor& t, int64_t cols) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) rows *= t.size(d);
  return t.reshape({rows, cols});
}

// ---------------------------------------------------------------- CPU path
//
// Up to kSmallBatchRows input rows take the fused small-batch kernels of
// cpu/kernels.h: they stream the weight once, decoding its bits in registers,
// with no decoded tile and no GEMM call. Larger batches take the chunked path
// (ops/chunking.h): decode a tile, then ATen's GEMM.

constexpr int64_t kSmallBatchRows = 16;

// The kernels read fp32 inputs: 16-bit ones are widened once (activation-sized).
at::Tensor as_float(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat ? t : t.to(at::kFloat);
}

// Whether the mixed weight stream takes x [T * M, K] (16-bit) against the fp32
// weight w [N, K]: on the GPU by its device's shared memory, under the emulator
// by sm_90's.
bool f32_weight_stream(const at::Tensor& x, const at::Tensor& w, int64_t T, int64_t M) {
  if (!use_fused_kernels(x)) return false;
  const cpg::DType dt = *kernel_dtype(x.scalar_type());
  const int64_t N = w.size(0), K = w.size(1);
  return CPG_QUERY_LAUNCHER(backend_for(x), x, masked_linear_f32_weight_supported, dt, x.data_ptr(),
                            w.data_ptr(), T, M, N, K);
}

// Whether the mixed input-gradient stream takes dy [M, N] (16-bit) against the
// fp32 weight w [N, K], as f32_weight_stream, into a fresh dx [M, K] (the
// caching allocator's blocks are 16-byte aligned: null stands for it).
bool f32_weight_grad_stream(const at::Tensor& dy, const at::Tensor& w) {
  if (!use_fused_kernels(dy)) return false;
  const cpg::DType dt = *kernel_dtype(dy.scalar_type());
  const int64_t M = dy.size(0), N = w.size(0), K = w.size(1);
  return CPG_QUERY_LAUNCHER(backend_for(dy), dy, masked_linear_grad_input_f32_weight_supported, dt,
                            dy.data_ptr(), w.data_ptr(), nullptr, M, N, K);
}

// Runs the mixed weight stream for y [T * M, N] where it takes the problem
// (true); else leaves y alone for the caller, which casts the weight.
bool f32_weight_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bits,
                       const std::optional<at::Tensor>& bias, at::Tensor& y, int64_t T, int64_t M) {
  if (!f32_weight_stream(x, w, T, M)) return false;
  const at::Tensor bias_c = bias ? bias->contiguous() : at::Tensor();
  CPG_RUN_LAUNCHER(backend_for(x), x, masked_linear_f32_weight, *kernel_dtype(x.scalar_type()),
                   x.data_ptr(), w.data_ptr<float>(), bits.data_ptr<int32_t>(),
                   bias_c.defined() ? bias_c.data_ptr() : nullptr, y.data_ptr(), T, M, w.size(0),
                   w.size(1));
  return true;
}

// The CPU backend's fused small-batch kernels take `rows` rows of t's dtype.
bool cpu_small_batch(const at::Tensor& t, int64_t rows) {
  return backend_for(t) == Backend::CPU && rows <= kSmallBatchRows &&
         cpu::kernel_dtype(t.scalar_type()).has_value();
}

// y2d [rows, N] = x2d [rows, K] against the weight decoded by bits
// [tasks, N, words] (rows = tasks groups of equal size, in task order), plus
// bias. All contiguous, same dtype.
void small_batch_linear(const at::Tensor& x2d, const at::Tensor& w, const at::Tensor& bits,
                        const std::optional<at::Tensor>& bias, at::Tensor& y2d, int64_t tasks) {
  const at::Tensor xf = as_float(x2d);
  const at::Tensor bias_c = bias ? bias->contiguous() : at::Tensor();
  cpu::SmallBatchLinear a{*cpu::kernel_dtype(w.scalar_type()),
                          xf.data_ptr<float>(),
                          w.data_ptr(),
                          bits.data_ptr<int32_t>(),
                          bias_c.defined() ? bias_c.data_ptr() : nullptr,
                          y2d.data_ptr(),
                          x2d.size(0),
                          tasks,
                          w.size(0),
                          w.size(1)};
  const cpu::Kernels& k = cpu::kernels();
  // Weight rows in groups of 4 (the kernel's register block).
  const int64_t quads = (a.N + 3) / 4;
  cpu::parallel_over(quads, 4 * a.K * a.rows, [&](int64_t q0, int64_t q1) {
    k.small_batch_linear(a, 4 * q0, std::min(a.N, 4 * q1));
  });
}

// dx2d [M, K] = dy2d [M, N] against the decoded weight; N >= 1.
void small_batch_grad_input(const at::Tensor& dy2d, const at::Tensor& w, const at::Tensor& bits,
                            at::Tensor& dx2d) {
  const at::Tensor dyf = as_float(dy2d);
  const int64_t M = dy2d.size(0), N = w.size(0), K = w.size(1);
  const bool is_float = dx2d.scalar_type() == at::kFloat;
  at::Tensor acc = is_float ? dx2d : at::empty({M, K}, dx2d.options().dtype(at::kFloat));
  cpu::SmallBatchGradInput a{*cpu::kernel_dtype(w.scalar_type()),
                             dyf.data_ptr<float>(),
                             w.data_ptr(),
                             bits.data_ptr<int32_t>(),
                             acc.data_ptr<float>(),
                             dx2d.data_ptr(),
                             M,
                             N,
                             K};
  const cpu::Kernels& k = cpu::kernels();
  // Columns in blocks of 32 (one mask word of every weight row).
  const int64_t blocks = cpg::words_per_row(K);
  cpu::parallel_over(blocks, 32 * N * M, [&](int64_t b0, int64_t b1) {
    k.small_batch_grad_input(a, 32 * b0, std::min(K, 32 * b1));
  });
}

// The chunked path's library dtype: fp32 for fp16/bf16 CPU tensors where the
// CPU has no native 16-bit dot products (cpu/precision.h), else their own.
at::ScalarType library_dtype(const at::Tensor& t) {
  return backend_for(t) == Backend::CPU ? cpu::library_dtype(t.scalar_type()) : t.scalar_type();
}

// y2d[M, N] = x2d[M, K] (W.bits)^T (+ bias), one decoded tile of rows at a time,
// x2d, bias and y2d of the library dtype dt.
void chunked_linear_as(const at::Tensor& x2d, const at::Tensor& w, const at::Tensor& bits,
                       const std::optional<at::Tensor>& bias, at::Tensor& y2d, at::ScalarType dt) {
  const int64_t N = w.size(0), step = chunk_rows(w.size(1));
  for (int64_t n0 = 0; n0 < N; n0 += step) {
    const int64_t rows = std::min(step, N - n0);
    const at::Tensor tile = decode_rows(w, bits, n0, rows, dt);
    at::Tensor out = y2d.narrow(1, n0, rows);
    if (bias) {
      at::addmm_out(out, bias->narrow(0, n0, rows), x2d, tile.t());
    } else {
      at::mm_out(out, x2d, tile.t());
    }
  }
}

void chunked_linear(const at::Tensor& x2d, const at::Tensor& w, const at::Tensor& bits,
                    const std::optional<at::Tensor>& bias, at::Tensor& y2d) {
  const at::ScalarType dt = library_dtype(x2d);
  if (dt == x2d.scalar_type()) return chunked_linear_as(x2d, w, bits, bias, y2d, dt);
  // Widened: fp32 operands and sums, one rounding at the end.
  at::Tensor yf = at::empty(y2d.sizes(), y2d.options().dtype(dt));
  const std::optional<at::Tensor> bias_f =
      bias ? std::optional<at::Tensor>(bias->to(dt)) : std::nullopt;
  chunked_linear_as(x2d.to(dt), w, bits, bias_f, yf, dt);
  y2d.copy_(yf);
}

}  // namespace

at::Tensor masked_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bits,
                         const std::optional<at::Tensor>& bias,
                         const std::optional<at::Tensor>& owner,
                         const std::optional<at::Tensor>& mask, int64_t task) {
  check_linear_operands(x, weight, bits, "x", /*f32_weight_ok=*/true);
  check_grad_context(weight, owner, mask, task);
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == K, "x: expected last dimension ", K,
                    " (the weight's in_features), got shape ", x.sizes());
  const bool f32_weight = f32_weight_form(x, weight);
  check_bias(bias, f32_weight ? x : weight, N, f32_weight ? "x" : "weight");
  // A 2-D x needs no reshape, nor y a 2-D view: each is an op call per call.
  const bool flat = x.dim() == 2;
  const at::Tensor x2d = (flat ? x : as_matrix(x, K)).contiguous();
  at::Tensor w = weight.contiguous();
  const at::Tensor b = bits.contiguous();
  const int64_t M = x2d.size(0);
  auto out_sizes = x.sizes().vec();
  out_sizes.back() = N;
  // Allocate the result in its final shape and write through a 2-D view: an
  // op output that is itself a view would forbid in-place ops after it.
  at::Tensor y = at::empty(out_sizes, x.options());
  at::Tensor y2d = flat ? y : y.view({M, N});
  if (M > 0 && N > 0 && f32_weight) {
    if (f32_weight_linear(x2d, w, b, bias, y2d, 1, M)) return y;
    w = w.to(x.scalar_type());
  }
  if (M > 0 && N > 0) {
    if (fused_gemm(x, M)) {
      const at::Tensor bias_c = bias ? bias->contiguous() : at::Tensor();
      CPG_RUN_LAUNCHER(backend_for(x), x, masked_linear, *kernel_dtype(x.scalar_type()),
                       x2d.data_ptr(), w.data_ptr(), b.data_ptr<int32_t>(),
                       bias_c.defined() ? bias_c.data_ptr() : nullptr, y2d.data_ptr(), M, N, K,
                       allow_tf32());
    } else if (cpu_small_batch(x2d, M)) {
      small_batch_linear(x2d, w, b, bias, y2d, 1);
    } else {
      chunked_linear(x2d, w, b, bias, y2d);
    }
  }
  return y;
}

at::Tensor masked_linear_grad_input(const at::Tensor& grad_out, const at::Tensor& weight,
                                    const at::Tensor& bits) {
  check_linear_operands(grad_out, weight, bits, "grad_out", /*f32_weight_ok=*/true);
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK_VALUE(grad_out.dim() >= 1 && grad_out.size(-1) == N,
                    "grad_out: expected last dimension ", N,
                    " (the weight's out_features), got "
                    "shape ",
                    grad_out.sizes());
  const at::Tensor dy = as_matrix(grad_out, N).contiguous();
  at::Tensor w = weight.contiguous();
  const at::Tensor b = bits.contiguous();
  const int64_t M = dy.size(0);
  auto out_sizes = grad_out.sizes().vec();
  out_sizes.back() = K;
  if (f32_weight_form(grad_out, weight)) {
    if (M > 0 && K > 0 && N > 0 && f32_weight_grad_stream(dy, w)) {
      at::Tensor dx_out = at::empty(out_sizes, grad_out.options());
      CPG_RUN_LAUNCHER(backend_for(dy), dy, masked_linear_grad_input_f32_weight,
                       *kernel_dtype(dy.scalar_type()), dy.data_ptr(), w.data_ptr<float>(),
                       b.data_ptr<int32_t>(), dx_out.data_ptr(), M, N, K);
      return dx_out;
    }
    w = w.to(grad_out.scalar_type());
  }
  const bool fused = fused_gemm(dy, M) && N > 0;
  const bool small = cpu_small_batch(dy, M) && N > 0;
  // The chunked path accumulates tile by tile, so it starts from zeros.
  at::Tensor dx_out = fused || small ? at::empty(out_sizes, grad_out.options())
                                     : at::zeros(out_sizes, grad_out.options());
  at::Tensor dx = dx_out.view({M, K});
  if (M > 0 && K > 0 && N > 0) {
    if (fused) {
      CPG_RUN_LAUNCHER(backend_for(dy), dy, masked_linear_grad_input,
                       *kernel_dtype(dy.scalar_type()), dy.data_ptr(), w.data_ptr(),
                       b.data_ptr<int32_t>(), dx.data_ptr(), M, N, K, allow_tf32());
    } else if (small) {
      small_batch_grad_input(dy, w, b, dx);
    } else {
      at::ScalarType dt = library_dtype(dy);
      const int64_t step = chunk_rows(K);
      // Where the reduction over N spans several tiles, a 16-bit library
      // product per tile would round every partial sum to 16 bits (CPUs with
      // native 16-bit dot products): those tiles are widened to fp32, and the
      // sum is rounded once, at the end, as on every other path.
      if ((dt == at::kHalf || dt == at::kBFloat16) && step < N) dt = at::kFloat;
      const at::Tensor dyc = dy.to(dt);
      at::Tensor acc = dt == dx.scalar_type() ? dx : at::zeros({M, K}, dx.options().dtype(dt));
      for (int64_t n0 = 0; n0 < N; n0 += step) {
        const int64_t rows = std::min(step, N - n0);
        acc.addmm_(dyc.narrow(1, n0, rows), decode_rows(w, b, n0, rows, dt));
      }
      if (!acc.is_same(dx)) dx.copy_(acc);
    }
  }
  return dx_out;
}

at::Tensor masked_linear_multitask(const at::Tensor& x, const at::Tensor& weight,
                                   const at::Tensor& bits, const std::optional<at::Tensor>& bias) {
  check_floating(weight, "weight");
  TORCH_CHECK_VALUE(weight.dim() == 2, "weight: expected a 2-D linear weight [out, in], got ",
                    weight.dim(), " dimensions");
  const bool f32_weight = f32_weight_form(x, weight);
  if (!f32_weight) check_same_dtype(x, weight, "x", "weight");
  check_same_device(x, weight, "x", "weight");
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK_VALUE(x.dim() == 3 && x.size(2) == K, "x: expected shape [T, B, ", K,
                    "] (tasks, batch, in_features), got ", x.sizes());
  const int64_t T = x.size(0), B = x.size(1);
  check_bits(bits, weight, matrix_shape(weight), T);
  check_bias(bias, f32_weight ? x : weight, N, f32_weight ? "x" : "weight");
  const at::Tensor xc = x.contiguous(), b = bits.contiguous();
  at::Tensor w = weight.contiguous();
  at::Tensor y = at::empty({T, B, N}, x.options());
  if (T == 0 || B == 0 || N == 0) return y;
  if (f32_weight) {
    at::Tensor y2d = y.view({T * B, N});
    if (f32_weight_linear(xc.view({T * B, K}), w, b, bias, y2d, T, B)) return y;
    w = w.to(x.scalar_type());
  }
  if (use_fused_kernels(xc)) {
    const at::Tensor bias_c = bias ? bias->contiguous() : at::Tensor();
    CPG_RUN_LAUNCHER(backend_for(xc), xc, masked_linear_multitask, *kernel_dtype(x.scalar_type()),
                     xc.data_ptr(), w.data_ptr(), b.data_ptr<int32_t>(),
                     bias_c.defined() ? bias_c.data_ptr() : nullptr, y.data_ptr(), T, B, N, K,
                     allow_tf32());
  } else if (cpu_small_batch(xc, T * B)) {
    at::Tensor y2d = y.view({T * B, N});
    small_batch_linear(xc.view({T * B, K}), w, b, bias, y2d, T);
  } else {
    for (int64_t t = 0; t < T; ++t) {
      at::Tensor yt = y.select(0, t);
      chunked_linear(xc.select(0, t), w, b.select(0, t), bias, yt);
    }
  }
  return y;
}

namespace {

// Whether the fused one-pass kernel computes the weight gradient (gemm_path.h).
// The mixed form (an fp32 weight) runs the same GEMM, so the same rule decides.
// Its shape check is host code of the kernel sources, the same in both
// builds, so the emulator's copy answers for the GPU too.
bool fused_weight_grad(const at::Tensor& dy, const at::Tensor& x2d) {
  if (!use_fused_kernels(dy)) return false;
  const cpg::DType dt = *kernel_dtype(dy.scalar_type());
  const int64_t M = dy.size(0), N = dy.size(1), K = x2d.size(1);
  return weight_grad_path(dt, allow_tf32(), M) == GemmPath::Fused &&
         emu_kernels::linear_weight_grad_supported(dt, dy.data_ptr(), x2d.data_ptr(), M, N, K,
                                                   allow_tf32());
}

// Chunks of G per weight on the kernel backends at most: each chunk costs two
// ops of host time (mm, epilogue), which a GPU step at small batch notices.
constexpr int64_t kMaxDeviceWeightGradChunks = 4;

// The two-pass weight gradient, one chunk of weight rows at a time: the
// chunk of G = dy^T x from aten's mm, then the gradient rule on it. A chunk
// holds decode_chunk_elements() entries (on the CPU exactly, so it stays in
// cache between the two passes; on the kernel backends at least, and at
// most kMaxDeviceWeightGradChunks chunks), so no weight-sized G exists.
// An fp32 weight beside 16-bit dy and x (the mixed form) gets each chunk's
// rule from the epilogue's mixed form (W rounded in registers, dW widened:
// the values of the 16-bit form); without an owner, the chunk's bits applied
// in 16 bits, widened.
void two_pass_weight_grad(const at::Tensor& dy, const at::Tensor& x2d, const at::Tensor& w,
                          const at::Tensor& bits, const at::Tensor& owner, int64_t task,
                          at::Tensor& grad_w, std::optional<at::Tensor>& grad_m) {
  const int64_t N = w.size(0);
  const bool mixed = w.scalar_type() != dy.scalar_type();
  int64_t step = chunk_rows(w.size(1));
  if (backend_for(dy) != Backend::CPU) {
    const int64_t fewest = (N + kMaxDeviceWeightGradChunks - 1) / kMaxDeviceWeightGradChunks;
    step = std::max(step, fewest);
  }
  for (int64_t n0 = 0; n0 < N; n0 += step) {
    const int64_t rows = std::min(step, N - n0);
    const at::Tensor G = at::mm(dy.narrow(1, n0, rows).t(), x2d);
    at::Tensor out = grad_w.narrow(0, n0, rows);
    if (owner.defined()) {
      std::optional<at::Tensor> gm;
      if (grad_m) gm = grad_m->narrow(0, n0, rows);
      grad_epilogue_into(G, w.narrow(0, n0, rows), owner.narrow(0, n0, rows), task, out, gm);
    } else {
      at::Tensor gw = mixed ? at::empty_like(G) : out;
      decode_rows_into(G, bits.narrow(0, n0, rows), 0, gw);
      if (mixed) out.copy_(gw);
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> masked_linear_weight_grad(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& bits, const std::optional<at::Tensor>& owner, int64_t task, bool mask_grad) {
  check_linear_operands(x, weight, bits, "x", /*f32_weight_ok=*/true);
  const bool f32_weight = f32_weight_form(x, weight);
  check_same_dtype(grad_out, f32_weight ? x : weight, "grad_out", f32_weight ? "x" : "weight");
  check_same_device(grad_out, weight, "grad_out", "weight");
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == K, "x: expected last dimension ", K,
                    " (the weight's in_features), got shape ", x.sizes());
  TORCH_CHECK_VALUE(grad_out.dim() >= 1 && grad_out.size(-1) == N,
                    "grad_out: expected last dimension ", N,
                    " (the weight's out_features), got shape ", grad_out.sizes());
  const at::Tensor x2d = as_matrix(x, K).contiguous(), dy = as_matrix(grad_out, N).contiguous();
  TORCH_CHECK_VALUE(dy.size(0) == x2d.size(0), "grad_out: expected ", x2d.size(0),
                    " rows (as many as x), got shape ", grad_out.sizes());
  if (owner) {
    check_owner(*owner, weight);
    check_task(task);
  }
  TORCH_CHECK_VALUE(!mask_grad || owner,
                    "mask_grad: the mask gradient needs owner (the training form)");
  const at::Tensor w = weight.contiguous(), b = bits.contiguous();
  const at::Tensor o = owner ? owner->contiguous() : at::Tensor();
  const at::TensorOptions mask_opts = weight.options().dtype(at::kFloat);
  at::Tensor grad_w = at::empty({N, K}, weight.options());
  std::optional<at::Tensor> grad_m;
  if (mask_grad) grad_m = at::empty({N, K}, mask_opts);
  const int64_t M = dy.size(0);
  if (M == 0 || N == 0 || K == 0) {
    grad_w.zero_();
    if (grad_m) grad_m->zero_();
  } else if (fused_weight_grad(dy, x2d)) {
    CPG_RUN_LAUNCHER(
        backend_for(dy), dy, linear_weight_grad, *kernel_dtype(dy.scalar_type()), dy.data_ptr(),
        x2d.data_ptr(), w.data_ptr(), o.defined() ? o.data_ptr<uint8_t>() : nullptr,
        o.defined() ? nullptr : b.data_ptr<int32_t>(), static_cast<int>(task), grad_w.data_ptr(),
        grad_m ? grad_m->data_ptr<float>() : nullptr, M, N, K, allow_tf32(), f32_weight);
  } else {
    two_pass_weight_grad(dy, x2d, w, b, o, task, grad_w, grad_m);
  }
  return {grad_w, grad_m ? *grad_m : at::empty({0}, mask_opts)};
}

// ---------------------------------------------------------------- autograd

namespace {

const auto& linear_op() { return op<&masked_linear>("cpg::masked_linear"); }
const auto& linear_grad_input_op() {
  return op<&masked_linear_grad_input>("cpg::masked_linear_grad_input");
}
const auto& linear_weight_grad_op() {
  return op<&masked_linear_weight_grad>("cpg::masked_linear_weight_grad");
}
const auto& linear_multitask_op() {
  return op<&masked_linear_multitask>("cpg::masked_linear_multitask");
}

// Arguments: x 0, weight 1, bits 2, bias 3, owner 4, mask 5, task 6.
struct MaskedLinear : torch::autograd::Function<MaskedLinear> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            Constant bits, const OptTensor& bias, OptConstant owner,
                            const OptTensor& mask, int64_t task) {
    ctx->save_for_backward({x, weight, bits.tensor, owner.tensor.value_or(at::Tensor())});
    ctx->saved_data["task"] = task;
    ctx->saved_data["present"] =
        Present({true, true, false, bias.has_value(), false, mask.has_value()}).bits();
    Below below;
    return linear_op().call(x, weight, bits.tensor, bias, owner.tensor, mask, task);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Present present(ctx->saved_data["present"].toInt());
    const bool need_x = present.needs_grad(ctx, 0), need_w = present.needs_grad(ctx, 1),
               need_b = present.needs_grad(ctx, 3), need_m = present.needs_grad(ctx, 5);
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &bits = saved[2], &owner = saved[3];
    const at::Tensor& dy = grads[0];
    const c10::SymInt n = weight.sym_size(0);
    variable_list out(7);
    {
      Below below;
      if (need_x) out[0] = linear_grad_input_op().call(dy, weight, bits);
      if (need_w || need_m) {
        // One pass where the fused kernel runs: dW and dm from the GEMM's
        // sums, no weight-sized G (gemm_weight_grad.cuh).
        auto [dw, dm] = linear_weight_grad_op().call(
            dy, x, weight, bits, owner.defined() ? OptTensor(owner) : std::nullopt,
            ctx->saved_data["task"].toInt(), need_m);
        if (need_w) out[1] = std::move(dw);
        if (need_m) out[5] = std::move(dm);
      }
      if (need_b) out[3] = dy.reshape_symint({-1, n}).sum(0);
    }
    return once_differentiable(std::move(out), {dy, x, weight}, "cpg::masked_linear");
  }
};

// With grad, the fp32-weight form keeps the fp32 weight where the forward's
// stream takes x (up to 64 rows on the kernel backends): the forward, the
// input gradient and the weight gradient then each read it and round it in
// registers, and dW comes out in fp32, with no weight-sized cast (the
// backward ops cast where their own kernels do not take the problem).
// Elsewhere the weight is cast first, differentiably, as autocast would: the
// backward's kernels take one dtype and the cast is the copy they read.
// Without grad the op decides alone.
// The decision reads shapes only, as SymBool guards, so that torch.compile traces it
// (it never sees data pointers): 1 to kStreamMaxRows rows, K a multiple of 8.
bool f32_weight_training(const at::Tensor& x, const at::Tensor& weight) {
  if (!f32_weight_form(x, weight) || !use_fused_kernels(x)) return false;
  const c10::SymInt& k = weight.sym_size(1);
  const c10::SymInt rows = x.sym_numel();
  auto holds = [](const c10::SymBool& b) { return b.guard_bool(__FILE__, __LINE__); };
  return holds(k.sym_gt(0)) && holds((k % 8).sym_eq(0)) && holds(rows.sym_gt(0)) &&
         holds(rows.sym_le(k * kStreamMaxRows));
}

at::Tensor cast_for_grad(const at::Tensor& x, const at::Tensor& weight) {
  return f32_weight_form(x, weight) ? weight.to(x.scalar_type()) : weight;
}

at::Tensor masked_linear_autograd(const at::Tensor& x, const at::Tensor& weight,
                                  const at::Tensor& bits, const OptTensor& bias,
                                  const OptTensor& owner, const OptTensor& mask, int64_t task) {
  if (!torch::autograd::compute_requires_grad(x, weight, bias, mask)) {
    Below below;
    return linear_op().call(x, weight, bits, bias, owner, mask, task);
  }
  const at::Tensor w = f32_weight_training(x, weight) ? weight : cast_for_grad(x, weight);
  return MaskedLinear::apply(x, w, Constant{bits}, bias, OptConstant{owner}, mask, task);
}

// Arguments: x 0, weight 1, bits 2, bias 3.
struct MaskedLinearMultitask : torch::autograd::Function<MaskedLinearMultitask> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            Constant bits, const OptTensor& bias) {
    ctx->save_for_backward({x, weight, bits.tensor});
    ctx->saved_data["present"] = Present({true, true, false, bias.has_value()}).bits();
    Below below;
    return linear_multitask_op().call(x, weight, bits.tensor, bias);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Present present(ctx->saved_data["present"].toInt());
    const bool need_x = present.needs_grad(ctx, 0), need_w = present.needs_grad(ctx, 1),
               need_b = present.needs_grad(ctx, 3);
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &bits = saved[2];
    const at::Tensor& dy = grads[0];
    const int64_t tasks = x.sym_size(0).guard_int(__FILE__, __LINE__);
    variable_list out(4);
    {
      Below below;
      if (need_x) {
        std::vector<at::Tensor> dx;
        for (int64_t t = 0; t < tasks; ++t) {
          dx.push_back(linear_grad_input_op().call(dy[t], weight, bits[t]));
        }
        out[0] = at::stack(dx);
      }
      if (need_w) {
        // Each task's dL/dW_eff through its own bits, summed over the tasks in fp32.
        at::Tensor dw = task_sum(weight);
        for (int64_t t = 0; t < tasks; ++t) {
          dw.add_(masked_by_bits(dy[t].t().mm(x[t]), bits[t]));
        }
        out[1] = dw.to(weight.scalar_type());
      }
      if (need_b) out[3] = dy.sum({0, 1});
    }
    return once_differentiable(std::move(out), {dy, x, weight}, "cpg::masked_linear_multitask");
  }
};

at::Tensor masked_linear_multitask_autograd(const at::Tensor& x, const at::Tensor& weight,
                                            const at::Tensor& bits, const OptTensor& bias) {
  if (!torch::autograd::compute_requires_grad(x, weight, bias)) {
    Below below;
    return linear_multitask_op().call(x, weight, bits, bias);
  }
  return MaskedLinearMultitask::apply(x, cast_for_grad(x, weight), Constant{bits}, bias);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(cpg, m) {
  // The inference form passes bits alone; the training form adds owner, mask
  // and task, which only the backward reads.
  define_op(m,
            "masked_linear(Tensor x, Tensor weight, Tensor bits, Tensor? bias=None, "
            "Tensor? owner=None, Tensor? mask=None, int task=0) -> Tensor",
            &masked_linear);
  define_op(m, "masked_linear_grad_input(Tensor grad_out, Tensor weight, Tensor bits) -> Tensor",
            &masked_linear_grad_input);
  define_op(m,
            "masked_linear_multitask(Tensor x, Tensor weight, Tensor bits, Tensor? bias=None) "
            "-> Tensor",
            &masked_linear_multitask);
  define_op(m,
            "masked_linear_weight_grad(Tensor grad_out, Tensor x, Tensor weight, Tensor bits, "
            "Tensor? owner=None, int task=0, bool mask_grad=False) -> (Tensor, Tensor)",
            &masked_linear_weight_grad);
  autograd_kernel(m, "masked_linear", &masked_linear_autograd);
  autograd_kernel(m, "masked_linear_multitask", &masked_linear_multitask_autograd);
  // masked_linear_grad_input and masked_linear_weight_grad are backward
  // pieces, called only below autograd from the formulas above: they keep
  // torch's fallback, which warns if someone differentiates them directly.
}

}  // namespace cpg::ops
