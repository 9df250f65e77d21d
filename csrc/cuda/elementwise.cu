// The element-wise launchers of launchers.h: packing, unpacking and deriving
// mask bits, owner histograms, bit counts, applying bits to a dense tensor,
// and the fused gradient epilogue.
//
// Bit work runs one packed word per thread: a word covers 32 consecutive
// columns of one row, which the thread reads with 16-byte loads when the span
// is whole and aligned (element by element otherwise: row tails, odd K,
// offset views) and folds into one word in registers. Every loop is
// grid-stride, so any size runs on a grid of a few waves.
#include "core/mask_format.h"
#include "cuda/grad_rule.cuh"
#include "cuda/kernel_utils.cuh"

namespace cpg {
namespace CPG_KERNEL_NS {
namespace {

constexpr int kThreads = 256;

// The columns one packed word covers: row `row`, columns [k0, k0 + count).
struct WordSpan {
  int64_t row;
  int64_t k0;
  int count;
};

CPG_DEVICE WordSpan word_span(int64_t word_index, int64_t words, int64_t K) {
  WordSpan s;
  s.row = word_index / words;
  s.k0 = (word_index - s.row * words) * kBitsPerWord;
  const int64_t left = K - s.k0;
  s.count = static_cast<int>(left < kBitsPerWord ? left : kBitsPerWord);
  return s;
}

// ------------------------------------------------------------ pack / unpack

CPG_GLOBAL void pack_bits_kernel(const uint8_t* mask, int32_t* bits, int64_t K, int64_t words,
                                 int64_t total_words) {
  for (int64_t i = global_thread_index(); i < total_words; i += global_thread_count()) {
    const WordSpan s = word_span(i, words, K);
    uint8_t m[kBitsPerWord] = {};  // columns past K stay 0: padding bits are zero
    load_prefix(mask + s.row * K + s.k0, s.count, m);
    uint32_t word = 0;
#pragma unroll
    for (int j = 0; j < kBitsPerWord; ++j) {
      if (m[j] != 0) word |= bit_of(j);
    }
    bits[i] = static_cast<int32_t>(word);
  }
}

CPG_GLOBAL void unpack_bits_kernel(const int32_t* bits, uint8_t* mask, int64_t K, int64_t words,
                                   int64_t total_words) {
  for (int64_t i = global_thread_index(); i < total_words; i += global_thread_count()) {
    const WordSpan s = word_span(i, words, K);
    const uint32_t word = static_cast<uint32_t>(bits[i]);
    uint8_t m[kBitsPerWord];
#pragma unroll
    for (int j = 0; j < kBitsPerWord; ++j) m[j] = (word & bit_of(j)) != 0u ? 1 : 0;
    store_prefix(mask + s.row * K + s.k0, s.count, m);
  }
}

// ---------------------------------------------------------------- active set

// Where the picks of older tasks' weights come from (see active_bits).
struct PickSource {
  const int32_t* bits;  // packed picks, or null
  const float* mask;    // real-valued picking mask, or null
  float threshold;
};

// The pick word of one span: from the packed picks, from mask > threshold, or
// every column when there is neither.
CPG_DEVICE uint32_t pick_word(const PickSource& picks, int64_t word_index, const WordSpan& s,
                              int64_t K) {
  if (picks.bits != nullptr) return static_cast<uint32_t>(picks.bits[word_index]);
  if (picks.mask == nullptr) return 0xFFFFFFFFu;
  float m[kBitsPerWord] = {};
  load_prefix(picks.mask + s.row * K + s.k0, s.count, m);
  uint32_t word = 0;
#pragma unroll
  for (int j = 0; j < kBitsPerWord; ++j) {
    if (picked_by_mask(m[j], picks.threshold)) word |= bit_of(j);
  }
  return word;
}

CPG_GLOBAL void active_bits_kernel(const uint8_t* owner, int task, PickSource picks, int32_t* bits,
                                   int64_t K, int64_t words, int64_t total_words) {
  for (int64_t i = global_thread_index(); i < total_words; i += global_thread_count()) {
    const WordSpan s = word_span(i, words, K);
    uint8_t own[kBitsPerWord] = {};  // owner 0 (free) is never active: padding stays zero
    load_prefix(owner + s.row * K + s.k0, s.count, own);
    const uint32_t picked = pick_word(picks, i, s, K);
    uint32_t word = 0;
#pragma unroll
    for (int j = 0; j < kBitsPerWord; ++j) {
      if (is_active(own[j], task, (picked & bit_of(j)) != 0u)) word |= bit_of(j);
    }
    bits[i] = static_cast<int32_t>(word);
  }
}

// ----------------------------------------------------------- owner histogram

constexpr int kOwnerValues = 256;

// Counts a stream of values into a shared histogram, one atomic per run of
// equal values: owners come in long runs (whole rows or layers belong to one
// task), so this spares the hot bin most of its contention.
struct RunCounter {
  uint32_t* hist;
  uint32_t value;
  uint32_t run;

  CPG_DEVICE void add(uint32_t v) {
    if (v != value) {
      flush();
      value = v;
    }
    ++run;
  }
  CPG_DEVICE void flush() {
    if (run != 0u) cpgdev::atomic_add(&hist[value], run);
    run = 0;
  }
};

CPG_GLOBAL void fill_zero_kernel(int64_t* p, int64_t n) {
  for (int64_t i = global_thread_index(); i < n; i += global_thread_count()) p[i] = 0;
}

// Each block counts into shared memory, then adds its non-empty bins to the
// global counts. `vec_count` 16-byte vectors come first (0 when owner is
// misaligned), the remaining bytes one by one.
CPG_GLOBAL void owner_histogram_kernel(const uint8_t* owner, int64_t numel, int64_t vec_count,
                                       unsigned long long* counts) {
  CPG_SHARED_ARRAY(uint32_t, hist, kOwnerValues);
  for (int i = static_cast<int>(threadIdx.x); i < kOwnerValues; i += blockDim.x) hist[i] = 0;
  cpgdev::syncthreads();

  RunCounter counter{hist, 0u, 0u};
  constexpr int kPerVec = vec_elems<uint8_t>();
  for (int64_t v = global_thread_index(); v < vec_count; v += global_thread_count()) {
    uint8_t o[kPerVec];
    load_vec(owner + v * kPerVec, o);
#pragma unroll
    for (int j = 0; j < kPerVec; ++j) counter.add(o[j]);
  }
  for (int64_t i = vec_count * kPerVec + global_thread_index(); i < numel;
       i += global_thread_count()) {
    counter.add(owner[i]);
  }
  counter.flush();
  cpgdev::syncthreads();

  for (int i = static_cast<int>(threadIdx.x); i < kOwnerValues; i += blockDim.x) {
    if (hist[i] != 0u) cpgdev::atomic_add(&counts[i], static_cast<unsigned long long>(hist[i]));
  }
}

// ---------------------------------------------------------------- bit counts

// One warp per row: lanes stride over the row's words, then a warp sum.
CPG_GLOBAL void count_bits_kernel(const int32_t* bits, int64_t N, int64_t words,
                                  int64_t* row_counts) {
  const int lane = cpgdev::lane_id();
  const int64_t warps = global_thread_count() / kWarpSize;
  // The row loop is warp-uniform, so every lane reaches the shuffles.
  for (int64_t row = global_thread_index() / kWarpSize; row < N; row += warps) {
    uint32_t count = 0;
    for (int64_t w = lane; w < words; w += kWarpSize) {
      count += static_cast<uint32_t>(popcount32(static_cast<uint32_t>(bits[row * words + w])));
    }
    count = warp_sum(count);
    if (lane == 0) row_counts[row] = static_cast<int64_t>(count);
  }
}

// ---------------------------------------------------------------- apply bits

// Works on the raw storage (Raw = an unsigned integer of the element's size):
// a kept element is copied bit for bit, a dropped one becomes all-zero bits,
// which is +0 in every float format.
template <typename Raw>
CPG_GLOBAL void apply_bits_kernel(const Raw* w, const int32_t* bits, Raw* out, int64_t K,
                                  int64_t words, int64_t total_words) {
  for (int64_t i = global_thread_index(); i < total_words; i += global_thread_count()) {
    const WordSpan s = word_span(i, words, K);
    const int64_t offset = s.row * K + s.k0;
    Raw v[kBitsPerWord] = {};
    load_prefix(w + offset, s.count, v);
    const uint32_t word = static_cast<uint32_t>(bits[i]);
#pragma unroll
    for (int j = 0; j < kBitsPerWord; ++j) {
      if ((word & bit_of(j)) == 0u) v[j] = 0;
    }
    store_prefix(out + offset, s.count, v);
  }
}

// ------------------------------------------------------------- grad epilogue

// Chunks of kChunk elements keep every stream on 16-byte accesses (the owner
// bytes included); `vec_chunks` of them (0 unless all pointers are aligned),
// then the rest element by element. W is read only when grad_m is wanted. W
// and dW are stored as WT: T, or fp32 beside 16-bit G (the mixed form of a
// training step under autocast), whose W is rounded to T for the mask
// gradient and whose dW is the T value widened: the cast form's values.
template <typename T, typename WT>
CPG_GLOBAL void grad_epilogue_kernel(const T* G, const WT* w, const uint8_t* owner, int task,
                                     WT* grad_w, float* grad_m, int64_t numel, int64_t vec_chunks) {
  constexpr int kChunk = vec_elems<uint8_t>();
  for (int64_t c = global_thread_index(); c < vec_chunks; c += global_thread_count()) {
    const int64_t i0 = c * kChunk;
    T g[kChunk];
    uint8_t own[kChunk];
    load_vec(G + i0, g);
    load_vec(owner + i0, own);
    WT gw[kChunk];
#pragma unroll
    for (int j = 0; j < kChunk; ++j) gw[j] = widened<WT>(weight_grad_of(g[j], own[j], task));
    store_vec(grad_w + i0, gw);
    if (grad_m != nullptr) {
      WT wv[kChunk];
      load_vec(w + i0, wv);
      float gm[kChunk];
#pragma unroll
      for (int j = 0; j < kChunk; ++j) {
        gm[j] = mask_grad_of(g[j], narrowed<T>(wv[j]), own[j], task);
      }
      store_vec(grad_m + i0, gm);
    }
  }
  for (int64_t i = vec_chunks * kChunk + global_thread_index(); i < numel;
       i += global_thread_count()) {
    grad_w[i] = widened<WT>(weight_grad_of(G[i], owner[i], task));
    if (grad_m != nullptr) grad_m[i] = mask_grad_of(G[i], narrowed<T>(w[i]), owner[i], task);
  }
}

template <typename E>
struct RawOf;
template <>
struct RawOf<float> {
  using type = uint32_t;
};
template <>
struct RawOf<cpgdev::f16> {
  using type = uint16_t;
};
template <>
struct RawOf<cpgdev::bf16> {
  using type = uint16_t;
};

}  // namespace

// ------------------------------------------------------------------ launchers

void pack_bits(const bool* mask, int32_t* bits, int64_t N, int64_t K, void* stream) {
  const int64_t words = words_per_row(K), total = N * words;
  if (total == 0) return;
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(mask);
  CPG_LAUNCH(pack_bits_kernel, grid_stride_blocks(total, kThreads), kThreads, 0, as_stream(stream),
             bytes, bits, K, words, total);
}

void unpack_bits(const int32_t* bits, bool* mask, int64_t N, int64_t K, void* stream) {
  const int64_t words = words_per_row(K), total = N * words;
  if (total == 0) return;
  uint8_t* bytes = reinterpret_cast<uint8_t*>(mask);
  CPG_LAUNCH(unpack_bits_kernel, grid_stride_blocks(total, kThreads), kThreads, 0,
             as_stream(stream), bits, bytes, K, words, total);
}

void active_bits(const uint8_t* owner, int task, const int32_t* pick_bits, const float* mask,
                 float threshold, int32_t* bits, int64_t N, int64_t K, void* stream) {
  const int64_t words = words_per_row(K), total = N * words;
  if (total == 0) return;
  const PickSource picks{pick_bits, mask, threshold};
  CPG_LAUNCH(active_bits_kernel, grid_stride_blocks(total, kThreads), kThreads, 0,
             as_stream(stream), owner, task, picks, bits, K, words, total);
}

void owner_histogram(const uint8_t* owner, int64_t numel, int64_t* counts, void* stream) {
  const int64_t bins = kOwnerValues;
  CPG_LAUNCH(fill_zero_kernel, 1, kThreads, 0, as_stream(stream), counts, bins);
  if (numel == 0) return;
  // A block's shared bins are 32-bit: give each block well under 2^32 owners.
  constexpr int64_t kMaxPerBlock = int64_t{1} << 30;
  const int64_t blocks = grid_stride_blocks(numel, kThreads * vec_elems<uint8_t>());
  const int64_t grid =
      blocks > ceil_div(numel, kMaxPerBlock) ? blocks : ceil_div(numel, kMaxPerBlock);
  const int64_t vec_count = is_aligned16(owner) ? numel / vec_elems<uint8_t>() : 0;
  unsigned long long* out = reinterpret_cast<unsigned long long*>(counts);
  CPG_LAUNCH(owner_histogram_kernel, static_cast<unsigned>(grid), kThreads, 0, as_stream(stream),
             owner, numel, vec_count, out);
}

void count_bits(const int32_t* bits, int64_t N, int64_t words, int64_t* row_counts, void* stream) {
  if (N == 0) return;  // words == 0 still writes a 0 per row
  CPG_LAUNCH(count_bits_kernel, grid_stride_blocks(N * kWarpSize, kThreads), kThreads, 0,
             as_stream(stream), bits, N, words, row_counts);
}

void apply_bits(DType dtype, const void* w, const int32_t* bits, void* out, int64_t N, int64_t K,
                void* stream) {
  const int64_t words = words_per_row(K), total = N * words;
  if (total == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using Raw = typename RawOf<typename decltype(tag)::type>::type;
    const Raw* src = static_cast<const Raw*>(w);
    Raw* dst = static_cast<Raw*>(out);
    auto* kernel = &apply_bits_kernel<Raw>;
    CPG_LAUNCH(kernel, grid_stride_blocks(total, kThreads), kThreads, 0, as_stream(stream), src,
               bits, dst, K, words, total);
  });
}

namespace {

template <typename T, typename WT>
void launch_grad_epilogue(const T* g, const WT* wt, const uint8_t* owner, int task, WT* gw,
                          float* grad_m, int64_t numel, void* stream) {
  const bool aligned = is_aligned16(g) && is_aligned16(owner) && is_aligned16(gw) &&
                       (grad_m == nullptr || (is_aligned16(wt) && is_aligned16(grad_m)));
  constexpr int kChunk = vec_elems<uint8_t>();
  const int64_t vec_chunks = aligned ? numel / kChunk : 0;
  auto* grad_epilogue_pass = &grad_epilogue_kernel<T, WT>;  // the name in the launch log
  CPG_LAUNCH(grad_epilogue_pass, grid_stride_blocks(ceil_div(numel, kChunk), kThreads), kThreads, 0,
             as_stream(stream), g, wt, owner, task, gw, grad_m, numel, vec_chunks);
}

}  // namespace

void grad_epilogue(DType dtype, const void* G, const void* w, const uint8_t* owner, int task,
                   void* grad_w, float* grad_m, int64_t numel, void* stream) {
  if (numel == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_grad_epilogue(static_cast<const T*>(G), static_cast<const T*>(w), owner, task,
                         static_cast<T*>(grad_w), grad_m, numel, stream);
  });
}

void grad_epilogue_f32_weight(DType dtype, const void* G, const float* w, const uint8_t* owner,
                              int task, float* grad_w, float* grad_m, int64_t numel, void* stream) {
  if (numel == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (sizeof(T) == 2) {
      launch_grad_epilogue(static_cast<const T*>(G), w, owner, task, grad_w, grad_m, numel, stream);
    } else {
      throw std::invalid_argument(
          "cpg_kernels: grad_epilogue_f32_weight: G must be 16-bit (float16 or bfloat16)");
    }
  });
}

}  // namespace CPG_KERNEL_NS
}  // namespace cpg
