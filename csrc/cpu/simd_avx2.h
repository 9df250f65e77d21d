// The AVX2 + FMA vector policy of kernels_impl.h: 8 fp32 lanes in a ymm
// register. A mask word becomes lane masks by one broadcast, an AND with each
// lane's bit and a compare; 32 compares become a mask word by movemask.
// 16-bit floats convert in registers (bf16: a shift; fp16: F16C), rounding
// to nearest even on the way out.
//
// Textually included inside namespace cpg::cpu::isa_avx2 (and by the AVX-512
// policy in its own namespace) between CPG_TARGET_PUSH and _POP; includes
// nothing. No namespace-scope constants: they would need dynamic
// initialization under the wider target (see isa_target.h).

struct Avx2Simd {
  static constexpr int kGradRows = 2;  // dx rows x 4 vectors of sums in registers
  using F = __m256;

  static F zero() { return _mm256_setzero_ps(); }
  static F broadcast(float a) { return _mm256_set1_ps(a); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }

  // Lane i all ones where bit i of `bits` is set.
  static __m256i lane_mask(uint32_t bits) {
    const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i b = _mm256_set1_epi32(static_cast<int>(bits));
    return _mm256_cmpeq_epi32(_mm256_and_si256(b, lane_bit), lane_bit);
  }
  // Lanes 0..n-1 all ones.
  static __m256i first_lanes(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static F keep(F a, uint32_t bits) {
    return _mm256_and_ps(a, _mm256_castsi256_ps(lane_mask(bits)));
  }
  // ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)), as the scalar policy.
  static float hsum(F a) {
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
  }

  // ---- conversions
  static uint16_t bf16_from_float(float v) {  // c10::BFloat16's rounding, NaN -> 0x7FC0
    uint32_t u;
    std::memcpy(&u, &v, 4);
    if (v != v) return 0x7FC0;
    return static_cast<uint16_t>((u + ((u >> 16) & 1u) + 0x7FFFu) >> 16);
  }
  static __m128i bf16_from_floats(F v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(
        _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
    const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(nan));
    // Values fit 16 bits: pack within each 128-bit half, then join the halves.
    const __m256i packed = _mm256_packus_epi32(r, r);
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));
  }

  template <DType E>
  static float load1(const void* p) {
    if constexpr (E == DType::F32) {
      float v;
      std::memcpy(&v, p, 4);
      return v;
    } else {
      uint16_t h;
      std::memcpy(&h, p, 2);
      if constexpr (E == DType::BF16) {
        const uint32_t u = static_cast<uint32_t>(h) << 16;
        float v;
        std::memcpy(&v, &u, 4);
        return v;
      } else {
        return _cvtsh_ss(h);
      }
    }
  }
  template <DType E>
  static void store1(void* p, float v) {
    if constexpr (E == DType::F32) {
      std::memcpy(p, &v, 4);
    } else {
      const uint16_t h = E == DType::BF16
                             ? bf16_from_float(v)
                             : static_cast<uint16_t>(_cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT));
      std::memcpy(p, &h, 2);
    }
  }
  template <DType E>
  static F load(const void* p) {
    if constexpr (E == DType::F32) {
      return _mm256_loadu_ps(static_cast<const float*>(p));
    } else {
      const __m128i h = _mm_loadu_si128(static_cast<const __m128i*>(p));
      if constexpr (E == DType::BF16) {
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
      } else {
        return _mm256_cvtph_ps(h);
      }
    }
  }
  template <DType E>
  static F load_n(const void* p, int n) {  // lanes n..7 are 0; nothing past n is read
    if constexpr (E == DType::F32) {
      return _mm256_maskload_ps(static_cast<const float*>(p), first_lanes(n));
    } else {
      uint16_t t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      std::memcpy(t, p, 2 * n);
      return load<E>(t);
    }
  }
  template <DType E>
  static void store(void* p, F v) {
    if constexpr (E == DType::F32) {
      _mm256_storeu_ps(static_cast<float*>(p), v);
    } else if constexpr (E == DType::BF16) {
      _mm_storeu_si128(static_cast<__m128i*>(p), bf16_from_floats(v));
    } else {
      _mm_storeu_si128(static_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    }
  }
  template <DType E>
  static void store_n(void* p, F v, int n) {
    if constexpr (E == DType::F32) {
      _mm256_maskstore_ps(static_cast<float*>(p), first_lanes(n), v);
    } else {
      uint16_t t[8];
      store<E>(t, v);
      std::memcpy(p, t, 2 * n);
    }
  }
  template <DType E>
  static F load_bits(const void* p, uint32_t bits) {
    return keep(load<E>(p), bits);
  }
  template <DType E>
  static F load_bits_n(const void* p, uint32_t bits, int n) {
    return keep(load_n<E>(p, n), bits);
  }
  // Decoding a 32-column mask word: `Word` is the word prepared once (here,
  // broadcast to every lane); load_lanes gives vector v of it (columns 8v to
  // 8v + 7, bit 8v + i = lane i): a variable shift puts each lane's bit in
  // its sign, which selects between the weights and zero. The _n forms read
  // only the first n columns (n < 8 lanes, or n < 32 for a word).
  using Word = __m256i;
  static Word word(uint32_t bits) { return _mm256_set1_epi32(static_cast<int>(bits)); }
  static __m256i sign_lanes(Word w, int v) {
    alignas(32) static constexpr int32_t kShift[32] = {31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21,
                                                       20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10,
                                                       9,  8,  7,  6,  5,  4,  3,  2,  1,  0};
    const __m256i shift = _mm256_load_si256(reinterpret_cast<const __m256i*>(kShift + 8 * v));
    return _mm256_sllv_epi32(w, shift);
  }
  template <DType E>
  static F load_lanes(const void* p, Word w, int v) {
    return _mm256_blendv_ps(_mm256_setzero_ps(), load<E>(p), _mm256_castsi256_ps(sign_lanes(w, v)));
  }
  template <DType E>
  static F load_lanes_n(const void* p, Word w, int v, int n) {
    const __m256i m = _mm256_and_si256(sign_lanes(w, v), first_lanes(n));
    if constexpr (E == DType::F32) {
      return _mm256_maskload_ps(static_cast<const float*>(p), m);
    } else {
      return _mm256_blendv_ps(_mm256_setzero_ps(), load_n<E>(p, n), _mm256_castsi256_ps(m));
    }
  }
  // ---- 32 entries -> one mask word (bit i = entry i), and back.
  static __m256i load32(const void* p) {
    return _mm256_loadu_si256(static_cast<const __m256i*>(p));
  }
  static uint32_t movemask8(__m256i v) { return static_cast<uint32_t>(_mm256_movemask_epi8(v)); }
  static uint32_t nonzero_bits(const bool* p) {
    return ~movemask8(_mm256_cmpeq_epi8(load32(p), _mm256_setzero_si256()));
  }
  static uint32_t trainable_bits(const uint8_t* o, int task) {  // owner == task
    return movemask8(_mm256_cmpeq_epi8(load32(o), _mm256_set1_epi8(static_cast<char>(task))));
  }
  // 0 < owner < task as owner - 1 < task - 1 on unsigned bytes (owner 0 wraps
  // to 255, above every task - 1 <= 254): not (max(o - 1, t - 1) == o - 1).
  static uint32_t pickable_bits(const uint8_t* o, int task) {
    const __m256i o1 = _mm256_sub_epi8(load32(o), _mm256_set1_epi8(1));
    const __m256i t1 = _mm256_set1_epi8(static_cast<char>(task - 1));
    return ~movemask8(_mm256_cmpeq_epi8(_mm256_max_epu8(o1, t1), o1));
  }
  static uint32_t picked_bits(const float* m, float threshold) {  // m > threshold, NaN not
    const __m256 th = _mm256_set1_ps(threshold);
    uint32_t w = 0;
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      const __m256 gt = _mm256_cmp_ps(_mm256_loadu_ps(m + 8 * j), th, _CMP_GT_OQ);
      w |= static_cast<uint32_t>(_mm256_movemask_ps(gt)) << (8 * j);
    }
    return w;
  }
  static void bools_from_bits(uint32_t w, bool* out) {
    // Byte i of the result takes byte i / 8 of w (shuffles stay within each
    // 128-bit half, which holds all of w), then tests its bit i % 8.
    const __m256i spread =
        _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(w)),
                            _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2,
                                             2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ULL));
    const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out),
                        _mm256_and_si256(set, _mm256_set1_epi8(1)));
  }
  static void select4(const void* src, uint32_t w, void* dst) {
    const char* s = static_cast<const char*>(src);
    char* d = static_cast<char*>(dst);
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      const __m256i v = load32(s + 32 * j);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + 32 * j),
                          _mm256_and_si256(v, lane_mask(w >> (8 * j))));
    }
  }
  static void select2(const void* src, uint32_t w, void* dst) {
    const __m256i lane_bit = _mm256_setr_epi16(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048,
                                               4096, 8192, 16384, static_cast<short>(0x8000));
    const char* s = static_cast<const char*>(src);
    char* d = static_cast<char*>(dst);
#pragma GCC unroll 4
    for (int j = 0; j < 2; ++j) {
      const __m256i b = _mm256_set1_epi16(static_cast<short>(w >> (16 * j)));
      const __m256i m = _mm256_cmpeq_epi16(_mm256_and_si256(b, lane_bit), lane_bit);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + 32 * j),
                          _mm256_and_si256(load32(s + 32 * j), m));
    }
  }
};
