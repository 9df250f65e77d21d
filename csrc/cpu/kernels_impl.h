// The CPU path's loops, once, over a vector policy `S` (simd_*.h): 8 fp32
// lanes per vector, mask words taken 8 or 32 bits at a time in the layout of
// core/mask_format.h (column k is bit k & 31 of word k >> 5, LSB first).
//
// Textually included by kernels_{scalar,avx2,avx512}.cpp inside their own
// namespace after `using S = ...;` and `#define CPG_ISA_NAME "..."`; includes
// nothing. Defines `kTable`.
//
// Summation orders (what makes results reproducible, see docs/architecture.md):
// - small_batch_linear: column k multiply-adds into lane k % 8 of one
//   accumulator in increasing k; the lanes are summed by S::hsum's fixed
//   tree, then the bias is added. Nothing depends on the batch, the task
//   count, the blocking or the thread split.
// - small_batch_grad_input: each dx element is a chain of multiply-adds over
//   n = 0..N-1 in order, from 0. Same independence.
// - everything else is exact (selects, compares, integer counts).

template <class T>
inline T imin(T a, T b) {
  return a < b ? a : b;
}

template <DType E>
constexpr int elem_bytes() {
  return E == DType::F32 ? 4 : 2;
}

// ----------------------------------------------------------------- decode

inline void select_word(int eb, const void* src, uint32_t w, void* dst) {
  if (eb == 4) {
    S::select4(src, w, dst);
  } else if (eb == 2) {
    S::select2(src, w, dst);
  } else {  // float64: not a hot path
    const char* s = static_cast<const char*>(src);
    char* d = static_cast<char*>(dst);
    for (int i = 0; i < 32; ++i) {
      if ((w >> i) & 1u) {
        std::memcpy(d + i * eb, s + i * eb, eb);
      } else {
        std::memset(d + i * eb, 0, eb);
      }
    }
  }
}

inline void decode_rows(int eb, const void* w, const int32_t* bits, void* out, int64_t rows,
                        int64_t K) {
  const int64_t words = words_per_row(K), full = K / kBitsPerWord, rem = K - full * 32;
  const int64_t row_bytes = K * eb;
  for (int64_t r = 0; r < rows; ++r) {
    const char* wr = static_cast<const char*>(w) + r * row_bytes;
    char* orow = static_cast<char*>(out) + r * row_bytes;
    const int32_t* br = bits + r * words;
    for (int64_t i = 0; i < full; ++i) {
      select_word(eb, wr + i * 32 * eb, static_cast<uint32_t>(br[i]), orow + i * 32 * eb);
    }
    if (rem) {
      char src[32 * 8] = {}, dst[32 * 8];
      std::memcpy(src, wr + full * 32 * eb, rem * eb);
      select_word(eb, src, static_cast<uint32_t>(br[full]) & tail_mask(K), dst);
      std::memcpy(orow + full * 32 * eb, dst, rem * eb);
    }
  }
}

template <DType E>
inline void decode_rows_float_typed(const void* w, const int32_t* bits, float* out, int64_t rows,
                                    int64_t K);

inline void decode_rows_float(DType dt, const void* w, const int32_t* bits, float* out,
                              int64_t rows, int64_t K) {
  switch (dt) {
    case DType::F32: return decode_rows(4, w, bits, out, rows, K);
    case DType::F16: return decode_rows_float_typed<DType::F16>(w, bits, out, rows, K);
    case DType::BF16: return decode_rows_float_typed<DType::BF16>(w, bits, out, rows, K);
  }
}

// ------------------------------------------------------ pack, unpack, active

inline void pack_rows(const bool* mask, int32_t* bits, int64_t rows, int64_t K) {
  const int64_t words = words_per_row(K), full = K / kBitsPerWord, rem = K - full * 32;
  for (int64_t r = 0; r < rows; ++r) {
    const bool* m = mask + r * K;
    int32_t* b = bits + r * words;
    for (int64_t i = 0; i < full; ++i) b[i] = static_cast<int32_t>(S::nonzero_bits(m + 32 * i));
    if (rem) {
      bool t[32] = {};
      std::memcpy(t, m + full * 32, rem);
      b[full] = static_cast<int32_t>(S::nonzero_bits(t));  // padding stays 0
    }
  }
}

inline void unpack_rows(const int32_t* bits, bool* mask, int64_t rows, int64_t K) {
  const int64_t words = words_per_row(K), full = K / kBitsPerWord, rem = K - full * 32;
  for (int64_t r = 0; r < rows; ++r) {
    bool* m = mask + r * K;
    const int32_t* b = bits + r * words;
    for (int64_t i = 0; i < full; ++i) S::bools_from_bits(static_cast<uint32_t>(b[i]), m + 32 * i);
    if (rem) {
      bool t[32];
      S::bools_from_bits(static_cast<uint32_t>(b[full]), t);
      std::memcpy(m + full * 32, t, rem);
    }
  }
}

// One word of the active set (core/mask_format.h's is_active, 32 at a time).
inline uint32_t active_word(const uint8_t* o, int task, uint32_t picked) {
  return S::trainable_bits(o, task) | (S::pickable_bits(o, task) & picked);
}

inline void active_rows(const uint8_t* owner, int task, const int32_t* pick_bits, const float* mask,
                        float threshold, int32_t* bits, int64_t rows, int64_t K) {
  const int64_t words = words_per_row(K), full = K / kBitsPerWord, rem = K - full * 32;
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* o = owner + r * K;
    const float* m = mask ? mask + r * K : nullptr;
    const int32_t* pb = pick_bits ? pick_bits + r * words : nullptr;
    int32_t* b = bits + r * words;
    for (int64_t i = 0; i < full; ++i) {
      const uint32_t picked =
          pb ? static_cast<uint32_t>(pb[i]) : (m ? S::picked_bits(m + 32 * i, threshold) : ~0u);
      b[i] = static_cast<int32_t>(active_word(o + 32 * i, task, picked));
    }
    if (rem) {  // padding: owner 0 is never active, so its bits stay 0
      uint8_t ot[32] = {};
      float mt[32] = {};
      std::memcpy(ot, o + full * 32, rem);
      if (m) std::memcpy(mt, m + full * 32, rem * sizeof(float));
      const uint32_t picked =
          pb ? static_cast<uint32_t>(pb[full]) : (m ? S::picked_bits(mt, threshold) : ~0u);
      b[full] = static_cast<int32_t>(active_word(ot, task, picked));
    }
  }
}

inline void count_rows(const int32_t* bits, int64_t* counts, int64_t rows, int64_t words) {
  for (int64_t r = 0; r < rows; ++r) {
    int64_t total = 0;
    for (int64_t i = 0; i < words; ++i) {
      total += __builtin_popcount(static_cast<uint32_t>(bits[r * words + i]));
    }
    counts[r] = total;
  }
}

// Four interleaved 32-bit histograms, so that runs of one owner value do not
// serialize on one counter; flushed before they could overflow.
inline void histogram(const uint8_t* owner, int64_t n, int64_t* counts) {
  constexpr int64_t kFlush = int64_t{1} << 30;
  uint32_t h[4][256];
  for (int64_t s = 0; s < n; s += kFlush) {
    std::memset(h, 0, sizeof(h));
    const int64_t e = imin(n, s + kFlush);
    int64_t i = s;
    for (; i + 4 <= e; i += 4) {
      ++h[0][owner[i]];
      ++h[1][owner[i + 1]];
      ++h[2][owner[i + 2]];
      ++h[3][owner[i + 3]];
    }
    for (; i < e; ++i) ++h[0][owner[i]];
    for (int v = 0; v < 256; ++v) counts[v] += int64_t{h[0][v]} + h[1][v] + h[2][v] + h[3][v];
  }
}

// ------------------------------------------------------------ grad epilogue

template <DType E>
inline void epilogue_block(const char* g, const char* w, const uint8_t* o, int task, char* gw,
                           float* gm) {
  constexpr int eb = elem_bytes<E>();
  if constexpr (eb == 4) {
    S::select4(g, S::trainable_bits(o, task), gw);
  } else {
    S::select2(g, S::trainable_bits(o, task), gw);
  }
  if (gm) {
    const uint32_t pick = S::pickable_bits(o, task);
    for (int j = 0; j < 4; ++j) {
      const auto p =
          S::mul(S::template load<E>(g + 8 * j * eb), S::template load<E>(w + 8 * j * eb));
      S::template store<DType::F32>(gm + 8 * j, S::keep(p, pick >> (8 * j)));
    }
  }
}

template <DType E>
inline void grad_epilogue_typed(const void* G, const void* W, const uint8_t* owner, int task,
                                void* grad_w, float* grad_m, int64_t n) {
  constexpr int eb = elem_bytes<E>();
  const char* g = static_cast<const char*>(G);
  const char* w = static_cast<const char*>(W);
  char* gw = static_cast<char*>(grad_w);
  const int64_t full = n / 32 * 32;
  for (int64_t i = 0; i < full; i += 32) {
    epilogue_block<E>(g + i * eb, w + i * eb, owner + i, task, gw + i * eb,
                      grad_m ? grad_m + i : nullptr);
  }
  if (const int64_t rem = n - full) {  // padding: owner 0 gets no gradient
    char gt[32 * 4] = {}, wt[32 * 4] = {}, gwt[32 * 4];
    uint8_t ot[32] = {};
    float gmt[32];
    std::memcpy(gt, g + full * eb, rem * eb);
    std::memcpy(wt, w + full * eb, rem * eb);
    std::memcpy(ot, owner + full, rem);
    epilogue_block<E>(gt, wt, ot, task, gwt, grad_m ? gmt : nullptr);
    std::memcpy(gw + full * eb, gwt, rem * eb);
    if (grad_m) std::memcpy(grad_m + full, gmt, rem * sizeof(float));
  }
}

inline void grad_epilogue(DType dt, const void* G, const void* W, const uint8_t* owner, int task,
                          void* grad_w, float* grad_m, int64_t n) {
  switch (dt) {
    case DType::F32: return grad_epilogue_typed<DType::F32>(G, W, owner, task, grad_w, grad_m, n);
    case DType::F16: return grad_epilogue_typed<DType::F16>(G, W, owner, task, grad_w, grad_m, n);
    case DType::BF16: return grad_epilogue_typed<DType::BF16>(G, W, owner, task, grad_w, grad_m, n);
  }
}

// ------------------------------------------------------ small-batch linear
//
// R weight rows at a time (R memory streams) against MB input rows: each
// 32-column word of a row's mask bits decodes its 32 weights vector by vector
// in registers as they are loaded (no decoded tile exists), and every input
// row multiplies them into its own accumulator. The input rows (at most 16)
// stay in L1/L2; later blocks of input rows re-read the R weight rows from L1.

// Lanes of vector v (8 columns from 8v) inside the first `n` columns of a word.
inline int lanes_in(int n, int v) {
  const int left = n - 8 * v;
  return left >= 8 ? 8 : (left > 0 ? left : 0);
}

// The 32 elements of one mask word into 4 vectors; `n` < 32: only the first
// n columns are read, the rest are 0.
template <DType E>
inline void load_word(const char* p, uint32_t bits, typename S::F (&v)[4]) {
  const typename S::Word w = S::word(bits);
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) v[j] = S::template load_lanes<E>(p + 8 * j * elem_bytes<E>(), w, j);
}
template <DType E>
inline void load_word_n(const char* p, uint32_t bits, int n, typename S::F (&v)[4]) {
  const typename S::Word w = S::word(bits);
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    const int nv = lanes_in(n, j);
    const char* q = p + 8 * j * elem_bytes<E>();
    v[j] = nv == 8 ? S::template load_lanes<E>(q, w, j)
                   : (nv > 0 ? S::template load_lanes_n<E>(q, w, j, nv) : S::zero());
  }
}

template <DType E>
inline void decode_rows_float_typed(const void* w, const int32_t* bits, float* out, int64_t rows,
                                    int64_t K) {
  constexpr int eb = elem_bytes<E>();
  const int64_t words = words_per_row(K), full = K / kBitsPerWord;
  const int rem = static_cast<int>(K - full * 32);
  for (int64_t r = 0; r < rows; ++r) {
    const char* wr = static_cast<const char*>(w) + r * K * eb;
    float* orow = out + r * K;
    typename S::F v[4];
    for (int64_t i = 0; i < full; ++i) {
      load_word<E>(wr + 32 * i * eb, static_cast<uint32_t>(bits[r * words + i]), v);
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) S::template store<DType::F32>(orow + 32 * i + 8 * j, v[j]);
    }
    if (rem) {
      load_word_n<E>(wr + 32 * full * eb, static_cast<uint32_t>(bits[r * words + full]), rem, v);
      for (int j = 0; j < 4 && lanes_in(rem, j) > 0; ++j) {
        const int nv = lanes_in(rem, j);
        float* p = orow + 32 * full + 8 * j;
        if (nv == 8) {
          S::template store<DType::F32>(p, v[j]);
        } else {
          S::template store_n<DType::F32>(p, v[j], nv);
        }
      }
    }
  }
}

// out[r][i] = sum over k of x[i, k] * w'[r, k] for weight rows r < R (ld K) and
// input rows i < MB: column k multiply-adds into lane k % 8 of one
// accumulator in increasing k, then S::hsum.
template <DType E, int R, int MB>
inline void linear_rows(const float* x, int64_t K, const char* w, const int32_t* bits,
                        int64_t words, float (&out)[R][MB]) {
  constexpr int eb = elem_bytes<E>();
  using F = typename S::F;
  F acc[R][MB];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int i = 0; i < MB; ++i) acc[r][i] = S::zero();
  }
  const int64_t full = K / kBitsPerWord;
  for (int64_t wd = 0; wd < full; ++wd) {
    typename S::Word bw[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) bw[r] = S::word(static_cast<uint32_t>(bits[r * words + wd]));
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      F xv[MB];
#pragma GCC unroll 4
      for (int i = 0; i < MB; ++i) {
        xv[i] = S::template load<DType::F32>(x + i * K + 32 * wd + 8 * v);
      }
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const F wr = S::template load_lanes<E>(w + (r * K + 32 * wd + 8 * v) * eb, bw[r], v);
#pragma GCC unroll 4
        for (int i = 0; i < MB; ++i) acc[r][i] = S::fma(xv[i], wr, acc[r][i]);
      }
    }
  }
  if (const int n = static_cast<int>(K - full * 32)) {  // the last, partial word
    F wv[R][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      load_word_n<E>(w + (r * K + 32 * full) * eb, static_cast<uint32_t>(bits[r * words + full]), n,
                     wv[r]);
    }
    for (int v = 0; v < 4; ++v) {
      const int nv = lanes_in(n, v);
      if (nv == 0) break;
#pragma GCC unroll 4
      for (int i = 0; i < MB; ++i) {
        const float* p = x + i * K + 32 * full + 8 * v;
        const F xv =
            nv == 8 ? S::template load<DType::F32>(p) : S::template load_n<DType::F32>(p, nv);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) acc[r][i] = S::fma(xv, wv[r][v], acc[r][i]);
      }
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int i = 0; i < MB; ++i) out[r][i] = S::hsum(acc[r][i]);
  }
}

// y rows [m, m + MB) at columns [n, n + R).
template <DType E, int R, int MB>
inline void linear_block(const SmallBatchLinear& a, const int32_t* task_bits, int64_t m,
                         int64_t n) {
  constexpr int eb = elem_bytes<E>();
  const int64_t K = a.K, words = words_per_row(K);
  float out[R][MB];
  linear_rows<E, R, MB>(a.x + m * K, K, static_cast<const char*>(a.w) + n * K * eb,
                        task_bits + n * words, words, out);
  for (int r = 0; r < R; ++r) {
    const float bias =
        a.bias ? S::template load1<E>(static_cast<const char*>(a.bias) + (n + r) * eb) : 0.0f;
    for (int i = 0; i < MB; ++i) {
      S::template store1<E>(static_cast<char*>(a.y) + ((m + i) * a.N + n + r) * eb,
                            out[r][i] + bias);
    }
  }
}

// Every input row against weight rows [n, n + R), R = 4 or fewer at the end:
// blocks of 4 input rows take the weight rows in pairs (8 accumulators),
// smaller ones all R at once.
template <DType E, int R>
inline void linear_columns(const SmallBatchLinear& a, int64_t n) {
  const int64_t per_task = a.rows / a.tasks, words = words_per_row(a.K);
  for (int64_t t = 0; t < a.tasks; ++t) {
    const int32_t* task_bits = a.bits + t * a.N * words;
    const int64_t m1 = (t + 1) * per_task;
    int64_t m = t * per_task;
    if constexpr (R == 4) {
      for (; m + 4 <= m1; m += 4) {
        linear_block<E, 2, 4>(a, task_bits, m, n);
        linear_block<E, 2, 4>(a, task_bits, m, n + 2);
      }
      for (; m + 2 <= m1; m += 2) linear_block<E, 4, 2>(a, task_bits, m, n);
    } else {
      for (; m + 2 <= m1; m += 2) linear_block<E, R, 2>(a, task_bits, m, n);
    }
    for (; m < m1; ++m) linear_block<E, R, 1>(a, task_bits, m, n);
  }
}

template <DType E>
inline void small_batch_linear_typed(const SmallBatchLinear& a, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) linear_columns<E, 4>(a, n);
  for (; n < n1; ++n) linear_columns<E, 1>(a, n);
}

inline void small_batch_linear(const SmallBatchLinear& a, int64_t n0, int64_t n1) {
  switch (a.dtype) {
    case DType::F32: return small_batch_linear_typed<DType::F32>(a, n0, n1);
    case DType::F16: return small_batch_linear_typed<DType::F16>(a, n0, n1);
    case DType::BF16: return small_batch_linear_typed<DType::BF16>(a, n0, n1);
  }
}

// -------------------------------------------------- small-batch grad input
//
// Each dx element is the chain of multiply-adds over n = 0..N-1 in order,
// from 0, however the work is split, so the two loop orders below give the
// same bits:
// - one input row: the weight streams by rows, two at a time, over a panel of
//   the thread's columns (each row's segment contiguous, prefetch-friendly);
//   the panel's fp32 sums stay in L1 and take one load and store per pair.
// - more rows: blocks of S::kGradRows rows x 32 columns of sums stay in
//   registers while a chunk of weight rows runs down the word's column; the
//   chunk's words stay in L1 for the next block of rows.

// Panel width: 8192 fp32 sums (32 KB) over the M rows, at least 256 columns.
inline int64_t grad_panel(int64_t M) {
  const int64_t cols = (int64_t{8192} / (M > 0 ? M : 1)) & ~int64_t{31};
  return cols > 256 ? cols : 256;
}

// acc[m, 32 wd .. + 32) += dy[m, n] * w'[n] (then + dy[m, n + 1] * w'[n + 1])
// over the full words [0, words_full) of a panel; `w` and `bits` point at
// row n's panel start, `acc` at row 0's.
template <DType E, bool kTwo>
inline void grad_full_words(const float* dy, int64_t N, int64_t M, int64_t n, const char* w,
                            const int32_t* bits, int64_t K, int64_t words, float* acc,
                            int64_t words_full) {
  constexpr int eb = elem_bytes<E>();
  using F = typename S::F;
  for (int64_t wd = 0; wd < words_full; ++wd) {
    F v0[4], v1[4];
    const char* p = w + 32 * wd * eb;
    load_word<E>(p, static_cast<uint32_t>(bits[wd]), v0);
    if constexpr (kTwo) {
      load_word<E>(p + K * eb, static_cast<uint32_t>(bits[words + wd]), v1);
    }
    for (int64_t m = 0; m < M; ++m) {
      const float* d = dy + m * N + n;
      const F d0 = S::broadcast(d[0]);
      float* am = acc + m * K + 32 * wd;
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) {
        F s = S::fma(d0, v0[v], S::template load<DType::F32>(am + 8 * v));
        if constexpr (kTwo) s = S::fma(S::broadcast(d[1]), v1[v], s);
        S::template store<DType::F32>(am + 8 * v, s);
      }
    }
  }
}

// The same for one partial word of `ncols` < 32 columns.
template <DType E, bool kTwo>
inline void grad_partial_word(const float* dy, int64_t N, int64_t M, int64_t n, const char* w,
                              const int32_t* bits, int64_t K, int64_t words, float* acc,
                              int ncols) {
  constexpr int eb = elem_bytes<E>();
  using F = typename S::F;
  F v0[4], v1[4];
  load_word_n<E>(w, static_cast<uint32_t>(bits[0]), ncols, v0);
  if constexpr (kTwo) {
    load_word_n<E>(w + K * eb, static_cast<uint32_t>(bits[words]), ncols, v1);
  }
  for (int64_t m = 0; m < M; ++m) {
    const float* d = dy + m * N + n;
    float* am = acc + m * K;
    for (int v = 0; v < 4; ++v) {
      const int nv = lanes_in(ncols, v);
      if (nv == 0) break;
      F s = nv == 8 ? S::template load<DType::F32>(am + 8 * v)
                    : S::template load_n<DType::F32>(am + 8 * v, nv);
      s = S::fma(S::broadcast(d[0]), v0[v], s);
      if constexpr (kTwo) s = S::fma(S::broadcast(d[1]), v1[v], s);
      if (nv == 8) {
        S::template store<DType::F32>(am + 8 * v, s);
      } else {
        S::template store_n<DType::F32>(am + 8 * v, s, nv);
      }
    }
  }
}

template <DType E, bool kTwo>
inline void grad_rows(const SmallBatchGradInput& a, int64_t n, int64_t p0, int64_t p1) {
  constexpr int eb = elem_bytes<E>();
  const int64_t K = a.K, words = words_per_row(K), wd0 = p0 / kBitsPerWord;
  const int64_t full = (p1 - p0) / kBitsPerWord;
  const char* w = static_cast<const char*>(a.w) + (n * K + p0) * eb;
  const int32_t* b = a.bits + n * words + wd0;
  grad_full_words<E, kTwo>(a.dy, a.N, a.M, n, w, b, K, words, a.acc + p0, full);
  if (const int rem = static_cast<int>(p1 - p0 - full * 32)) {
    grad_partial_word<E, kTwo>(a.dy, a.N, a.M, n, w + 32 * full * eb, b + full, K, words,
                               a.acc + p0 + 32 * full, rem);
  }
}

constexpr int64_t kGradRowChunk = 32;  // weight rows per pass of register blocks

// Sums of rows [m, m + MB), columns [c, c + ncols) of one word, over weight
// rows [n0, n1): loaded from acc (or 0 where n0 == 0), stored back.
template <DType E, int MB, bool kFull>
inline void grad_block(const SmallBatchGradInput& a, int64_t m, int64_t c, int ncols, int64_t n0,
                       int64_t n1) {
  constexpr int eb = elem_bytes<E>();
  using F = typename S::F;
  const int64_t N = a.N, K = a.K, words = words_per_row(K);
  F acc[MB][4];
  float* am = a.acc + m * K + c;
#pragma GCC unroll 4
  for (int i = 0; i < MB; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      const int nv = kFull ? 8 : lanes_in(ncols, v);
      const float* p = am + i * K + 8 * v;
      acc[i][v] = n0 == 0 || nv == 0 ? S::zero()
                  : nv == 8          ? S::template load<DType::F32>(p)
                                     : S::template load_n<DType::F32>(p, nv);
    }
  }
  const char* wc = static_cast<const char*>(a.w) + c * eb;
  const int32_t* bc = a.bits + c / kBitsPerWord;
  for (int64_t n = n0; n < n1; ++n) {
    const typename S::Word bw = S::word(static_cast<uint32_t>(bc[n * words]));
    const char* p = wc + n * K * eb;
    F d[MB];
#pragma GCC unroll 4
    for (int i = 0; i < MB; ++i) d[i] = S::broadcast(a.dy[(m + i) * N + n]);
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      const int nv = kFull ? 8 : lanes_in(ncols, v);
      if (nv == 0) continue;
      const F wv = nv == 8 ? S::template load_lanes<E>(p + 8 * v * eb, bw, v)
                           : S::template load_lanes_n<E>(p + 8 * v * eb, bw, v, nv);
#pragma GCC unroll 4
      for (int i = 0; i < MB; ++i) acc[i][v] = S::fma(d[i], wv, acc[i][v]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < MB; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      const int nv = kFull ? 8 : lanes_in(ncols, v);
      float* p = am + i * K + 8 * v;
      if (nv == 8) {
        S::template store<DType::F32>(p, acc[i][v]);
      } else if (nv > 0) {
        S::template store_n<DType::F32>(p, acc[i][v], nv);
      }
    }
  }
}

template <DType E, bool kFull>
inline void grad_blocks(const SmallBatchGradInput& a, int64_t c, int ncols, int64_t n0,
                        int64_t n1) {
  constexpr int kRows = S::kGradRows;
  int64_t m = 0;
  for (; m + kRows <= a.M; m += kRows) grad_block<E, kRows, kFull>(a, m, c, ncols, n0, n1);
  for (; m < a.M; ++m) grad_block<E, 1, kFull>(a, m, c, ncols, n0, n1);
}

// Columns [c0, c1) of the fp32 sums, register-blocked (M >= 2).
template <DType E>
inline void grad_register_blocked(const SmallBatchGradInput& a, int64_t c0, int64_t c1) {
  for (int64_t n0 = 0; n0 < a.N; n0 += kGradRowChunk) {
    const int64_t n1 = imin(a.N, n0 + kGradRowChunk);
    for (int64_t c = c0; c < c1; c += 32) {
      const int ncols = static_cast<int>(imin<int64_t>(32, c1 - c));
      if (ncols == 32) {
        grad_blocks<E, true>(a, c, ncols, n0, n1);
      } else {
        grad_blocks<E, false>(a, c, ncols, n0, n1);
      }
    }
  }
}

// Columns [c0, c1) of the fp32 sums, streaming weight rows (M == 1).
template <DType E>
inline void grad_row_streaming(const SmallBatchGradInput& a, int64_t c0, int64_t c1) {
  const int64_t panel = grad_panel(a.M);
  for (int64_t p0 = c0; p0 < c1; p0 += panel) {
    const int64_t p1 = imin(c1, p0 + panel);
    for (int64_t m = 0; m < a.M; ++m) {
      std::memset(a.acc + m * a.K + p0, 0, (p1 - p0) * sizeof(float));
    }
    int64_t n = 0;
    for (; n + 2 <= a.N; n += 2) grad_rows<E, true>(a, n, p0, p1);
    if (n < a.N) grad_rows<E, false>(a, n, p0, p1);
  }
}

template <DType E>
inline void small_batch_grad_input_typed(const SmallBatchGradInput& a, int64_t c0, int64_t c1) {
  constexpr int eb = elem_bytes<E>();
  if (a.M == 1) {
    grad_row_streaming<E>(a, c0, c1);
  } else {
    grad_register_blocked<E>(a, c0, c1);
  }
  if constexpr (E != DType::F32) {  // round the fp32 sums once
    for (int64_t m = 0; m < a.M; ++m) {
      const float* src = a.acc + m * a.K;
      char* dst = static_cast<char*>(a.dx) + m * a.K * eb;
      int64_t k = c0;
      for (; k + 8 <= c1; k += 8) {
        S::template store<E>(dst + k * eb, S::template load<DType::F32>(src + k));
      }
      if (k < c1) {
        const int r = static_cast<int>(c1 - k);
        S::template store_n<E>(dst + k * eb, S::template load_n<DType::F32>(src + k, r), r);
      }
    }
  }
}

inline void small_batch_grad_input(const SmallBatchGradInput& a, int64_t c0, int64_t c1) {
  switch (a.dtype) {
    case DType::F32: return small_batch_grad_input_typed<DType::F32>(a, c0, c1);
    case DType::F16: return small_batch_grad_input_typed<DType::F16>(a, c0, c1);
    case DType::BF16: return small_batch_grad_input_typed<DType::BF16>(a, c0, c1);
  }
}

constexpr Kernels kTable = {
    CPG_ISA_NAME,
    decode_rows,
    decode_rows_float,
    pack_rows,
    unpack_rows,
    active_rows,
    count_rows,
    histogram,
    grad_epilogue,
    small_batch_linear,
    small_batch_grad_input,
};
