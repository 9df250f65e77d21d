#include "ops/linear_ops.h"

#include "cpu/linear_cpu.h"
#include "cpu/precision.h"
#include "ops/backend.h"
#include "ops/checks.h"
#include "ops/chunking.h"
#include "ops/mask_ops.h"

namespace cpg::ops {

namespace {

void check_linear_operands(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bits,
                           const char* x_name) {
  check_floating(weight, "weight");
  TORCH_CHECK_VALUE(weight.dim() == 2, "weight: expected a 2-D linear weight [out, in], got ",
                    weight.dim(), " dimensions");
  check_same_dtype(x, weight, x_name, "weight");
  check_same_device(x, weight, x_name, "weight");
  check_bits(bits, weight, matrix_shape(weight));
}

bool allow_tf32() { return at::globalContext().allowTF32CuBLAS(); }

// t as a matrix [rows, cols] over its last dimension. reshape({-1, cols}) cannot infer the
// rows when cols == 0 (K = 0 in the forward, N = 0 in the input gradient), so count them.
at::Tensor as_matrix(const at::Tensor& t, int64_t cols) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) rows *= t.size(d);
  return t.reshape({rows, cols});
}

// The CPU backend's fused small-batch kernels take `rows` rows of t's dtype.
bool cpu_small_batch(const at::Tensor& t, int64_t rows) {
  return backend_for(t) == Backend::CPU && cpu::small_batch(rows, t.scalar_type());
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
  check_linear_operands(x, weight, bits, "x");
  check_grad_context(weight, owner, mask, task);
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == K, "x: expected last dimension ", K,
                    " (the weight's in_features), got shape ", x.sizes());
  check_bias(bias, weight, N);
  // A 2-D x needs no reshape, nor y a 2-D view: each is an op call per call.
  const bool flat = x.dim() == 2;
  const at::Tensor x2d = (flat ? x : as_matrix(x, K)).contiguous();
  const at::Tensor w = weight.contiguous(), b = bits.contiguous();
  const int64_t M = x2d.size(0);
  auto out_sizes = x.sizes().vec();
  out_sizes.back() = N;
  // Allocate the result in its final shape and write through a 2-D view: an
  // op output that is itself a view would forbid in-place ops after it.
  at::Tensor y = at::empty(out_sizes, x.options());
  at::Tensor y2d = flat ? y : y.view({M, N});
  if (M > 0 && N > 0) {
    if (use_fused_kernels(x)) {
      const at::Tensor bias_c = bias ? bias->contiguous() : at::Tensor();
      CPG_RUN_LAUNCHER(backend_for(x), x, masked_linear, *kernel_dtype(x.scalar_type()),
                       x2d.data_ptr(), w.data_ptr(), b.data_ptr<int32_t>(),
                       bias_c.defined() ? bias_c.data_ptr() : nullptr, y2d.data_ptr(), M, N, K,
                       allow_tf32());
    } else if (cpu_small_batch(x2d, M)) {
      cpu::small_batch_linear(x2d, w, b, bias, y2d, 1);
    } else {
      chunked_linear(x2d, w, b, bias, y2d);
    }
  }
  return y;
}

at::Tensor masked_linear_grad_input(const at::Tensor& grad_out, const at::Tensor& weight,
                                    const at::Tensor& bits) {
  check_linear_operands(grad_out, weight, bits, "grad_out");
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK_VALUE(grad_out.dim() >= 1 && grad_out.size(-1) == N,
                    "grad_out: expected last dimension ", N,
                    " (the weight's out_features), got "
                    "shape ",
                    grad_out.sizes());
  const at::Tensor dy = as_matrix(grad_out, N).contiguous();
  const at::Tensor w = weight.contiguous(), b = bits.contiguous();
  const int64_t M = dy.size(0);
  auto out_sizes = grad_out.sizes().vec();
  out_sizes.back() = K;
  const bool fused = use_fused_kernels(dy) && N > 0;
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
      cpu::small_batch_grad_input(dy, w, b, dx);
    } else {
      const at::ScalarType dt = library_dtype(dy);
      const at::Tensor dyc = dy.to(dt);
      at::Tensor acc = dt == dx.scalar_type() ? dx : at::zeros({M, K}, dx.options().dtype(dt));
      const int64_t step = chunk_rows(K);
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
  check_same_dtype(x, weight, "x", "weight");
  check_same_device(x, weight, "x", "weight");
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK_VALUE(x.dim() == 3 && x.size(2) == K, "x: expected shape [T, B, ", K,
                    "] (tasks, batch, in_features), got ", x.sizes());
  const int64_t T = x.size(0), B = x.size(1);
  check_bits(bits, weight, matrix_shape(weight), T);
  check_bias(bias, weight, N);
  const at::Tensor xc = x.contiguous(), w = weight.contiguous(), b = bits.contiguous();
  at::Tensor y = at::empty({T, B, N}, x.options());
  if (T == 0 || B == 0 || N == 0) return y;
  if (use_fused_kernels(xc)) {
    const at::Tensor bias_c = bias ? bias->contiguous() : at::Tensor();
    CPG_RUN_LAUNCHER(backend_for(xc), xc, masked_linear_multitask, *kernel_dtype(x.scalar_type()),
                     xc.data_ptr(), w.data_ptr(), b.data_ptr<int32_t>(),
                     bias_c.defined() ? bias_c.data_ptr() : nullptr, y.data_ptr(), T, B, N, K,
                     allow_tf32());
  } else if (cpu_small_batch(xc, T * B)) {
    at::Tensor y2d = y.view({T * B, N});
    cpu::small_batch_linear(xc.view({T * B, K}), w, b, bias, y2d, T);
  } else {
    for (int64_t t = 0; t < T; ++t) {
      at::Tensor yt = y.select(0, t);
      chunked_linear(xc.select(0, t), w, b.select(0, t), bias, yt);
    }
  }
  return y;
}

}  // namespace cpg::ops
