// The CPU emulator: the CPG_EMU implementation of the portability contract in
// cuda/portability.h (included from there only). Kernel sources compile as
// plain host C++ against it and run on the CPU with CUDA's semantics.
//
// Execution model (the scheduler is in runtime.cpp):
//  - CPG_LAUNCH runs the grid synchronously, one block after another in index
//    order (x fastest).
//  - Each thread of a block is a fiber. The block advances in phases: every
//    runnable fiber runs until it blocks (syncthreads, a warp operation) or
//    exits, in an order shuffled by a seeded RNG (set_seed). Then the barrier
//    and the warp operations whose participants have all arrived complete.
//    Results that differ bit-wise between two seeds reveal a race.
//  - A warp is 32 consecutive linear thread ids; its operations wait for every
//    lane that has not exited, then compute all lanes' results as the PTX ISA
//    defines them (fragment layouts included). A barrier completes when every
//    thread that has not exited waits at it (at the same source line).
//  - Shared memory is a per-block arena; arrays are 0xFF-filled when the block
//    first declares them and are reached through bounds-checked views (Shared).
//  - cp.async copies are deferred until their issuing thread waits for their
//    group (or exits), so reading shared memory too early sees stale data.
//  - Any error (bounds, misaligned or non-shared operands, deadlock) aborts the
//    launch: CPG_LAUNCH throws std::runtime_error naming the kernel, the block
//    and the thread.
//  - Launches are serialised by a global lock, so any OS thread may launch.
//
// Not emulated: memory ordering beyond the phases (a fiber's stores are seen by
// the next fiber at once), interleavings inside a phase (a non-atomic
// read-modify-write race loses no update here), spin-waits on other threads or
// blocks (they never yield, so they hang), tensor-core accumulation order, and
// launch bounds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <new>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/smem_limits.h"

// CUDA's built-in vector types, as far as the contract uses them. g++ and clang
// accept __restrict__ as is; `#pragma unroll` is ignored (with -Wunknown-pragmas
// it warns, which the emulator build should silence with -Wno-unknown-pragmas).
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

namespace cpg {
namespace emu {

// The seed of the thread order within phases (default 0). Each launch restarts
// the order's random sequence from it, so a launch is reproducible per seed.
void set_seed(uint64_t seed);
uint64_t seed();

// Where a blocking call was made: file and line identify a barrier (two on one
// line count as one), and deadlock reports name them. As a default argument,
// here() captures the location of the call that uses the default.
struct Site {
  const char* file;
  int line;
  static constexpr Site here(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return {file, line};
  }
};

// The calling fiber's coordinates (std::logic_error outside a kernel).
const dim3& thread_idx();
const dim3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();

// Runs `body` as each thread of each block (see the execution model above).
// `kernel_id` identifies the kernel for set_max_dynamic_smem.
void launch(const char* kernel_name, const char* file, const void* kernel_id, dim3 grid, dim3 block,
            size_t dynamic_smem_bytes, const std::function<void()>& body);
// The launch log, for tests that check which kernels a dispatcher chose: while
// it is on, each launch appends "<source file name>:<kernel expression>" of its
// CPG_LAUNCH site (e.g. "conv_unfolded.cuh:unfold").
void set_launch_log(bool enabled);
std::vector<std::string> take_launch_log();
// Allows launches of `kernel_id` with up to `bytes` of dynamic shared memory
// (CUDA's default limit without this opt-in is 48 KiB).
void set_max_dynamic_smem(const void* kernel_id, int bytes);

// ---------------------------------------------------------------- shared memory

// Storage for the shared array declared at the site `key`: the same for every
// thread of the block, 0xFF-filled when the first thread reaches it.
void* shared_array(const void* key, size_t bytes, size_t align);
// The launch's dynamic shared memory; stores its size in *bytes.
void* dynamic_shared(size_t* bytes);
[[noreturn]] void out_of_bounds(const char* name, std::ptrdiff_t index, std::ptrdiff_t size);

template <typename I>
using IfIndex = std::enable_if_t<std::is_integral<I>::value>;

// A pointer into a shared array that knows the array's bounds: p[i], *p and
// p->m are checked, and copies and p + i keep the bounds. Converting to T*
// (implicitly, or by &p[i]) gives a plain pointer without checks. Being a
// class, it cannot be reinterpret_cast: reinterpret_cast<U*>(&p[i]) works in
// both builds.
template <typename T>
class Shared {
 public:
  Shared(T* array, std::ptrdiff_t size, const char* name)
      : array_(array), size_(size), pos_(0), name_(name) {}

  template <typename I, typename = IfIndex<I>>
  T& operator[](I i) const {
    return *at(pos_ + static_cast<std::ptrdiff_t>(i));
  }
  T& operator*() const { return *at(pos_); }
  T* operator->() const { return at(pos_); }
  operator T*() const { return array_ + pos_; }

  template <typename I, typename = IfIndex<I>>
  Shared& operator+=(I i) {
    pos_ += static_cast<std::ptrdiff_t>(i);
    return *this;
  }
  template <typename I, typename = IfIndex<I>>
  Shared& operator-=(I i) {
    pos_ -= static_cast<std::ptrdiff_t>(i);
    return *this;
  }
  // Exact matches for p + i, so they win over the built-in T* + i.
  template <typename I, typename = IfIndex<I>>
  friend Shared operator+(Shared p, I i) {
    return p += i;
  }
  template <typename I, typename = IfIndex<I>>
  friend Shared operator+(I i, Shared p) {
    return p += i;
  }
  template <typename I, typename = IfIndex<I>>
  friend Shared operator-(Shared p, I i) {
    return p -= i;
  }

 private:
  T* at(std::ptrdiff_t i) const {
    if (i < 0 || i >= size_) out_of_bounds(name_, i, size_);
    return array_ + i;
  }

  T* array_;
  std::ptrdiff_t size_;
  std::ptrdiff_t pos_;  // may leave [0, size_] in between, like a pointer
  const char* name_;
};

template <typename T>
Shared<T> shared_array_of(const void* key, std::ptrdiff_t n, const char* name) {
  static_assert(std::is_trivially_copyable<T>::value, "shared memory holds plain data");
  return Shared<T>(static_cast<T*>(shared_array(key, n * sizeof(T), alignof(T))), n, name);
}

template <typename T>
Shared<T> dynamic_shared_of(const char* name) {
  static_assert(std::is_trivially_copyable<T>::value, "shared memory holds plain data");
  size_t bytes = 0;
  T* array = static_cast<T*>(dynamic_shared(&bytes));
  return Shared<T>(array, static_cast<std::ptrdiff_t>(bytes / sizeof(T)), name);
}

// ------------------------------------------------------ device operations

void syncthreads(Site site);
void syncwarp(Site site);

enum class ShflMode { Idx, Up, Down, Bfly };
uint32_t shfl(ShflMode mode, uint32_t value, uint32_t b, Site site);

template <typename T>
T shfl_any(ShflMode mode, T value, uint32_t b, Site site) {
  static_assert(sizeof(T) == 4 && std::is_trivially_copyable<T>::value,
                "shuffles move 32-bit values");
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  bits = shfl(mode, bits, b, site);
  std::memcpy(&value, &bits, 4);
  return value;
}

enum class VoteMode { Ballot, Any, All };
uint32_t vote(VoteMode mode, bool p, Site site);

// 16-byte vector access: throws unless p is 16-byte aligned (and, in shared
// memory, within the block's arrays).
void check_vector_access(const void* p);
// A 4-byte access, likewise.
void check_word_access(const void* p);

// cp.async.cg of 16 bytes from global to shared memory; zeros when !valid.
void cp_async16(void* dst, const void* src, bool valid);
// cp.async.ca of 4 bytes, likewise (both addresses 4-byte aligned).
void cp_async4(void* dst, const void* src, bool valid);
void cp_async_commit();
void cp_async_wait(int n);

// ldmatrix.sync.aligned.m8n8.x{count}{.trans}.shared.b16.
void ldmatrix(int count, bool trans, uint32_t* regs, const void* row, Site site);

enum class MmaType { BF16, F16, TF32 };
void mma(MmaType type, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
         const float (&c)[4], Site site);

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ----------------------------------------------------------------- launching

// CPG_LAUNCH(kernel, ...)(args...): like CUDA, the arguments are converted to
// the kernel's parameter types once, and each thread gets its own copy.
template <typename... P>
struct KernelLaunch {
  const char* name;
  const char* file;
  void (*kernel)(P...);
  dim3 grid, block;
  size_t smem;

  template <typename... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "wrong number of kernel arguments");
    const std::tuple<P...> params(std::forward<A>(args)...);
    launch(name, file, reinterpret_cast<const void*>(kernel), grid, block, smem,
           [&] { std::apply(kernel, params); });
  }
};

template <typename... P>
KernelLaunch<P...> launch_kernel(const char* name, const char* file, void (*kernel)(P...),
                                 dim3 grid, dim3 block, size_t smem,
                                 void* /* stream: launches are synchronous */) {
  return {name, file, kernel, grid, block, smem};
}

}  // namespace emu
}  // namespace cpg

// ------------------------------------------------------------------ contract

#define CPG_GLOBAL
#define CPG_DEVICE inline
#define CPG_LAUNCH_BOUNDS(...)

// The static local's address identifies the declaration (per template instance).
#define CPG_SHARED_ARRAY(T, name, N)  \
  static char cpg_shared_site_##name; \
  const ::cpg::emu::Shared<T> name =  \
      ::cpg::emu::shared_array_of<T>(&cpg_shared_site_##name, (N), #name)
#define CPG_DYNAMIC_SHARED(T, name) \
  ::cpg::emu::Shared<T> name = ::cpg::emu::dynamic_shared_of<T>(#name)

#define CPG_LAUNCH(kernel, grid, block, smem, stream, ...)                      \
  ::cpg::emu::launch_kernel(#kernel, __FILE__, kernel, (grid), (block), (smem), \
                            (stream))(__VA_ARGS__)

// The last parameter of each blocking operation: the caller's source location.
#define CPG_EMU_SITE ::cpg::emu::Site site = ::cpg::emu::Site::here()

// Inline namespace: see portability.h (cpgdev::gpu).
namespace cpgdev {
inline namespace emulated {

using stream_t = void*;

// Storage of torch's bfloat16 and float16: the raw bits.
struct bf16 {
  uint16_t bits;
};
struct f16 {
  uint16_t bits;
};
static_assert(sizeof(bf16) == 2 && alignof(bf16) == 2 && sizeof(f16) == 2 && alignof(f16) == 2,
              "16-bit storage types");

inline void syncthreads(CPG_EMU_SITE) { ::cpg::emu::syncthreads(site); }
inline void syncwarp(CPG_EMU_SITE) { ::cpg::emu::syncwarp(site); }
inline int lane_id() { return static_cast<int>(::cpg::emu::thread_idx().x & 31u); }

template <typename T>
inline T shfl(T v, int src, CPG_EMU_SITE) {
  return ::cpg::emu::shfl_any(::cpg::emu::ShflMode::Idx, v, static_cast<uint32_t>(src), site);
}
template <typename T>
inline T shfl_xor(T v, int m, CPG_EMU_SITE) {
  return ::cpg::emu::shfl_any(::cpg::emu::ShflMode::Bfly, v, static_cast<uint32_t>(m), site);
}
template <typename T>
inline T shfl_down(T v, unsigned d, CPG_EMU_SITE) {
  return ::cpg::emu::shfl_any(::cpg::emu::ShflMode::Down, v, d, site);
}
template <typename T>
inline T shfl_up(T v, unsigned d, CPG_EMU_SITE) {
  return ::cpg::emu::shfl_any(::cpg::emu::ShflMode::Up, v, d, site);
}
inline unsigned ballot(bool p, CPG_EMU_SITE) {
  return ::cpg::emu::vote(::cpg::emu::VoteMode::Ballot, p, site);
}
inline bool any(bool p, CPG_EMU_SITE) {
  return ::cpg::emu::vote(::cpg::emu::VoteMode::Any, p, site) != 0;
}
inline bool all(bool p, CPG_EMU_SITE) {
  return ::cpg::emu::vote(::cpg::emu::VoteMode::All, p, site) != 0;
}

// Fibers switch only at blocking operations, so a plain read-modify-write is atomic.
template <typename T>
inline T atomic_add(T* p, T v) {
  static_assert(std::is_same<T, float>::value || std::is_same<T, int>::value ||
                    std::is_same<T, unsigned>::value || std::is_same<T, unsigned long long>::value,
                "atomic_add takes float, int, unsigned or unsigned long long");
  const T old = *p;
  if constexpr (std::is_integral<T>::value) {  // wraps around, as on the GPU
    using U = std::make_unsigned_t<T>;
    *p = static_cast<T>(static_cast<U>(old) + static_cast<U>(v));
  } else {
    *p = old + v;
  }
  return old;
}
template <typename T>
inline T atomic_add(const ::cpg::emu::Shared<T>& p, T v) {
  return atomic_add(&*p, v);
}
inline unsigned atomic_or(unsigned* p, unsigned v) {
  const unsigned old = *p;
  *p = old | v;
  return old;
}

inline uint4 load16(const void* p) {
  ::cpg::emu::check_vector_access(p);
  uint4 v;
  std::memcpy(&v, p, 16);
  return v;
}
inline void store16(void* p, uint4 v) {
  ::cpg::emu::check_vector_access(p);
  std::memcpy(p, &v, 16);
}
inline void store4(void* p, uint32_t v) {
  ::cpg::emu::check_word_access(p);
  std::memcpy(p, &v, 4);
}

inline void cp_async16(void* dst, const void* src) { ::cpg::emu::cp_async16(dst, src, true); }
inline void cp_async16_zfill(void* dst, const void* src, bool valid) {
  ::cpg::emu::cp_async16(dst, src, valid);
}
// An L2 cache policy changes no result: the emulator has no cache.
inline uint64_t l2_evict_first() { return 0; }
inline void cp_async16_zfill_hint(void* dst, const void* src, bool valid, uint64_t) {
  ::cpg::emu::cp_async16(dst, src, valid);
}
inline void cp_async4_zfill(void* dst, const void* src, bool valid) {
  ::cpg::emu::cp_async4(dst, src, valid);
}
inline void cp_async_commit() { ::cpg::emu::cp_async_commit(); }
template <int N>
inline void cp_async_wait() {
  static_assert(N >= 0, "cp.async.wait_group takes N >= 0");
  ::cpg::emu::cp_async_wait(N);
}

inline void ldmatrix_x1(uint32_t (&r)[1], const void* p, CPG_EMU_SITE) {
  ::cpg::emu::ldmatrix(1, false, r, p, site);
}
inline void ldmatrix_x2(uint32_t (&r)[2], const void* p, CPG_EMU_SITE) {
  ::cpg::emu::ldmatrix(2, false, r, p, site);
}
inline void ldmatrix_x4(uint32_t (&r)[4], const void* p, CPG_EMU_SITE) {
  ::cpg::emu::ldmatrix(4, false, r, p, site);
}
inline void ldmatrix_x1_trans(uint32_t (&r)[1], const void* p, CPG_EMU_SITE) {
  ::cpg::emu::ldmatrix(1, true, r, p, site);
}
inline void ldmatrix_x2_trans(uint32_t (&r)[2], const void* p, CPG_EMU_SITE) {
  ::cpg::emu::ldmatrix(2, true, r, p, site);
}
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p, CPG_EMU_SITE) {
  ::cpg::emu::ldmatrix(4, true, r, p, site);
}

inline void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                           const float (&c)[4], CPG_EMU_SITE) {
  ::cpg::emu::mma(::cpg::emu::MmaType::BF16, d, a, b, c, site);
}
inline void mma_f16_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                          const float (&c)[4], CPG_EMU_SITE) {
  ::cpg::emu::mma(::cpg::emu::MmaType::F16, d, a, b, c, site);
}
inline void mma_tf32_1688(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                          const float (&c)[4], CPG_EMU_SITE) {
  ::cpg::emu::mma(::cpg::emu::MmaType::TF32, d, a, b, c, site);
}

// cvt.rna.tf32.f32: round to nearest, ties away from zero, at the 13 low
// mantissa bits, which come out zero. Adding half an ulp to the magnitude bits
// rounds ties away; a carry into the exponent is the right result (up to Inf).
// NaN stays NaN (0x7fffe000 with the sign; the GPU's payload is not modelled).
inline uint32_t to_tf32(float f) {
  const uint32_t u = ::cpg::emu::float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (u & 0x80000000u) | 0x7fffe000u;
  return (u + 0x1000u) & 0xffffe000u;
}

// prmt.b32 in its default mode: byte i of the result is byte (nibble i & 7)
// of {b, a} (a's bytes 0-3, b's 4-7), or, where the nibble's bit 3 is set,
// that byte's sign bit copied over all 8 bits.
inline uint32_t byte_perm(uint32_t a, uint32_t b, uint32_t selector) {
  const uint64_t bytes = (static_cast<uint64_t>(b) << 32) | a;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) {
    const uint32_t nibble = (selector >> (4 * i)) & 0xfu;
    uint32_t byte = static_cast<uint32_t>(bytes >> (8 * (nibble & 7u))) & 0xffu;
    if (nibble & 8u) byte = (byte & 0x80u) ? 0xffu : 0u;
    r |= byte << (8 * i);
  }
  return r;
}

inline float to_float(float x) { return x; }
inline float to_float(bf16 x) {
  return ::cpg::emu::bits_float(static_cast<uint32_t>(x.bits) << 16);
}
inline float to_float(f16 x) {
  const uint32_t sign = static_cast<uint32_t>(x.bits & 0x8000u) << 16;
  const uint32_t exp = (x.bits >> 10) & 0x1fu;
  const uint32_t man = x.bits & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: man * 2^-24, exact in float
    const float mag = static_cast<float>(man) * 5.9604644775390625e-8f;
    return sign ? -mag : mag;
  }
  if (exp == 31) return ::cpg::emu::bits_float(sign | 0x7f800000u | (man << 13));  // Inf, NaN
  return ::cpg::emu::bits_float(sign | ((exp + 112u) << 23) | (man << 13));
}

template <typename T>
T from_float(float f);
template <>
inline float from_float<float>(float f) {
  return f;
}
// Round to nearest even, as torch's c10::BFloat16 (NaN becomes 0x7fc0).
template <>
inline bf16 from_float<bf16>(float f) {
  const uint32_t u = ::cpg::emu::float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{0x7fc0};
  const uint32_t bias = 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>((u + bias) >> 16)};
}
// Round to nearest even, IEEE binary16 (NaN becomes the quiet NaN 0x7e00).
template <>
inline f16 from_float<f16>(float f) {
  const uint32_t u = ::cpg::emu::float_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t mag = u & 0x7fffffffu;
  auto rne = [](uint32_t kept, uint32_t dropped, uint32_t half) {
    return kept + (dropped > half || (dropped == half && (kept & 1u)) ? 1u : 0u);
  };
  uint32_t h;
  if (mag > 0x7f800000u) {
    h = 0x7e00u;
  } else if (mag >= 0x477ff000u) {  // >= 65520, halfway from 65504 up: Inf
    h = 0x7c00u;
  } else if (mag >= 0x38800000u) {  // normal (>= 2^-14): rebias, drop 13 bits
    h = rne((mag - 0x38000000u) >> 13, mag & 0x1fffu, 0x1000u);
  } else if (mag >= 0x33000000u) {  // subnormal units of 2^-24 (2^-25 rounds to 0)
    const uint32_t man = (mag & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - (mag >> 23);  // 14..24
    h = rne(man >> shift, man & ((1u << shift) - 1u), 1u << (shift - 1u));
  } else {
    h = 0;
  }
  return f16{static_cast<uint16_t>(sign | h)};
}

template <typename T>
inline uint32_t pack2(T lo, T hi) {
  static_assert(sizeof(T) == 2, "pack2 packs 16-bit values");
  uint16_t l, h;
  std::memcpy(&l, &lo, 2);
  std::memcpy(&h, &hi, 2);
  return static_cast<uint32_t>(l) | (static_cast<uint32_t>(h) << 16);
}

template <typename T>
inline uint32_t pack2_rn(float lo, float hi) {
  return pack2(from_float<T>(lo), from_float<T>(hi));
}

template <typename Kernel>
inline void set_max_dynamic_smem(Kernel kernel, int bytes) {
  ::cpg::emu::set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), bytes);
}

inline int sm_count() { return 4; }
// sm_90's (H100, H200): the emulator's shared-memory bounds are these.
inline SmemLimits smem_limits() { return {228 * 1024, 227 * 1024, 1024}; }

// Device memory is host memory here, and launches are synchronous: what the
// CUDA build orders on the stream is already done when device_free runs.
inline void* device_alloc(size_t bytes, stream_t) {
  void* p = std::malloc(bytes > 0 ? bytes : 1);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
inline void device_free(void* p, stream_t) { std::free(p); }

}  // namespace emulated
}  // namespace cpgdev

#undef CPG_EMU_SITE

// CUDA's built-in variables: the calling fiber's coordinates.
#define threadIdx (::cpg::emu::thread_idx())
#define blockIdx (::cpg::emu::block_idx())
#define blockDim (::cpg::emu::block_dim())
#define gridDim (::cpg::emu::grid_dim())
