#include "cpu/mask_cpu.h"

#include <ATen/Dispatch.h>

#include "core/mask_format.h"
#include "cpu/aten_dtype.h"
#include "cpu/isa.h"
#include "cpu/parallel.h"

namespace cpg::cpu {

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

}  // namespace cpg::cpu
