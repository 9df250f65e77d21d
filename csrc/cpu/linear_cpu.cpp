#include "cpu/linear_cpu.h"

#include "core/mask_format.h"
#include "cpu/aten_dtype.h"
#include "cpu/isa.h"
#include "cpu/parallel.h"

namespace cpg::cpu {

namespace {
// The kernels read fp32 inputs: 16-bit ones are widened once (activation-sized).
at::Tensor as_float(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat ? t : t.to(at::kFloat);
}
}  // namespace

bool small_batch(int64_t rows, at::ScalarType t) {
  return rows <= kSmallBatchRows && kernel_dtype(t).has_value();
}

void small_batch_linear(const at::Tensor& x2d, const at::Tensor& w, const at::Tensor& bits,
                        const std::optional<at::Tensor>& bias, at::Tensor& y2d, int64_t tasks) {
  const at::Tensor xf = as_float(x2d);
  const at::Tensor bias_c = bias ? bias->contiguous() : at::Tensor();
  SmallBatchLinear a{*kernel_dtype(w.scalar_type()),
                     xf.data_ptr<float>(),
                     w.data_ptr(),
                     bits.data_ptr<int32_t>(),
                     bias_c.defined() ? bias_c.data_ptr() : nullptr,
                     y2d.data_ptr(),
                     x2d.size(0),
                     tasks,
                     w.size(0),
                     w.size(1)};
  const Kernels& k = kernels();
  // Weight rows in groups of 4 (the kernel's register block).
  const int64_t quads = (a.N + 3) / 4;
  parallel_over(quads, 4 * a.K * a.rows, [&](int64_t q0, int64_t q1) {
    k.small_batch_linear(a, 4 * q0, std::min(a.N, 4 * q1));
  });
}

void small_batch_grad_input(const at::Tensor& dy2d, const at::Tensor& w, const at::Tensor& bits,
                            at::Tensor& dx2d) {
  const at::Tensor dyf = as_float(dy2d);
  const int64_t M = dy2d.size(0), N = w.size(0), K = w.size(1);
  const bool is_float = dx2d.scalar_type() == at::kFloat;
  at::Tensor acc = is_float ? dx2d : at::empty({M, K}, dx2d.options().dtype(at::kFloat));
  SmallBatchGradInput a{*kernel_dtype(w.scalar_type()),
                        dyf.data_ptr<float>(),
                        w.data_ptr(),
                        bits.data_ptr<int32_t>(),
                        acc.data_ptr<float>(),
                        dx2d.data_ptr(),
                        M,
                        N,
                        K};
  const Kernels& k = kernels();
  // Columns in blocks of 32 (one mask word of every weight row).
  const int64_t blocks = cpg::words_per_row(K);
  parallel_over(blocks, 32 * N * M, [&](int64_t b0, int64_t b1) {
    k.small_batch_grad_input(a, 32 * b0, std::min(K, 32 * b1));
  });
}

}  // namespace cpg::cpu
