// The mask ops: packing, unpacking, active sets, usage counts, the masked copy
// (apply_bits) and the fused weight/mask-gradient pass (grad_epilogue); their
// checks, their routing to the CPU path, the CUDA kernels or the emulator, and
// their registration. The format and the active-set rule are those of
// core/mask_format.h.
#include "ops/mask_ops.h"

#include "core/mask_format.h"
#include "cpu/aten_dtype.h"
#include "cpu/isa.h"
#include "cpu/parallel.h"
#include "ops/autograd_support.h"
#include "ops/backend.h"
#include "ops/checks.h"
#include "ops/registration.h"

// ---------------------------------------------------------------- CPU path
//
// Contiguous, already checked tensors in; the row-parallel loops of
// cpu/kernels.h (one build per instruction set) do the work.
namespace cpg::cpu {
namespace {

at::Tensor pack_bits(const at::Tensor& mask2d) {
  const int64_t N = mask2d.size(0), K = mask2d.size(1), words = cpg::words_per_row(K);
  auto bits = at::empty({N, words}, mask2d.options().dtype(at::kInt));
  const bool* m = mask2d.data_ptr<bool>();
  int32_t* b = bits.data_ptr<int32_t>();
  const Kernels& k = kernels();
  parallel_over(
      N, K, [&](int64_t r0, int64_t r1) { k.pack_rows(m + r0 * K, b + r0 * words, r1 - r0, K); });
  return bits;
}

at::Tensor unpack_bits(const at::Tensor& bits, int64_t K) {
  const int64_t N = bits.size(0), words = bits.size(1);
  auto mask = at::empty({N, K}, bits.options().dtype(at::kBool));
  const int32_t* b = bits.data_ptr<int32_t>();
  bool* m = mask.data_ptr<bool>();
  const Kernels& k = kernels();
  parallel_over(
      N, K, [&](int64_t r0, int64_t r1) { k.unpack_rows(b + r0 * words, m + r0 * K, r1 - r0, K); });
  return mask;
}

at::Tensor active_bits(const at::Tensor& owner2d, int64_t task,
                       const std::optional<at::Tensor>& pick_bits,
                       const std::optional<at::Tensor>& mask2d, double threshold) {
  const int64_t N = owner2d.size(0), K = owner2d.size(1), words = cpg::words_per_row(K);
  auto bits = at::empty({N, words}, owner2d.options().dtype(at::kInt));
  const uint8_t* o = owner2d.data_ptr<uint8_t>();
  const int32_t* pb = pick_bits ? pick_bits->data_ptr<int32_t>() : nullptr;
  const float* m = mask2d ? mask2d->data_ptr<float>() : nullptr;
  const float th = static_cast<float>(threshold);
  int32_t* b = bits.data_ptr<int32_t>();
  const Kernels& k = kernels();
  parallel_over(N, K, [&](int64_t r0, int64_t r1) {
    k.active_rows(o + r0 * K, static_cast<int>(task), pb ? pb + r0 * words : nullptr,
                  m ? m + r0 * K : nullptr, th, b + r0 * words, r1 - r0, K);
  });
  return bits;
}

at::Tensor owner_histogram(const at::Tensor& owner) {
  constexpr int64_t kChunk = int64_t{1} << 20;  // entries per partial histogram
  const int64_t n = owner.numel(), chunks = (n + kChunk - 1) / kChunk;
  const uint8_t* o = owner.data_ptr<uint8_t>();
  const Kernels& k = kernels();
  if (chunks <= 1) {
    auto counts = at::zeros({256}, owner.options().dtype(at::kLong));
    k.histogram(o, n, counts.data_ptr<int64_t>());
    return counts;
  }
  auto partial = at::zeros({chunks, 256}, owner.options().dtype(at::kLong));
  int64_t* p = partial.data_ptr<int64_t>();
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      k.histogram(o + c * kChunk, std::min(kChunk, n - c * kChunk), p + c * 256);
    }
  });
  return partial.sum(0);
}

at::Tensor count_bits(const at::Tensor& bits) {
  const int64_t N = bits.size(0), words = bits.size(1);
  auto counts = at::empty({N}, bits.options().dtype(at::kLong));
  const int32_t* b = bits.data_ptr<int32_t>();
  int64_t* c = counts.data_ptr<int64_t>();
  const Kernels& k = kernels();
  parallel_over(N, 32 * words, [&](int64_t r0, int64_t r1) {
    k.count_rows(b + r0 * words, c + r0, r1 - r0, words);
  });
  return counts;
}

void decode_rows(const at::Tensor& w2d, const at::Tensor& bits, int64_t n0, at::Tensor& out) {
  const int64_t rows = out.size(0), K = w2d.size(1), words = bits.size(1);
  const int64_t eb = w2d.element_size(), out_eb = out.element_size();
  const char* w = static_cast<const char*>(w2d.data_ptr()) + n0 * K * eb;
  const int32_t* b = bits.data_ptr<int32_t>() + n0 * words;
  char* dst = static_cast<char*>(out.data_ptr());
  const Kernels& k = kernels();
  const bool widen = out.scalar_type() != w2d.scalar_type();
  TORCH_CHECK(!widen || (out.scalar_type() == at::kFloat && kernel_dtype(w2d.scalar_type())),
              "decode_rows: cannot decode ", w2d.scalar_type(), " into ", out.scalar_type());
  parallel_over(rows, K, [&](int64_t r0, int64_t r1) {
    if (widen) {
      k.decode_rows_float(*kernel_dtype(w2d.scalar_type()), w + r0 * K * eb, b + r0 * words,
                          reinterpret_cast<float*>(dst + r0 * K * out_eb), r1 - r0, K);
    } else {
      k.decode_rows(static_cast<int>(eb), w + r0 * K * eb, b + r0 * words, dst + r0 * K * eb,
                    r1 - r0, K);
    }
  });
}

namespace {

// float64 (tests, gradcheck): element by element.
void grad_epilogue_double(const at::Tensor& G, const at::Tensor& w, const uint8_t* o, int t,
                          at::Tensor& grad_w, float* gm) {
  const double* g = G.data_ptr<double>();
  const double* wp = w.data_ptr<double>();
  double* gw = grad_w.data_ptr<double>();
  parallel_over(G.numel(), 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      gw[i] = cpg::is_trainable(o[i], t) ? g[i] : 0.0;
      if (gm) {
        gm[i] =
            cpg::is_pickable(o[i], t) ? static_cast<float>(g[i]) * static_cast<float>(wp[i]) : 0.0f;
      }
    }
  });
}

}  // namespace

void grad_epilogue(const at::Tensor& G, const at::Tensor& w, const at::Tensor& owner, int64_t task,
                   at::Tensor& grad_w, std::optional<at::Tensor>& grad_m) {
  const uint8_t* o = owner.data_ptr<uint8_t>();
  float* gm = grad_m ? grad_m->data_ptr<float>() : nullptr;
  const int t = static_cast<int>(task);
  const auto dt = kernel_dtype(G.scalar_type());
  if (!dt) {
    TORCH_CHECK(G.scalar_type() == at::kDouble, "grad_epilogue: unsupported dtype ",
                G.scalar_type());
    grad_epilogue_double(G, w, o, t, grad_w, gm);
    return;
  }
  const int64_t n = G.numel(), eb = G.element_size();
  const char* g = static_cast<const char*>(G.data_ptr());
  const char* wp = static_cast<const char*>(w.data_ptr());
  char* gw = static_cast<char*>(grad_w.data_ptr());
  const Kernels& k = kernels();
  // Blocks of 32 entries (one mask word's worth), the last one partial.
  parallel_over((n + 31) / 32, 32, [&](int64_t b0, int64_t b1) {
    const int64_t i0 = b0 * 32, i1 = std::min(n, b1 * 32);
    k.grad_epilogue(*dt, g + i0 * eb, wp + i0 * eb, o + i0, t, gw + i0 * eb, gm ? gm + i0 : nullptr,
                    i1 - i0);
  });
}

}  // namespace
}  // namespace cpg::cpu

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

void grad_epilogue_into(const at::Tensor& G, const at::Tensor& w, const at::Tensor& owner,
                        int64_t task, at::Tensor& grad_w, std::optional<at::Tensor>& grad_m) {
  const Backend be = backend_for(G);
  const auto kdt = kernel_dtype(G.scalar_type());
  if (f32_weight_form(G, w)) {  // the mixed form: fp32 W and grad_w beside 16-bit G
    if (be != Backend::CPU) {
      CPG_RUN_LAUNCHER(be, G, grad_epilogue_f32_weight, *kdt, G.data_ptr(), w.data_ptr<float>(),
                       owner.data_ptr<uint8_t>(), static_cast<int>(task), grad_w.data_ptr<float>(),
                       grad_m ? grad_m->data_ptr<float>() : nullptr, G.numel());
      return;
    }
    // The CPU path has no mixed kernel: the rule on W cast, widened (the same values).
    at::Tensor narrow_w = at::empty_like(G);
    cpu::grad_epilogue(G, w.to(G.scalar_type()), owner, task, narrow_w, grad_m);
    grad_w.copy_(narrow_w);
    return;
  }
  if (be == Backend::CPU) {
    cpu::grad_epilogue(G, w, owner, task, grad_w, grad_m);
  } else if (kdt) {
    CPG_RUN_LAUNCHER(be, G, grad_epilogue, *kdt, G.data_ptr(), w.data_ptr(),
                     owner.data_ptr<uint8_t>(), static_cast<int>(task), grad_w.data_ptr(),
                     grad_m ? grad_m->data_ptr<float>() : nullptr, G.numel());
  } else {
    // float64 on a kernel backend (tests only): plain ATen, not fused.
    grad_w.copy_(G * (owner == task));
    if (grad_m) grad_m->copy_(G * w * ((owner > 0) & (owner < task)));
  }
}

std::tuple<at::Tensor, at::Tensor> grad_epilogue(const at::Tensor& grad, const at::Tensor& weight,
                                                 const at::Tensor& owner, int64_t task,
                                                 bool mask_grad) {
  check_floating(weight, "weight");
  // 16-bit grad against an fp32 weight is the mixed form: grad_w in fp32.
  if (!f32_weight_form(grad, weight)) check_same_dtype(grad, weight, "grad", "weight");
  check_same_device(grad, weight, "grad", "weight");
  TORCH_CHECK_VALUE(grad.sizes() == weight.sizes(), "grad: expected the weight's shape ",
                    weight.sizes(), ", got ", grad.sizes());
  check_owner(owner, weight);
  check_task(task);
  const at::Tensor g = grad.contiguous(), w = weight.contiguous(), o = owner.contiguous();
  at::Tensor grad_w =
      at::empty_like(g, g.options().dtype(w.scalar_type()), at::MemoryFormat::Contiguous);
  std::optional<at::Tensor> grad_m;
  if (mask_grad) grad_m = at::empty(g.sizes(), g.options().dtype(at::kFloat));
  grad_epilogue_into(g, w, o, task, grad_w, grad_m);
  return {grad_w, grad_m ? *grad_m : at::empty({0}, g.options().dtype(at::kFloat))};
}

// ---------------------------------------------------------------- autograd

namespace {

const auto& apply_bits_op() { return op<&apply_bits>("cpg::apply_bits"); }

// Arguments: weight 0, bits 1. The gradient of W * bits is dy * bits.
struct ApplyBits : torch::autograd::Function<ApplyBits> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& weight, Constant bits) {
    ctx->save_for_backward({bits.tensor});
    Below below;
    return apply_bits_op().call(weight, bits.tensor);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(2);
    {
      Below below;
      out[0] = apply_bits_op().call(grads[0], ctx->get_saved_variables()[0]);
    }
    return once_differentiable(std::move(out), {grads[0]}, "cpg::apply_bits");
  }
};

at::Tensor apply_bits_autograd(const at::Tensor& weight, const at::Tensor& bits) {
  if (!torch::autograd::compute_requires_grad(weight)) {
    Below below;
    return apply_bits_op().call(weight, bits);
  }
  return ApplyBits::apply(weight, Constant{bits});
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(cpg, m) {
  define_op(m, "pack_bits(Tensor mask) -> Tensor", &pack_bits);
  define_op(m, "unpack_bits(Tensor bits, int K) -> Tensor", &unpack_bits);
  // No default threshold: its one home is cpg_kernels.masks.DEFAULT_THRESHOLD.
  define_op(m,
            "active_bits(Tensor owner, int task, Tensor? mask, Tensor? pick_bits, "
            "float threshold) -> Tensor",
            &active_bits);
  define_op(m, "owner_histogram(Tensor owner) -> Tensor", &owner_histogram);
  define_op(m, "count_bits(Tensor bits) -> Tensor", &count_bits);
  define_op(m, "apply_bits(Tensor weight, Tensor bits) -> Tensor", &apply_bits);
  define_op(m,
            "grad_epilogue(Tensor grad, Tensor weight, Tensor owner, int task, bool mask_grad) "
            "-> (Tensor, Tensor)",
            &grad_epilogue);
  for (const char* name :
       {"pack_bits", "unpack_bits", "active_bits", "owner_histogram", "count_bits"}) {
    skip_autograd(m, name);
  }
  autograd_kernel(m, "apply_bits", &apply_bits_autograd);
  // grad_epilogue is a backward piece (see linear_ops.cpp).
}

}  // namespace cpg::ops
