#include "cpu/mask_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <bitset>

#include "core/mask_format.h"

namespace cpg::cpu {

namespace {
constexpr int64_t kRowGrain = 16;  // rows per parallel task: rows are independent

// Builds one packed row from a predicate on its columns.
template <typename Pred>
void pack_row(int32_t* row, int64_t K, Pred picked) {
  const int64_t words = cpg::words_per_row(K);
  for (int64_t w = 0; w < words; ++w) {
    uint32_t word = 0;
    const int64_t end = std::min<int64_t>(K, (w + 1) * cpg::kBitsPerWord);
    for (int64_t k = w * cpg::kBitsPerWord; k < end; ++k) {
      if (picked(k)) word |= cpg::bit_of(k);
    }
    row[w] = static_cast<int32_t>(word);
  }
}
}  // namespace

at::Tensor pack_bits(const at::Tensor& mask2d) {
  const int64_t N = mask2d.size(0), K = mask2d.size(1);
  auto bits = at::empty({N, cpg::words_per_row(K)}, mask2d.options().dtype(at::kInt));
  const bool* m = mask2d.data_ptr<bool>();
  int32_t* b = bits.data_ptr<int32_t>();
  at::parallel_for(0, N, kRowGrain, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const bool* mr = m + n * K;
      pack_row(b + n * bits.size(1), K, [&](int64_t k) { return mr[k]; });
    }
  });
  return bits;
}

at::Tensor unpack_bits(const at::Tensor& bits, int64_t K) {
  const int64_t N = bits.size(0), words = bits.size(1);
  auto mask = at::empty({N, K}, bits.options().dtype(at::kBool));
  const int32_t* b = bits.data_ptr<int32_t>();
  bool* m = mask.data_ptr<bool>();
  at::parallel_for(0, N, kRowGrain, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t k = 0; k < K; ++k) m[n * K + k] = cpg::test_bit(b + n * words, k);
    }
  });
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
  const int t = static_cast<int>(task);
  int32_t* b = bits.data_ptr<int32_t>();
  at::parallel_for(0, N, kRowGrain, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* orow = o + n * K;
      pack_row(b + n * words, K, [&](int64_t k) {
        const bool picked = pb ? cpg::test_bit(pb + n * words, k)
                               : (m ? cpg::picked_by_mask(m[n * K + k], th) : true);
        return cpg::is_active(orow[k], t, picked);
      });
    }
  });
  return bits;
}

at::Tensor owner_histogram(const at::Tensor& owner) {
  auto counts = at::zeros({256}, owner.options().dtype(at::kLong));
  const uint8_t* o = owner.data_ptr<uint8_t>();
  int64_t* c = counts.data_ptr<int64_t>();
  for (int64_t i = 0, n = owner.numel(); i < n; ++i) ++c[o[i]];
  return counts;
}

at::Tensor count_bits(const at::Tensor& bits) {
  const int64_t N = bits.size(0), words = bits.size(1);
  auto counts = at::empty({N}, bits.options().dtype(at::kLong));
  const int32_t* b = bits.data_ptr<int32_t>();
  int64_t* c = counts.data_ptr<int64_t>();
  for (int64_t n = 0; n < N; ++n) {
    int64_t total = 0;
    for (int64_t w = 0; w < words; ++w) {
      total += std::bitset<32>(static_cast<uint32_t>(b[n * words + w])).count();
    }
    c[n] = total;
  }
  return counts;
}

void decode_rows(const at::Tensor& w2d, const at::Tensor& bits, int64_t n0, at::Tensor& out) {
  const int64_t rows = out.size(0), K = w2d.size(1), words = bits.size(1);
  const int32_t* b = bits.data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w2d.scalar_type(), "decode_rows", [&] {
    const scalar_t* w = w2d.data_ptr<scalar_t>() + n0 * K;
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, kRowGrain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int32_t* brow = b + (n0 + r) * words;
        for (int64_t k = 0; k < K; ++k) {
          dst[r * K + k] = cpg::test_bit(brow, k) ? w[r * K + k] : scalar_t(0);
        }
      }
    });
  });
}

void grad_epilogue(const at::Tensor& G, const at::Tensor& w, const at::Tensor& owner,
                   int64_t task, at::Tensor& grad_w, std::optional<at::Tensor>& grad_m) {
  const int64_t n = G.numel();
  const uint8_t* o = owner.data_ptr<uint8_t>();
  float* gm = grad_m ? grad_m->data_ptr<float>() : nullptr;
  const int t = static_cast<int>(task);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, G.scalar_type(), "grad_epilogue", [&] {
    const scalar_t* g = G.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* gw = grad_w.data_ptr<scalar_t>();
    at::parallel_for(0, n, 4096, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        gw[i] = cpg::is_trainable(o[i], t) ? g[i] : scalar_t(0);
        if (gm) {
          gm[i] = cpg::is_pickable(o[i], t)
                      ? static_cast<float>(g[i]) * static_cast<float>(wp[i])
                      : 0.0f;
        }
      }
    });
  });
}

}  // namespace cpg::cpu
