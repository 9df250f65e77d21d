// The baseline vector policy of kernels_impl.h: 8 lanes in plain C++ (the
// compiler vectorizes what its baseline target allows). Same lanes, same
// summation tree as the AVX2 and AVX-512 policies; it multiplies and adds in
// one rounding only where the target has a fused multiply-add instruction
// (__FP_FAST_FMAF, e.g. aarch64), so on baseline x86-64 its dot products can
// differ from theirs in the last bit. Element-wise results never differ.
//
// Textually included inside namespace cpg::cpu::isa_scalar; includes nothing
// (kernels_scalar.cpp includes <cmath>, <cstring>, c10's Half and BFloat16).
// The predicates below are core/mask_format.h's, applied lane by lane; the
// vector policies compute the same ones with compares.

struct ScalarSimd {
  static constexpr int kGradRows = 2;  // dx rows x 4 vectors of sums in registers
  struct F {
    float v[8];
  };

  static F zero() {
    F r;
    for (int i = 0; i < 8; ++i) r.v[i] = 0.0f;
    return r;
  }
  static F broadcast(float a) {
    F r;
    for (int i = 0; i < 8; ++i) r.v[i] = a;
    return r;
  }
  static F fma(F a, F b, F c) {
    F r;
    for (int i = 0; i < 8; ++i) {
#if defined(__FP_FAST_FMAF)
      r.v[i] = std::fma(a.v[i], b.v[i], c.v[i]);
#else
      r.v[i] = a.v[i] * b.v[i] + c.v[i];
#endif
    }
    return r;
  }
  static F add(F a, F b) {
    F r;
    for (int i = 0; i < 8; ++i) r.v[i] = a.v[i] + b.v[i];
    return r;
  }
  static F mul(F a, F b) {
    F r;
    for (int i = 0; i < 8; ++i) r.v[i] = a.v[i] * b.v[i];
    return r;
  }
  // Lane i kept where bit i is set, else +0.
  static F keep(F a, uint32_t bits) {
    F r;
    for (int i = 0; i < 8; ++i) r.v[i] = ((bits >> i) & 1u) ? a.v[i] : 0.0f;
    return r;
  }
  // ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)): the vector policies' tree.
  static float hsum(F a) {
    float s4[4], s2[2];
    for (int i = 0; i < 4; ++i) s4[i] = a.v[i] + a.v[i + 4];
    for (int i = 0; i < 2; ++i) s2[i] = s4[i] + s4[i + 2];
    return s2[0] + s2[1];
  }

  template <DType E>
  static float load1(const void* p) {
    if constexpr (E == DType::F32) {
      return *static_cast<const float*>(p);
    } else if constexpr (E == DType::BF16) {
      return static_cast<float>(*static_cast<const c10::BFloat16*>(p));
    } else {
      return static_cast<float>(*static_cast<const c10::Half*>(p));
    }
  }
  template <DType E>
  static void store1(void* p, float v) {
    if constexpr (E == DType::F32) {
      *static_cast<float*>(p) = v;
    } else if constexpr (E == DType::BF16) {
      *static_cast<c10::BFloat16*>(p) = c10::BFloat16(v);  // round to nearest even
    } else {
      *static_cast<c10::Half*>(p) = c10::Half(v);
    }
  }
  template <DType E>
  static F load_n(const void* p, int n) {  // lanes n..7 are 0
    constexpr int eb = E == DType::F32 ? 4 : 2;
    F r = zero();
    for (int i = 0; i < n; ++i) r.v[i] = load1<E>(static_cast<const char*>(p) + i * eb);
    return r;
  }
  template <DType E>
  static F load(const void* p) {
    return load_n<E>(p, 8);
  }
  template <DType E>
  static void store_n(void* p, F v, int n) {
    constexpr int eb = E == DType::F32 ? 4 : 2;
    for (int i = 0; i < n; ++i) store1<E>(static_cast<char*>(p) + i * eb, v.v[i]);
  }
  template <DType E>
  static void store(void* p, F v) {
    store_n<E>(p, v, 8);
  }
  // Elements where the mask bits say so (bit i = lane i), else 0.
  template <DType E>
  static F load_bits(const void* p, uint32_t bits) {
    return keep(load<E>(p), bits);
  }
  template <DType E>
  static F load_bits_n(const void* p, uint32_t bits, int n) {
    return keep(load_n<E>(p, n), bits);
  }
  // Decoding a 32-column mask word: vector v is columns 8v..8v+7 (bit 8v + i
  // = lane i); the _n form reads only the first n < 8 lanes.
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

  // ---- 32 entries -> one mask word (bit i = entry i), and back.
  static uint32_t nonzero_bits(const bool* p) {
    uint32_t w = 0;
    for (int i = 0; i < 32; ++i) w |= static_cast<uint32_t>(p[i] ? 1 : 0) << i;
    return w;
  }
  static uint32_t trainable_bits(const uint8_t* o, int task) {  // owner == task
    uint32_t w = 0;
    for (int i = 0; i < 32; ++i) w |= static_cast<uint32_t>(cpg::is_trainable(o[i], task)) << i;
    return w;
  }
  static uint32_t pickable_bits(const uint8_t* o, int task) {  // 0 < owner < task
    uint32_t w = 0;
    for (int i = 0; i < 32; ++i) w |= static_cast<uint32_t>(cpg::is_pickable(o[i], task)) << i;
    return w;
  }
  static uint32_t picked_bits(const float* m, float threshold) {  // m > threshold
    uint32_t w = 0;
    for (int i = 0; i < 32; ++i) {
      w |= static_cast<uint32_t>(cpg::picked_by_mask(m[i], threshold)) << i;
    }
    return w;
  }
  static void bools_from_bits(uint32_t w, bool* out) {
    for (int i = 0; i < 32; ++i) out[i] = (w >> i) & 1u;
  }
  // dst[i] = src[i] where bit i of w is set, else all-zero bytes: 32 elements
  // of 4 or 2 bytes (an exact select: +0 for every floating type).
  static void select4(const void* src, uint32_t w, void* dst) { select_bytes<4>(src, w, dst); }
  static void select2(const void* src, uint32_t w, void* dst) { select_bytes<2>(src, w, dst); }
  template <int kBytes>
  static void select_bytes(const void* src, uint32_t w, void* dst) {
    const char* s = static_cast<const char*>(src);
    char* d = static_cast<char*>(dst);
    for (int i = 0; i < 32; ++i) {
      if ((w >> i) & 1u) {
        std::memcpy(d + i * kBytes, s + i * kBytes, kBytes);
      } else {
        std::memset(d + i * kBytes, 0, kBytes);
      }
    }
  }
};
