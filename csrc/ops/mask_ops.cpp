#include "ops/mask_ops.h"

#include "cpu/mask_cpu.h"
#include "ops/backend.h"
#include "ops/checks.h"

namespace cpg::ops {

namespace {

void check_matrix_bits(const at::Tensor& bits) {
  TORCH_CHECK_VALUE(bits.scalar_type() == at::kInt, "bits: expected dtype int32, got ",
                    bits.scalar_type());
  TORCH_CHECK_VALUE(bits.dim() == 2, "bits: expected a 2-D tensor [N, words], got ", bits.dim(),
                    " dimensions");
}

at::Tensor as_matrix(const at::Tensor& t) {
  const int64_t n = t.dim() == 0 ? 1 : t.size(0);
  return t.contiguous().view({n, n == 0 ? 0 : t.numel() / n});
}

}  // namespace

at::Tensor pack_bits(const at::Tensor& mask) {
  TORCH_CHECK_VALUE(mask.scalar_type() == at::kBool, "mask: expected dtype bool, got ",
                    mask.scalar_type());
  TORCH_CHECK_VALUE(mask.dim() >= 1, "mask: expected at least 1 dimension");
  const at::Tensor m = as_matrix(mask);
  const Backend be = backend_for(m);
  if (be == Backend::CPU) return cpu::pack_bits(m);
  const int64_t N = m.size(0), K = m.size(1);
  auto bits = at::empty({N, cpg::words_per_row(K)}, m.options().dtype(at::kInt));
  CPG_RUN_LAUNCHER(be, m, pack_bits, m.data_ptr<bool>(), bits.data_ptr<int32_t>(), N, K);
  return bits;
}

at::Tensor unpack_bits(const at::Tensor& bits, int64_t K) {
  check_matrix_bits(bits);
  TORCH_CHECK_VALUE(K >= 0 && bits.size(1) == cpg::words_per_row(K), "bits: expected ",
                    cpg::words_per_row(K), " words per row for K = ", K, ", got ", bits.size(1));
  const at::Tensor b = bits.contiguous();
  const Backend be = backend_for(b);
  if (be == Backend::CPU) return cpu::unpack_bits(b, K);
  const int64_t N = b.size(0);
  auto mask = at::empty({N, K}, b.options().dtype(at::kBool));
  CPG_RUN_LAUNCHER(be, b, unpack_bits, b.data_ptr<int32_t>(), mask.data_ptr<bool>(), N, K);
  return mask;
}

at::Tensor active_bits(const at::Tensor& owner, int64_t task, const std::optional<at::Tensor>& mask,
                       const std::optional<at::Tensor>& pick_bits, double threshold) {
  TORCH_CHECK_VALUE(owner.scalar_type() == at::kByte, "owner: expected dtype uint8, got ",
                    owner.scalar_type());
  TORCH_CHECK_VALUE(owner.dim() >= 1, "owner: expected at least 1 dimension");
  check_task(task);
  TORCH_CHECK_VALUE(!(mask && pick_bits),
                    "active_bits: give the picks either as a real mask or as pick_bits, not both");
  TORCH_CHECK_VALUE(std::isfinite(threshold), "threshold: expected a finite number, got ",
                    threshold);
  const at::Tensor o = as_matrix(owner);
  const int64_t N = o.size(0), K = o.size(1);
  std::optional<at::Tensor> m, pb;
  if (mask) {
    check_mask(*mask, owner);
    m = as_matrix(*mask);
  }
  if (pick_bits) {
    check_bits(*pick_bits, owner, {N, K});
    pb = pick_bits->contiguous();
  }
  const Backend be = backend_for(o);
  if (be == Backend::CPU) return cpu::active_bits(o, task, pb, m, threshold);
  auto bits = at::empty({N, cpg::words_per_row(K)}, o.options().dtype(at::kInt));
  CPG_RUN_LAUNCHER(be, o, active_bits, o.data_ptr<uint8_t>(), static_cast<int>(task),
                   pb ? pb->data_ptr<int32_t>() : nullptr, m ? m->data_ptr<float>() : nullptr,
                   static_cast<float>(threshold), bits.data_ptr<int32_t>(), N, K);
  return bits;
}

at::Tensor owner_histogram(const at::Tensor& owner) {
  TORCH_CHECK_VALUE(owner.scalar_type() == at::kByte, "owner: expected dtype uint8, got ",
                    owner.scalar_type());
  const at::Tensor o = owner.contiguous();
  const Backend be = backend_for(o);
  if (be == Backend::CPU) return cpu::owner_histogram(o);
  auto counts = at::empty({256}, o.options().dtype(at::kLong));
  CPG_RUN_LAUNCHER(be, o, owner_histogram, o.data_ptr<uint8_t>(), o.numel(),
                   counts.data_ptr<int64_t>());
  return counts;
}

at::Tensor count_bits(const at::Tensor& bits) {
  check_matrix_bits(bits);
  const at::Tensor b = bits.contiguous();
  const Backend be = backend_for(b);
  if (be == Backend::CPU) return cpu::count_bits(b);
  auto counts = at::empty({b.size(0)}, b.options().dtype(at::kLong));
  CPG_RUN_LAUNCHER(be, b, count_bits, b.data_ptr<int32_t>(), b.size(0), b.size(1),
                   counts.data_ptr<int64_t>());
  return counts;
}

void decode_rows_into(const at::Tensor& weight2d, const at::Tensor& bits, int64_t n0,
                      at::Tensor& out) {
  const int64_t rows = out.size(0), K = weight2d.size(1);
  if (rows == 0 || K == 0) return;
  const Backend be = backend_for(weight2d);
  const auto kdt = kernel_dtype(weight2d.scalar_type());
  TORCH_CHECK(be == Backend::CPU || out.scalar_type() == weight2d.scalar_type(),
              "decode_rows: widening is a CPU path feature");
  if (be == Backend::CPU) {
    cpu::decode_rows(weight2d, bits, n0, out);
  } else if (kdt) {
    const int64_t words = bits.size(1);
    const char* w =
        static_cast<const char*>(weight2d.data_ptr()) + n0 * K * weight2d.element_size();
    CPG_RUN_LAUNCHER(be, weight2d, apply_bits, *kdt, w, bits.data_ptr<int32_t>() + n0 * words,
                     out.data_ptr(), rows, K);
  } else {
    // float64 on a kernel backend: the kernels do not take it; decode through
    // the bit-unpack kernel and one masked select over this tile only.
    const at::Tensor tile_mask = unpack_bits(bits.narrow(0, n0, rows), K);
    out.copy_(at::where(tile_mask, weight2d.narrow(0, n0, rows), at::zeros({}, out.options())));
  }
}

at::Tensor decode_rows(const at::Tensor& weight2d, const at::Tensor& bits, int64_t n0, int64_t rows,
                       std::optional<at::ScalarType> dtype) {
  const at::ScalarType dt = dtype.value_or(weight2d.scalar_type());
  at::Tensor out = at::empty({rows, weight2d.size(1)}, weight2d.options().dtype(dt));
  decode_rows_into(weight2d, bits, n0, out);
  return out;
}

at::Tensor apply_bits(const at::Tensor& weight, const at::Tensor& bits) {
  check_floating(weight, "weight");
  const MatrixShape s = matrix_shape(weight);
  check_bits(bits, weight, s);
  const at::Tensor w = weight.contiguous().view({s.N, s.K});
  at::Tensor out =
      at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor out2d = out.view({s.N, s.K});
  decode_rows_into(w, bits.contiguous(), 0, out2d);
  return out;
}

std::tuple<at::Tensor, at::Tensor> grad_epilogue(const at::Tensor& grad, const at::Tensor& weight,
                                                 const at::Tensor& owner, int64_t task,
                                                 bool mask_grad) {
  check_floating(weight, "weight");
  check_same_dtype(grad, weight, "grad", "weight");
  check_same_device(grad, weight, "grad", "weight");
  TORCH_CHECK_VALUE(grad.sizes() == weight.sizes(), "grad: expected the weight's shape ",
                    weight.sizes(), ", got ", grad.sizes());
  check_owner(owner, weight);
  check_task(task);
  const at::Tensor g = grad.contiguous(), w = weight.contiguous(), o = owner.contiguous();
  at::Tensor grad_w = at::empty_like(g, at::MemoryFormat::Contiguous);
  std::optional<at::Tensor> grad_m;
  if (mask_grad) grad_m = at::empty(g.sizes(), g.options().dtype(at::kFloat));
  const Backend be = backend_for(g);
  const auto kdt = kernel_dtype(g.scalar_type());
  if (be == Backend::CPU) {
    cpu::grad_epilogue(g, w, o, task, grad_w, grad_m);
  } else if (kdt) {
    CPG_RUN_LAUNCHER(be, g, grad_epilogue, *kdt, g.data_ptr(), w.data_ptr(), o.data_ptr<uint8_t>(),
                     static_cast<int>(task), grad_w.data_ptr(),
                     grad_m ? grad_m->data_ptr<float>() : nullptr, g.numel());
  } else {
    // float64 on a kernel backend (tests only): plain ATen, not fused.
    grad_w = g * (o == task);
    if (grad_m) *grad_m = (g * w * ((o > 0) & (o < task))).to(at::kFloat);
  }
  return {grad_w, grad_m ? *grad_m : at::empty({0}, g.options().dtype(at::kFloat))};
}

}  // namespace cpg::ops
