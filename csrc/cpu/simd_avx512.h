// The AVX-512 vector policy of kernels_impl.h: the AVX2 policy's 8-lane ymm
// arithmetic (so dot products sum in the same order and give the same bits),
// with AVX-512VL/BW mask registers where they save work: a mask word is a lane
// mask as it is, so decoding is a zero-masking load, tails are masked loads and
// stores, and compares land in mask words directly. The kernels here are bound
// by memory traffic, not by vector width; 32 registers let dx blocks hold 4 rows.
//
// Textually included after simd_avx2.h inside namespace cpg::cpu::isa_avx512,
// between CPG_TARGET_PUSH and _POP; includes nothing.

struct Avx512Simd : Avx2Simd {
  static constexpr int kGradRows = 4;  // 16 vectors of sums of 32 registers

  static F keep(F a, uint32_t bits) { return _mm256_maskz_mov_ps(static_cast<__mmask8>(bits), a); }
  static __mmask8 first_n(int n) { return static_cast<__mmask8>((1u << n) - 1u); }

  template <DType E>
  static F load_bits(const void* p, uint32_t bits) {
    const __mmask8 k = static_cast<__mmask8>(bits);
    if constexpr (E == DType::F32) {
      return _mm256_maskz_loadu_ps(k, p);
    } else {
      return keep(Avx2Simd::load<E>(p), bits);
    }
  }
  template <DType E>
  static F load_n(const void* p, int n) {
    if constexpr (E == DType::F32) {
      return _mm256_maskz_loadu_ps(first_n(n), p);
    } else {
      const __m128i h = _mm_maskz_loadu_epi16(first_n(n), p);
      if constexpr (E == DType::BF16) {
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
      } else {
        return _mm256_cvtph_ps(h);
      }
    }
  }
  template <DType E>
  static F load_bits_n(const void* p, uint32_t bits, int n) {
    if constexpr (E == DType::F32) {
      return _mm256_maskz_loadu_ps(static_cast<__mmask8>(bits & ((1u << n) - 1u)), p);
    } else {
      return keep(load_n<E>(p, n), bits);
    }
  }
  template <DType E>
  static void store_n(void* p, F v, int n) {
    if constexpr (E == DType::F32) {
      _mm256_mask_storeu_ps(p, first_n(n), v);
    } else if constexpr (E == DType::BF16) {
      _mm_mask_storeu_epi16(p, first_n(n), bf16_from_floats(v));
    } else {
      _mm_mask_storeu_epi16(p, first_n(n), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    }
  }

  // A mask word is a lane mask as it is: vector v of it is bits 8v..8v+7.
  using Word = uint32_t;
  static Word word(uint32_t bits) { return bits; }
  template <DType E>
  static F load_lanes(const void* p, Word w, int v) {
    return load_bits<E>(p, w >> (8 * v));
  }
  template <DType E>
  static F load_lanes_n(const void* p, Word w, int v, int n) {
    return load_bits_n<E>(p, w >> (8 * v), n);
  }

  static uint32_t nonzero_bits(const bool* p) {
    const __m256i v = load32(p);
    return static_cast<uint32_t>(_mm256_test_epi8_mask(v, v));
  }
  static uint32_t trainable_bits(const uint8_t* o, int task) {
    return static_cast<uint32_t>(
        _mm256_cmpeq_epi8_mask(load32(o), _mm256_set1_epi8(static_cast<char>(task))));
  }
  static uint32_t pickable_bits(const uint8_t* o, int task) {  // owner - 1 < task - 1, unsigned
    const __m256i o1 = _mm256_sub_epi8(load32(o), _mm256_set1_epi8(1));
    return static_cast<uint32_t>(
        _mm256_cmplt_epu8_mask(o1, _mm256_set1_epi8(static_cast<char>(task - 1))));
  }
  static uint32_t picked_bits(const float* m, float threshold) {
    const __m512 th = _mm512_set1_ps(threshold);
    const uint32_t lo = _mm512_cmp_ps_mask(_mm512_loadu_ps(m), th, _CMP_GT_OQ);
    const uint32_t hi = _mm512_cmp_ps_mask(_mm512_loadu_ps(m + 16), th, _CMP_GT_OQ);
    return lo | (hi << 16);
  }
  static void bools_from_bits(uint32_t w, bool* out) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out),
                        _mm256_maskz_mov_epi8(static_cast<__mmask32>(w), _mm256_set1_epi8(1)));
  }
  static void select4(const void* src, uint32_t w, void* dst) {
    const char* s = static_cast<const char*>(src);
    char* d = static_cast<char*>(dst);
    _mm512_storeu_si512(d, _mm512_maskz_loadu_epi32(static_cast<__mmask16>(w), s));
    _mm512_storeu_si512(d + 64, _mm512_maskz_loadu_epi32(static_cast<__mmask16>(w >> 16), s + 64));
  }
  static void select2(const void* src, uint32_t w, void* dst) {
    _mm512_storeu_si512(dst, _mm512_maskz_loadu_epi16(static_cast<__mmask32>(w), src));
  }
};
