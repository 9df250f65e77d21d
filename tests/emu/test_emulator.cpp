// Tests of the CUDA emulator (csrc/emu) against naive definitions of each
// operation. The kernels use cuda/portability.h exactly as the library's do,
// and the file also builds with nvcc: on a GPU the checks that do not probe
// emulator-only behaviour (seeds, stale data, error reports) run unchanged,
// which pins the emulator's semantics to the hardware's.
//
//   c++ -std=c++17 -O1 -pthread -DCPG_EMU -I csrc csrc/emu/runtime.cpp tests/emu/test_emulator.cpp
//   nvcc -std=c++17 -arch=sm_90 -I csrc -x cu tests/emu/test_emulator.cpp
//
// Prints one line per check and exits non-zero if any fails.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cuda/portability.h"

// =================================================================== kernels

CPG_GLOBAL void shuffle_kernel(const int* arg, unsigned* out, float* fout) {
  const int t = threadIdx.x, n = blockDim.x;
  const unsigned v = 1000u * t + 7u;
  const int a = arg[t];
  out[0 * n + t] = cpgdev::shfl(v, a);
  out[1 * n + t] = cpgdev::shfl_xor(v, a);
  out[2 * n + t] = cpgdev::shfl_down(v, static_cast<unsigned>(a));
  out[3 * n + t] = cpgdev::shfl_up(v, static_cast<unsigned>(a));
  out[4 * n + t] = cpgdev::lane_id();
  fout[t] = cpgdev::shfl_xor(0.5f * t, 1);
}

// Threads from `live` on exit first; the others vote.
CPG_GLOBAL void vote_kernel(const int* pred, int live, unsigned* out) {
  const int t = threadIdx.x;
  if (t >= live) return;
  const bool p = pred[t] != 0;
  out[3 * t] = cpgdev::ballot(p);
  out[3 * t + 1] = cpgdev::any(p);
  out[3 * t + 2] = cpgdev::all(p);
}

// Four 8x8 matrices in a 16x16 tile of 16-bit values (rows 32 bytes apart):
// matrix j holds rows 8*(j%2).., columns 8*(j/2)... Lane i gives row
// (3*(i%8)+1)%8 of matrix i/8, so a mix-up of lanes shows. out[v][lane][reg]
// for the variants x1, x2, x4, x1.trans, x2.trans, x4.trans.
CPG_DEVICE int ldmatrix_tile_index(int lane) {
  const int j = (lane / 8) % 4, r = (3 * (lane % 8) + 1) % 8;
  return (8 * (j % 2) + r) * 16 + 8 * (j / 2);
}

CPG_GLOBAL void ldmatrix_kernel(const uint16_t* src, uint32_t* out) {
  CPG_SHARED_ARRAY(uint16_t, tile, 256);
  const int l = threadIdx.x;
  for (int i = l; i < 256; i += 32) tile[i] = src[i];
  cpgdev::syncthreads();
  const uint16_t* row = &tile[ldmatrix_tile_index(l)];
  uint32_t r1[1], r2[2], r4[4];
  uint32_t* o = out + 4 * l;
  cpgdev::ldmatrix_x1(r1, row);
  o[0] = r1[0];
  cpgdev::ldmatrix_x2(r2, row);
  o[128] = r2[0], o[129] = r2[1];
  cpgdev::ldmatrix_x4(r4, row);
  for (int j = 0; j < 4; ++j) o[256 + j] = r4[j];
  cpgdev::ldmatrix_x1_trans(r1, row);
  o[384] = r1[0];
  cpgdev::ldmatrix_x2_trans(r2, row);
  o[512] = r2[0], o[513] = r2[1];
  cpgdev::ldmatrix_x4_trans(r4, row);
  for (int j = 0; j < 4; ++j) o[640 + j] = r4[j];
}

// One warp, fragments given as [lane][register]; type 0 bf16, 1 f16, 2 tf32.
CPG_GLOBAL void mma_kernel(int type, const uint32_t* a, const uint32_t* b, const float* c,
                           float* d) {
  const int l = threadIdx.x;
  uint32_t ra[4], rb[2];
  float rc[4], rd[4];
  for (int i = 0; i < 4; ++i) ra[i] = a[4 * l + i], rc[i] = c[4 * l + i];
  for (int i = 0; i < 2; ++i) rb[i] = b[2 * l + i];
  if (type == 0) {
    cpgdev::mma_bf16_16816(rd, ra, rb, rc);
  } else if (type == 1) {
    cpgdev::mma_f16_16816(rd, ra, rb, rc);
  } else {
    cpgdev::mma_tf32_1688(rd, ra, rb, rc);
  }
  for (int i = 0; i < 4; ++i) d[4 * l + i] = rd[i];
}

// D = A B with fragments loaded by ldmatrix as a GEMM loads them: A [16][16]
// row-major (x4); B either as Bt [8][16] (x2) or as B [16][8] (x2.trans).
// d[0..127] from Bt, d[128..255] from B; each [lane][register].
CPG_GLOBAL void ldmatrix_mma_kernel(int type, const uint16_t* a, const uint16_t* bt,
                                    const uint16_t* bk, float* d) {
  CPG_SHARED_ARRAY(uint16_t, sa, 16 * 24);  // rows padded to 48 bytes
  CPG_SHARED_ARRAY(uint16_t, sbt, 8 * 24);
  CPG_SHARED_ARRAY(uint16_t, sbk, 16 * 16);  // rows of 32 bytes
  const int l = threadIdx.x;
  for (int i = l; i < 256; i += 32) sa[i / 16 * 24 + i % 16] = a[i];
  for (int i = l; i < 128; i += 32)
    sbt[i / 16 * 24 + i % 16] = bt[i], sbk[i / 8 * 16 + i % 8] = bk[i];
  cpgdev::syncthreads();
  uint32_t ra[4], rb[2], rbk[2];
  cpgdev::ldmatrix_x4(ra, &sa[(l % 16) * 24 + (l / 16) * 8]);
  cpgdev::ldmatrix_x2(rb, &sbt[(l % 8) * 24 + (l / 8 % 2) * 8]);
  cpgdev::ldmatrix_x2_trans(rbk, &sbk[(l % 16) * 16]);
  float zero[4] = {0.f, 0.f, 0.f, 0.f}, d1[4], d2[4];
  if (type == 0) {
    cpgdev::mma_bf16_16816(d1, ra, rb, zero);
    cpgdev::mma_bf16_16816(d2, ra, rbk, zero);
  } else {
    cpgdev::mma_f16_16816(d1, ra, rb, zero);
    cpgdev::mma_f16_16816(d2, ra, rbk, zero);
  }
  for (int i = 0; i < 4; ++i) d[4 * l + i] = d1[i], d[128 + 4 * l + i] = d2[i];
}

CPG_GLOBAL void narrow_kernel(const float* x, int n, cpgdev::bf16* bf, cpgdev::f16* hf,
                              uint32_t* tf) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  bf[i] = cpgdev::from_float<cpgdev::bf16>(x[i]);
  hf[i] = cpgdev::from_float<cpgdev::f16>(x[i]);
  tf[i] = cpgdev::to_tf32(x[i]);
}

// Every 16-bit pattern: widened, and widened then narrowed again.
CPG_GLOBAL void widen_kernel(const cpgdev::bf16* bf, const cpgdev::f16* hf, float* bf_wide,
                             float* hf_wide, cpgdev::bf16* bf_back, cpgdev::f16* hf_back,
                             uint32_t* packed) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  bf_wide[i] = cpgdev::to_float(bf[i]);
  hf_wide[i] = cpgdev::to_float(hf[i]);
  bf_back[i] = cpgdev::from_float<cpgdev::bf16>(bf_wide[i]);
  hf_back[i] = cpgdev::from_float<cpgdev::f16>(hf_wide[i]);
  if (i == 0) {
    packed[0] = cpgdev::pack2(cpgdev::from_float<cpgdev::bf16>(1.0f),
                              cpgdev::from_float<cpgdev::bf16>(2.0f));
    packed[1] = cpgdev::pack2(cpgdev::from_float<cpgdev::f16>(1.0f),
                              cpgdev::from_float<cpgdev::f16>(-2.0f));
    packed[2] = static_cast<uint32_t>(cpgdev::to_float(1.5f) == 1.5f) +
                (cpgdev::from_float<float>(2.5f) == 2.5f);
  }
}

// 32 threads; each copies 16 bytes of `src` per group. Thread t's observation
// k lands in obs[32k + t]: 0 before any wait, 1 after wait<1> (first group),
// 2 the second group before its wait, 3 after wait<0>, 4 a neighbour's
// first-group data after a barrier. 0 and 2 read data in flight on purpose:
// stale in the emulator, undefined on a GPU (where racecheck flags them).
CPG_GLOBAL void cp_async_kernel(const unsigned* src, unsigned* obs) {
  CPG_SHARED_ARRAY(unsigned, first, 128);
  CPG_SHARED_ARRAY(unsigned, second, 128);
  const int t = threadIdx.x;
  cpgdev::cp_async16(&first[4 * t], src + 4 * t);
  cpgdev::cp_async_commit();
  cpgdev::cp_async16_zfill(second + 4 * t, src + 128 + 4 * t, t % 2 == 0);
  cpgdev::cp_async_commit();
  obs[t] = first[4 * t];
  cpgdev::cp_async_wait<1>();
  obs[32 + t] = first[4 * t + 3];
  obs[64 + t] = second[4 * t];
  cpgdev::cp_async_wait<0>();
  obs[96 + t] = second[4 * t + 1];
  cpgdev::syncthreads();
  obs[128 + t] = first[4 * ((t + 1) % 32)];
}

// 32 threads: thread t copies word t of `src` with cp.async of 4 bytes (odd
// threads zero-fill) and 16 bytes with the L2 evict-first hint; after the wait
// and a barrier each reads its neighbour's words.
CPG_GLOBAL void cp_async4_hint_kernel(const unsigned* src, unsigned* obs) {
  CPG_SHARED_ARRAY(unsigned, words, 32);
  CPG_SHARED_ARRAY(unsigned, vecs, 128);
  const int t = threadIdx.x;
  const uint64_t policy = cpgdev::l2_evict_first();
  cpgdev::cp_async4_zfill(&words[t], src + t, t % 2 == 0);
  cpgdev::cp_async16_zfill_hint(&vecs[4 * t], src + 32 + 4 * t, t != 5, policy);
  cpgdev::cp_async_commit();
  cpgdev::cp_async_wait<0>();
  cpgdev::syncthreads();
  obs[t] = words[(t + 1) % 32];
  obs[32 + t] = vecs[4 * ((t + 1) % 32) + 2];
}

// prmt.b32 (default mode) for a few selectors, sign replication included.
CPG_GLOBAL void byte_perm_kernel(const unsigned* sel, unsigned* out) {
  const int t = threadIdx.x;
  out[t] = cpgdev::byte_perm(0x80ff7f01u, 0x00c35a81u, sel[t]);
}

CPG_GLOBAL void vector_copy_kernel(const unsigned* src, unsigned* dst) {
  CPG_SHARED_ARRAY(uint4, buf, 32);
  const int t = threadIdx.x;
  cpgdev::store16(&buf[t], cpgdev::load16(src + 4 * t));
  cpgdev::syncthreads();
  cpgdev::store16(dst + 4 * t, cpgdev::load16(&buf[31 - t]));
}

// 256 threads per block: a tree through shared memory, then a warp's shuffles.
CPG_GLOBAL void block_sum_kernel(const int* x, int* out) {
  CPG_SHARED_ARRAY(int, partial, 256);
  const int t = threadIdx.x;
  partial[t] = x[blockIdx.x * 256 + t];
  cpgdev::syncthreads();
  for (int s = 128; s >= 32; s /= 2) {
    if (t < s) partial[t] += partial[t + s];
    cpgdev::syncthreads();
  }
  if (t < 32) {
    int v = partial[t];
    for (unsigned d = 16; d > 0; d /= 2) v += cpgdev::shfl_down(v, d);
    if (t == 0) out[blockIdx.x] = v;
  }
}

// Threads from `live` exit at once; the others still meet at the barrier.
CPG_GLOBAL void early_exit_kernel(int live, int* out) {
  CPG_SHARED_ARRAY(int, s, 64);
  const int t = threadIdx.x;
  if (t >= live) return;
  s[t] = 10 * t;
  cpgdev::syncthreads();
  out[t] = s[live - 1 - t];
}

struct Pair {
  int a, b;
};

// One thread: pointer arithmetic on shared arrays.
CPG_GLOBAL void views_kernel(int* out) {
  CPG_SHARED_ARRAY(int, s, 8);
  CPG_SHARED_ARRAY(Pair, pairs, 4);
  for (int i = 0; i < 8; ++i) s[i] = 10 * i;
  auto p = s + 2;
  out[0] = p[1];
  out[1] = *p;
  p += 3;
  out[2] = *(p - 1);
  const int* raw = s;
  out[3] = raw[7];
  pairs[1].b = 5;
  (pairs + 1)->a = 6;
  out[4] = 10 * pairs[1].a + pairs[1].b;
}

// Grid (3,2,1) of blocks (8,4,2).
CPG_GLOBAL void atomics_kernel(int* count, float* sum, unsigned long long* big, unsigned* u,
                               unsigned* bits, int* block_counts, unsigned* coords,
                               unsigned* ballots, int* dims_ok) {
  CPG_SHARED_ARRAY(int, block_count, 1);
  const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned g = block * 64 + thread;
  if (thread == 0) block_count[0] = 0;
  cpgdev::syncthreads();
  cpgdev::atomic_add(count, 1);
  cpgdev::atomic_add(sum, 0.25f);
  cpgdev::atomic_add(big, 1ull << 40);
  cpgdev::atomic_add(u, 3u);
  cpgdev::atomic_or(&bits[block], 1u << (thread % 32));
  cpgdev::atomic_add(block_count, 1);
  coords[2 * g] = threadIdx.x | threadIdx.y << 8 | threadIdx.z << 16;
  coords[2 * g + 1] = blockIdx.x | blockIdx.y << 8 | blockIdx.z << 16;
  ballots[g] = cpgdev::ballot(threadIdx.x == 0);
  dims_ok[g] = blockDim.x == 8 && blockDim.y == 4 && blockDim.z == 2 && gridDim.x == 3 &&
               gridDim.y == 2 && gridDim.z == 1;
  cpgdev::syncthreads();
  if (thread == 0) block_counts[block] = block_count[0];
}

#if defined(CPG_EMU)  // kernels that probe emulator-only behaviour

// Reads the neighbour's slot without a barrier: the result depends on order.
CPG_GLOBAL void racy_kernel(int* out) {
  CPG_SHARED_ARRAY(int, slot, 64);
  const int t = threadIdx.x;
  slot[t] = t;
  out[t] = slot[(t + 1) % 64];
}

CPG_GLOBAL void uninitialised_kernel(unsigned* out) {
  CPG_SHARED_ARRAY(unsigned, s, 32);
  out[threadIdx.x] = s[threadIdx.x];
}

CPG_GLOBAL void oob_kernel(float* out) {
  CPG_SHARED_ARRAY(float, buf, 32);
  buf[threadIdx.x + 1] = 1.0f;  // thread 31 writes buf[32]
  out[threadIdx.x] = buf[threadIdx.x];
}

CPG_GLOBAL void view_oob_kernel(int* out) {
  CPG_SHARED_ARRAY(int, s, 8);
  auto p = s + 4;
  out[0] = p[4];  // s[8]
}

CPG_GLOBAL void dynamic_oob_kernel(float* out) {
  CPG_DYNAMIC_SHARED(float, dyn);
  dyn[threadIdx.x] = 1.0f;
  if (threadIdx.x == 5) out[0] = dyn[threadIdx.x + 100];
}

// out[i] = in[i] for i < n, one element per thread.
CPG_GLOBAL void global_copy_kernel(const float* in, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = in[i];
}

CPG_GLOBAL void dynamic_smem_kernel(int* out) {
  CPG_DYNAMIC_SHARED(int, dyn);
  dyn[threadIdx.x] = static_cast<int>(threadIdx.x);
  cpgdev::syncthreads();
  out[threadIdx.x] = dyn[31 - threadIdx.x];
}

CPG_GLOBAL void divergent_barrier_kernel(int* out) {
  if (threadIdx.x < 16) {
    cpgdev::syncthreads();
    out[threadIdx.x] = 1;
  } else {
    cpgdev::syncthreads();
    out[threadIdx.x] = 2;
  }
}

// Lanes 0-15 wait at the barrier for lanes 16-31, which wait in a shuffle for them.
CPG_GLOBAL void barrier_shuffle_deadlock_kernel(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x < 16) {
    cpgdev::syncthreads();
  } else {
    v = cpgdev::shfl_xor(v, 1);
  }
  out[threadIdx.x] = v;
}

CPG_GLOBAL void shfl_exited_kernel(unsigned* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = cpgdev::shfl_down(threadIdx.x, 8u);  // lanes 8-15 read lanes 16-23
}

CPG_GLOBAL void mma_exited_kernel(float* out) {
  if (threadIdx.x == 5) return;
  const uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
  const float c[4] = {0.f, 0.f, 0.f, 0.f};
  float d[4];
  cpgdev::mma_bf16_16816(d, a, b, c);
  out[threadIdx.x] = d[0];
}

CPG_GLOBAL void ldmatrix_global_kernel(const uint16_t* global, uint32_t* out) {
  uint32_t r[1];
  cpgdev::ldmatrix_x1(r, global + 8 * (threadIdx.x % 8));
  out[threadIdx.x] = r[0];
}

CPG_GLOBAL void cp_async_misaligned_kernel(const unsigned* src) {
  CPG_SHARED_ARRAY(unsigned, s, 64);
  cpgdev::cp_async16(&s[4 * threadIdx.x + 1], src);
  cpgdev::cp_async_wait<0>();
}

CPG_GLOBAL void load16_misaligned_kernel(const unsigned* src, unsigned* out) {
  out[threadIdx.x] = cpgdev::load16(src + 1).x;
}

// Threads 0-15 issue copies and exit without waiting (the odd ones without
// committing); threads 16-31 read the data after the barrier.
CPG_GLOBAL void cp_async_exit_kernel(const unsigned* src, unsigned* out) {
  CPG_SHARED_ARRAY(unsigned, s, 64);
  const int t = threadIdx.x;
  if (t < 16) {
    cpgdev::cp_async16(&s[4 * t], src + 4 * t);
    if (t % 2 == 0) cpgdev::cp_async_commit();
    return;
  }
  cpgdev::syncthreads();
  out[t - 16] = s[4 * (t - 16) + 2];
}

#endif  // CPG_EMU

// ============================================================== host helpers

#if defined(CPG_EMU)
// The emulator's device memory is host memory.
template <typename T>
class Buffer {
 public:
  explicit Buffer(std::vector<T> init) : data_(std::move(init)) {}
  explicit Buffer(size_t n, T fill = T()) : data_(n, fill) {}
  T* ptr() { return data_.data(); }
  std::vector<T> get() const { return data_; }

 private:
  std::vector<T> data_;
};
#else
void cuda_check(cudaError_t e) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "CUDA error: %s\n", cudaGetErrorString(e));
    std::exit(2);
  }
}

template <typename T>
class Buffer {
 public:
  explicit Buffer(const std::vector<T>& init) : n_(init.size()) {
    cuda_check(cudaMalloc(&ptr_, n_ * sizeof(T)));
    cuda_check(cudaMemcpy(ptr_, init.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  explicit Buffer(size_t n, T fill = T()) : Buffer(std::vector<T>(n, fill)) {}
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { cudaFree(ptr_); }
  T* ptr() { return ptr_; }
  std::vector<T> get() const {
    std::vector<T> v(n_);
    cuda_check(cudaMemcpy(v.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return v;
  }

 private:
  size_t n_;
  T* ptr_ = nullptr;
};
#endif

int g_failures = 0;

void check(bool ok, const std::string& name, const std::string& detail = "") {
  std::printf("%s %s%s%s\n", ok ? "ok  " : "FAIL", name.c_str(), ok || detail.empty() ? "" : ": ",
              ok ? "" : detail.c_str());
  if (!ok) ++g_failures;
}

template <typename T>
std::string str(const T& v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

// "" when equal, else the first difference.
template <typename T>
std::string mismatch(const std::vector<T>& got, const std::vector<T>& want) {
  if (got.size() != want.size()) return "size " + str(got.size()) + " != " + str(want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    if (!(got[i] == want[i])) {
      return "[" + str(i) + "] got " + str(got[i]) + ", want " + str(want[i]);
    }
  }
  return "";
}

void check_equal_vectors(const std::string& name, const std::vector<uint32_t>& got,
                         const std::vector<uint32_t>& want) {
  const std::string m = mismatch(got, want);
  check(m.empty(), name, m);
}

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// x rounded to p significant bits, its exponent taken as at least emin (so that
// subnormals keep fewer bits, as in IEEE formats); ties to even or away.
double round_significand(double x, int p, int emin, bool ties_away) {
  if (x == 0 || std::isinf(x)) return x;
  const int e = std::max(std::ilogb(x), emin);
  const double scaled = std::ldexp(x, p - 1 - e);  // exact
  return std::ldexp(ties_away ? std::round(scaled) : std::nearbyint(scaled), e - (p - 1));
}

uint16_t ref_bf16(float x) {
  const double r = round_significand(x, 8, -126, false);
  if (std::fabs(r) >= 0x1p128) return (bits_of(x) >> 16 & 0x8000u) | 0x7f80u;
  return static_cast<uint16_t>(bits_of(static_cast<float>(r)) >> 16);
}

uint32_t ref_tf32(float x) {
  const double r = round_significand(x, 11, -126, true);
  if (std::fabs(r) >= 0x1p128) return (bits_of(x) & 0x80000000u) | 0x7f800000u;
  return bits_of(static_cast<float>(r));
}

uint16_t ref_f16(float x) {
  const double a = std::fabs(round_significand(x, 11, -14, false));
  const uint16_t sign = std::signbit(x) ? 0x8000u : 0u;
  if (a >= 65536.0) return sign | 0x7c00u;
  if (a < 0x1p-14) return sign | static_cast<uint16_t>(a * 0x1p24);
  const int e = std::ilogb(a);
  return sign |
         static_cast<uint16_t>((e + 15) << 10 | static_cast<int>(std::ldexp(a, 10 - e) - 1024));
}

float ref_f16_to_float(uint16_t h) {
  const int e = h >> 10 & 31, m = h & 1023;
  const float sign = h & 0x8000u ? -1.f : 1.f;
  if (e == 31) return m ? NAN : sign * INFINITY;
  return sign * static_cast<float>(e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25));
}

float ref_bf16_to_float(uint16_t h) { return float_of(static_cast<uint32_t>(h) << 16); }

// The error message of a launch that should fail ("" if it did not).
template <typename F>
std::string error_of(F launch) {
  try {
    launch();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

bool contains_all(const std::string& s, std::initializer_list<const char*> parts) {
  for (const char* p : parts) {
    if (s.find(p) == std::string::npos) return false;
  }
  return true;
}

void check_error(const std::string& name, const std::string& error,
                 std::initializer_list<const char*> parts) {
  check(contains_all(error, parts), name, error.empty() ? "no error" : error);
}

std::mt19937 g_rng(12345);
int rand_int(int lo, int hi) {
  return lo + static_cast<int>(g_rng() % static_cast<unsigned>(hi - lo + 1));
}

// ==================================================================== checks

void test_shuffles() {
  const int n = 64;
  std::vector<int> arg(n);
  for (int t = 0; t < n; ++t) arg[t] = rand_int(-40, 40);
  Buffer<int> d_arg(arg);
  Buffer<unsigned> out(5 * n);
  Buffer<float> fout(n);
  CPG_LAUNCH(shuffle_kernel, 1, n, 0, nullptr, d_arg.ptr(), out.ptr(), fout.ptr());
  const std::vector<unsigned> got = out.get();

  // PTX shfl.sync (width 32): the source lane from b[4:0]; a lane whose source
  // falls outside the warp keeps its own value.
  auto value = [](int t) { return 1000u * t + 7u; };
  const char* names[4] = {"shfl (idx)", "shfl_xor (bfly)", "shfl_down", "shfl_up"};
  for (int mode = 0; mode < 4; ++mode) {
    std::vector<unsigned> want(n), have(got.begin() + mode * n, got.begin() + (mode + 1) * n);
    for (int t = 0; t < n; ++t) {
      const int lane = t % 32, b = arg[t] & 31;
      int src = lane;
      if (mode == 0) src = b;
      if (mode == 1) src = lane ^ b;
      if (mode == 2 && lane + b < 32) src = lane + b;
      if (mode == 3 && lane - b >= 0) src = lane - b;
      want[t] = value(t - lane + src);
    }
    check_equal_vectors(names[mode], have, want);
  }
  std::vector<unsigned> lanes(got.begin() + 4 * n, got.end()), want_lanes(n);
  for (int t = 0; t < n; ++t) want_lanes[t] = t % 32;
  check_equal_vectors("lane_id", lanes, want_lanes);
  std::vector<float> want_f(n);
  for (int t = 0; t < n; ++t) want_f[t] = 0.5f * (t ^ 1);
  const std::string m = mismatch(fout.get(), want_f);
  check(m.empty(), "shfl_xor of float", m);
}

void run_votes(const std::string& name, const std::vector<int>& pred, int live) {
  Buffer<int> d_pred(pred);
  Buffer<unsigned> out(3 * pred.size(), 0xdeadu);
  CPG_LAUNCH(vote_kernel, 1, static_cast<int>(pred.size()), 0, nullptr, d_pred.ptr(), live,
             out.ptr());
  std::vector<unsigned> want(3 * pred.size(), 0xdeadu);
  for (int w = 0; w * 32 < live; ++w) {
    unsigned ballot = 0, mask = 0;
    for (int l = 0; l < 32 && 32 * w + l < live; ++l) {
      mask |= 1u << l;
      if (pred[32 * w + l]) ballot |= 1u << l;
    }
    for (int l = 0; l < 32 && 32 * w + l < live; ++l) {
      const int t = 32 * w + l;
      want[3 * t] = ballot;
      want[3 * t + 1] = ballot != 0;
      want[3 * t + 2] = ballot == mask;
    }
  }
  check_equal_vectors(name, out.get(), want);
}

void test_votes() {
  std::vector<int> mixed_true(64), false_mixed(64);
  for (int t = 0; t < 64; ++t) {
    mixed_true[t] = t < 32 ? rand_int(0, 1) : 1;
    false_mixed[t] = t < 32 ? 0 : rand_int(0, 1);
  }
  run_votes("ballot/any/all (mixed, all true)", mixed_true, 64);
  run_votes("ballot/any/all (all false, mixed)", false_mixed, 64);
}

void test_ldmatrix() {
  std::vector<uint16_t> tile(256);
  for (int i = 0; i < 256; ++i) tile[i] = static_cast<uint16_t>(0x1000 + 7 * i);
  Buffer<uint16_t> src(tile);
  Buffer<uint32_t> out(6 * 128);
  CPG_LAUNCH(ldmatrix_kernel, 1, 32, 0, nullptr, src.ptr(), out.ptr());
  const std::vector<uint32_t> got = out.get();

  // Element (r, c) of matrix j is the c-th value at the address lane 8j+r gave.
  // It lands in register j of lane 4r + c/2, half c%2; with .trans, in lane
  // 4c + r/2, half r%2.
  auto tile_index = [](int lane) {
    const int j = (lane / 8) % 4, r = (3 * (lane % 8) + 1) % 8;
    return (8 * (j % 2) + r) * 16 + 8 * (j / 2);
  };
  const int counts[3] = {1, 2, 4};
  for (int trans = 0; trans < 2; ++trans) {
    for (int v = 0; v < 3; ++v) {
      const int count = counts[v], variant = 3 * trans + v;
      std::vector<uint32_t> want(128, 0), have(128, 0);
      for (int l = 0; l < 32; ++l) {
        for (int j = 0; j < count; ++j) have[4 * l + j] = got[128 * variant + 4 * l + j];
      }
      for (int j = 0; j < count; ++j) {
        for (int r = 0; r < 8; ++r) {
          for (int c = 0; c < 8; ++c) {
            const uint32_t e = tile[tile_index(8 * j + r) + c];
            const int lane = trans ? 4 * c + r / 2 : 4 * r + c / 2;
            const int half = trans ? r % 2 : c % 2;
            want[4 * lane + j] |= e << (16 * half);
          }
        }
      }
      check_equal_vectors("ldmatrix_x" + str(count) + (trans ? "_trans" : ""), have, want);
    }
  }
}

// Row and column of fragment element i of lane l, as the PTX ISA states them
// ("Matrix Fragments for mma.m16n8k16 with floating point type" and "Matrix
// Fragments for mma.m16n8k8" for .tf32); g = groupID, t = threadID_in_group.
struct RowCol {
  int row, col;
};
RowCol a_16816(int l, int i) {
  const int g = l >> 2, t = l % 4;
  return {(i < 2 || (i >= 4 && i < 6)) ? g : g + 8, t * 2 + (i & 1) + (i >= 4 ? 8 : 0)};
}
RowCol b_16816(int l, int i) { return {(l % 4) * 2 + (i & 1) + (i >= 2 ? 8 : 0), l >> 2}; }
RowCol a_1688(int l, int i) {
  const int g = l >> 2, t = l % 4;
  return {(i == 0 || i == 2) ? g : g + 8, i < 2 ? t : t + 4};
}
RowCol b_1688(int l, int i) { return {i == 0 ? l % 4 : l % 4 + 4, l >> 2}; }
RowCol c_16x8(int l, int i) { return {i < 2 ? l >> 2 : (l >> 2) + 8, (l % 4) * 2 + (i & 1)}; }

// Random A (16xK), B (Kx8), C (16x8) representable in `type`, integers or not;
// the fragments through `mma_kernel` against the fp32 product of the decoded inputs.
void run_mma(int type, bool integers, const std::string& name) {
  const int K = type == 2 ? 8 : 16;
  std::vector<uint32_t> a_enc(16 * K), b_enc(K * 8);  // bf16/f16 bits, or tf32 register
  std::vector<double> a(16 * K), b(K * 8), c(16 * 8);
  auto make = [&](uint32_t* enc, double* dec) {
    // Small integers, or fractions in [-2, 2] with 21 significant bits.
    const float x = integers ? rand_int(-8, 8) : rand_int(-(1 << 20), 1 << 20) * 0x1p-19f;
    if (type == 0) *enc = ref_bf16(x), *dec = ref_bf16_to_float(static_cast<uint16_t>(*enc));
    if (type == 1) *enc = ref_f16(x), *dec = ref_f16_to_float(static_cast<uint16_t>(*enc));
    if (type == 2) {  // the low 13 bits of a tf32 operand are ignored
      const uint32_t t = ref_tf32(x);
      *enc = t | (g_rng() & 0x1fffu);
      *dec = float_of(t);
    }
  };
  for (int i = 0; i < 16 * K; ++i) make(&a_enc[i], &a[i]);
  for (int i = 0; i < K * 8; ++i) make(&b_enc[i], &b[i]);
  for (int i = 0; i < 16 * 8; ++i)
    c[i] = integers ? rand_int(-64, 64) : rand_int(-1000, 1000) / 64.0;

  std::vector<uint32_t> ra(128), rb(64);
  std::vector<float> rc(128);
  for (int l = 0; l < 32; ++l) {
    if (type == 2) {
      for (int i = 0; i < 4; ++i) ra[4 * l + i] = a_enc[a_1688(l, i).row * K + a_1688(l, i).col];
      for (int i = 0; i < 2; ++i) rb[2 * l + i] = b_enc[b_1688(l, i).row * 8 + b_1688(l, i).col];
    } else {  // register r holds elements 2r (low half) and 2r+1
      for (int i = 0; i < 8; ++i)
        ra[4 * l + i / 2] |= a_enc[a_16816(l, i).row * K + a_16816(l, i).col] << (16 * (i % 2));
      for (int i = 0; i < 4; ++i)
        rb[2 * l + i / 2] |= b_enc[b_16816(l, i).row * 8 + b_16816(l, i).col] << (16 * (i % 2));
    }
    for (int i = 0; i < 4; ++i)
      rc[4 * l + i] = static_cast<float>(c[c_16x8(l, i).row * 8 + c_16x8(l, i).col]);
  }
  Buffer<uint32_t> d_a(ra), d_b(rb);
  Buffer<float> d_c(rc), d_d(128);
  CPG_LAUNCH(mma_kernel, 1, 32, 0, nullptr, type, d_a.ptr(), d_b.ptr(), d_c.ptr(), d_d.ptr());
  const std::vector<float> got = d_d.get();

  std::string error;
  for (int l = 0; l < 32 && error.empty(); ++l) {
    for (int i = 0; i < 4 && error.empty(); ++i) {
      const RowCol rc_ = c_16x8(l, i);
      double want = c[rc_.row * 8 + rc_.col], scale = std::fabs(want);
      for (int k = 0; k < K; ++k) {
        want += a[rc_.row * K + k] * b[k * 8 + rc_.col];
        scale += std::fabs(a[rc_.row * K + k] * b[k * 8 + rc_.col]);
      }
      const double tol = integers ? 0.0 : 1e-5 * scale;
      if (std::fabs(got[4 * l + i] - want) > tol) {
        error = "D(" + str(rc_.row) + "," + str(rc_.col) + ") got " + str(got[4 * l + i]) +
                ", want " + str(want);
      }
    }
  }
  check(error.empty(), name, error);
}

void test_mma() {
  const char* types[3] = {"bf16", "f16", "tf32"};
  for (int type = 0; type < 3; ++type) {
    const std::string shape = type == 2 ? "m16n8k8" : "m16n8k16";
    run_mma(type, true, "mma " + shape + " " + types[type] + " (integers)");
    run_mma(type, false, "mma " + shape + " " + types[type] + " (fractions)");
  }
}

void run_ldmatrix_mma(int type, const std::string& name) {
  std::vector<uint16_t> a(256), bt(128), bk(128);
  std::vector<double> da(256), db(128);  // db as [k][n]
  auto make = [&](uint16_t* enc, double* dec) {
    const float x = static_cast<float>(rand_int(-8, 8));
    *enc = type == 0 ? ref_bf16(x) : ref_f16(x);
    *dec = x;
  };
  for (int i = 0; i < 256; ++i) make(&a[i], &da[i]);
  for (int k = 0; k < 16; ++k) {
    for (int n = 0; n < 8; ++n) {
      make(&bk[k * 8 + n], &db[k * 8 + n]);
      bt[n * 16 + k] = bk[k * 8 + n];
    }
  }
  Buffer<uint16_t> d_a(a), d_bt(bt), d_bk(bk);
  Buffer<float> d(256);
  CPG_LAUNCH(ldmatrix_mma_kernel, 1, 32, 0, nullptr, type, d_a.ptr(), d_bt.ptr(), d_bk.ptr(),
             d.ptr());
  const std::vector<float> got = d.get();
  std::vector<float> want(256);
  for (int l = 0; l < 32; ++l) {
    for (int i = 0; i < 4; ++i) {
      const RowCol rc = c_16x8(l, i);
      double sum = 0;
      for (int k = 0; k < 16; ++k) sum += da[rc.row * 16 + k] * db[k * 8 + rc.col];
      want[4 * l + i] = want[128 + 4 * l + i] = static_cast<float>(sum);
    }
  }
  const std::string m = mismatch(got, want);
  check(m.empty(), name, m);
}

void test_conversions() {
  std::vector<float> x = {0.f, -0.f, 1.f, -1.f, INFINITY, -INFINITY, FLT_MAX, -FLT_MAX, FLT_MIN};
  const float f16_edges[] = {65504.f,    65519.99f,  65520.f,  65536.f,    0x1p-24f,  0x1p-25f,
                             0x1.8p-25f, 0x1.8p-24f, 0x1p-14f, 0x1.002p0f, 0x1.006p0f};
  const uint32_t tie_bits[] = {0x3f808000u, 0x3f818000u, 0x3f801000u, 0xbf801000u, 0x7f7ff000u};
  x.insert(x.end(), std::begin(f16_edges), std::end(f16_edges));
  for (uint32_t u : tie_bits) x.push_back(float_of(u));
  x.push_back(std::numeric_limits<float>::denorm_min());
  for (int i = 0; i < 3000; ++i) {
    // Any magnitude, the f16 range, bf16 ties, tf32 and f16 ties.
    x.push_back(float_of(g_rng()));
    x.push_back(std::ldexp(static_cast<float>(g_rng() % (1u << 24)), rand_int(-54, -7)));
    x.push_back(float_of((g_rng() & 0xffff0000u) | 0x8000u));
    x.push_back(float_of((g_rng() & 0xffffe000u) | 0x1000u));
  }
  for (float& v : x) {
    if (std::isnan(v)) v = 1.f;
  }
  const int n = static_cast<int>(x.size());
  Buffer<float> d_x(x);
  Buffer<uint16_t> bf(n), hf(n);
  Buffer<uint32_t> tf(n);
  CPG_LAUNCH(narrow_kernel, (n + 255) / 256, 256, 0, nullptr, d_x.ptr(), n,
             reinterpret_cast<cpgdev::bf16*>(bf.ptr()), reinterpret_cast<cpgdev::f16*>(hf.ptr()),
             tf.ptr());
  std::vector<uint16_t> want_bf(n), want_hf(n);
  std::vector<uint32_t> want_tf(n);
  for (int i = 0; i < n; ++i)
    want_bf[i] = ref_bf16(x[i]), want_hf[i] = ref_f16(x[i]), want_tf[i] = ref_tf32(x[i]);
  std::string m = mismatch(bf.get(), want_bf);
  check(m.empty(), "from_float<bf16> rounds to nearest even", m);
  m = mismatch(hf.get(), want_hf);
  check(m.empty(), "from_float<f16> rounds to nearest even (subnormals, overflow)", m);
  m = mismatch(tf.get(), want_tf);
  check(m.empty(), "to_tf32 rounds to nearest, ties away", m);

  const float nan = NAN;
  Buffer<float> d_nan(std::vector<float>{nan, -nan});
  Buffer<uint16_t> nbf(2), nhf(2);
  Buffer<uint32_t> ntf(2);
  CPG_LAUNCH(narrow_kernel, 1, 32, 0, nullptr, d_nan.ptr(), 2,
             reinterpret_cast<cpgdev::bf16*>(nbf.ptr()), reinterpret_cast<cpgdev::f16*>(nhf.ptr()),
             ntf.ptr());
  bool nan_ok = true;
  for (int i = 0; i < 2; ++i) {
    nan_ok &= std::isnan(ref_bf16_to_float(nbf.get()[i])) &&
              std::isnan(ref_f16_to_float(nhf.get()[i])) && std::isnan(float_of(ntf.get()[i]));
  }
  check(nan_ok, "NaN stays NaN in bf16, f16 and tf32");

  std::vector<uint16_t> all(65536);
  for (int i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
  Buffer<uint16_t> d_all(all), bf_back(65536), hf_back(65536);
  Buffer<float> bf_wide(65536), hf_wide(65536);
  Buffer<uint32_t> packed(3);
  const auto* as_bf = reinterpret_cast<const cpgdev::bf16*>(d_all.ptr());
  const auto* as_hf = reinterpret_cast<const cpgdev::f16*>(d_all.ptr());
  CPG_LAUNCH(widen_kernel, 256, 256, 0, nullptr, as_bf, as_hf, bf_wide.ptr(), hf_wide.ptr(),
             reinterpret_cast<cpgdev::bf16*>(bf_back.ptr()),
             reinterpret_cast<cpgdev::f16*>(hf_back.ptr()), packed.ptr());
  const std::vector<float> bw = bf_wide.get(), hw = hf_wide.get();
  const std::vector<uint16_t> bb = bf_back.get(), hb = hf_back.get();
  std::string widen_error, back_error;
  for (int i = 0; i < 65536 && widen_error.empty(); ++i) {
    const float wb = ref_bf16_to_float(all[i]), wh = ref_f16_to_float(all[i]);
    const bool ok_b = std::isnan(wb) ? std::isnan(bw[i]) : bits_of(bw[i]) == bits_of(wb);
    const bool ok_h = std::isnan(wh) ? std::isnan(hw[i]) : bits_of(hw[i]) == bits_of(wh);
    if (!ok_b || !ok_h) widen_error = "pattern " + str(i);
    if (back_error.empty() &&
        ((!std::isnan(wb) && bb[i] != i) || (!std::isnan(wh) && hb[i] != i))) {
      back_error = "pattern " + str(i);
    }
  }
  check(widen_error.empty(), "to_float of every bf16 and f16 pattern", widen_error);
  check(back_error.empty(), "from_float(to_float(x)) == x for every non-NaN bf16 and f16",
        back_error);
  const std::vector<uint32_t> p = packed.get();
  check(p[0] == 0x40003f80u && p[1] == 0xc0003c00u && p[2] == 2, "pack2 puts lo in the low half",
        str(p[0]) + " " + str(p[1]));
}

void test_cp_async() {
  std::vector<unsigned> src(256);
  for (int i = 0; i < 256; ++i) src[i] = 0x100u + i;
  Buffer<unsigned> d_src(src), obs(160);
  CPG_LAUNCH(cp_async_kernel, 1, 32, 0, nullptr, d_src.ptr(), obs.ptr());
  const std::vector<unsigned> got = obs.get();
  std::vector<unsigned> after_wait(got.begin() + 32, got.begin() + 64),
      zfill(got.begin() + 96, got.begin() + 128), neighbour(got.begin() + 128, got.end()),
      want_wait(32), want_zfill(32), want_neighbour(32);
  for (int t = 0; t < 32; ++t) {
    want_wait[t] = src[4 * t + 3];
    want_zfill[t] = t % 2 == 0 ? src[128 + 4 * t + 1] : 0u;
    want_neighbour[t] = src[4 * ((t + 1) % 32)];
  }
  check_equal_vectors("cp_async16 lands by cp_async_wait<1> (older group)", after_wait, want_wait);
  check_equal_vectors("cp_async16_zfill lands by cp_async_wait<0>, zeros where invalid", zfill,
                      want_zfill);
  check_equal_vectors("cp_async data seen by other threads after the barrier", neighbour,
                      want_neighbour);
#if defined(CPG_EMU)
  const std::vector<unsigned> stale(32, 0xffffffffu);
  check_equal_vectors("cp_async16 is deferred: stale before any wait",
                      std::vector<unsigned>(got.begin(), got.begin() + 32), stale);
  check_equal_vectors("cp_async_wait<1> leaves the newest group pending",
                      std::vector<unsigned>(got.begin() + 64, got.begin() + 96), stale);
#endif
}

void test_cp_async4_and_hint() {
  std::vector<unsigned> src(160);
  for (int i = 0; i < 160; ++i) src[i] = 0x500u + 3u * i;
  Buffer<unsigned> d_src(src), obs(64);
  CPG_LAUNCH(cp_async4_hint_kernel, 1, 32, 0, nullptr, d_src.ptr(), obs.ptr());
  const std::vector<unsigned> got = obs.get();
  std::vector<unsigned> want(64);
  for (int t = 0; t < 32; ++t) {
    const int u = (t + 1) % 32;
    want[t] = u % 2 == 0 ? src[u] : 0u;
    want[32 + t] = u != 5 ? src[32 + 4 * u + 2] : 0u;
  }
  check_equal_vectors("cp_async4_zfill and cp_async16_zfill_hint land by the wait", got, want);
}

void test_byte_perm() {
  // Bytes of {b, a}: 0:01 1:7f 2:ff 3:80 4:81 5:5a 6:c3 7:00.
  const std::vector<unsigned> sel = {0x3210u, 0x7654u, 0x0123u, 0x5410u, 0x9988u,
                                     0xbbaau, 0x8888u, 0xfedcu, 0x1111u};
  const std::vector<unsigned> want = {0x80ff7f01u, 0x00c35a81u, 0x017fff80u,
                                      0x5a817f01u, 0x00000000u, 0xffffffffu,
                                      0x00000000u, 0x00ff00ffu, 0x7f7f7f7fu};
  Buffer<unsigned> d_sel(sel), out(sel.size());
  CPG_LAUNCH(byte_perm_kernel, 1, static_cast<unsigned>(sel.size()), 0, nullptr, d_sel.ptr(),
             out.ptr());
  check_equal_vectors("byte_perm picks bytes of {b, a} and replicates sign bits", out.get(), want);
}

void test_vector_copy() {
  std::vector<unsigned> src(128), want(128);
  for (int i = 0; i < 128; ++i) src[i] = 3u * i + 1u;
  for (int t = 0; t < 32; ++t) {
    for (int k = 0; k < 4; ++k) want[4 * t + k] = src[4 * (31 - t) + k];
  }
  Buffer<unsigned> d_src(src), dst(128);
  CPG_LAUNCH(vector_copy_kernel, 1, 32, 0, nullptr, d_src.ptr(), dst.ptr());
  check_equal_vectors("load16/store16 through shared memory", dst.get(), want);
}

std::vector<int> block_sums(const std::vector<int>& x) {
  const int blocks = static_cast<int>(x.size()) / 256;
  Buffer<int> d_x(x), out(blocks);
  CPG_LAUNCH(block_sum_kernel, blocks, 256, 0, nullptr, d_x.ptr(), out.ptr());
  return out.get();
}

void test_block_sum() {
  std::vector<int> x(3 * 256), want(3, 0);
  for (int i = 0; i < 3 * 256; ++i) x[i] = rand_int(-1000, 1000), want[i / 256] += x[i];
  const std::string m = mismatch(block_sums(x), want);
  check(m.empty(), "block reduction (barriers, shfl_down)", m);
#if defined(CPG_EMU)
  bool same = true;
  for (uint64_t seed = 1; seed <= 4; ++seed) {
    cpg::emu::set_seed(seed);
    same &= block_sums(x) == want;
  }
  cpg::emu::set_seed(0);
  check(same, "block reduction is identical under seeds 1-4");

  std::vector<std::thread> threads;
  std::vector<int> ok(4, 0);
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      ok[i] = 1;
      for (int k = 0; k < 3; ++k) ok[i] &= block_sums(x) == want;
    });
  }
  for (std::thread& t : threads) t.join();
  check(std::count(ok.begin(), ok.end(), 1) == 4, "launches from 4 OS threads at once");
#endif
}

void test_early_exit() {
  Buffer<int> out(64, -7);
  CPG_LAUNCH(early_exit_kernel, 1, 64, 0, nullptr, 40, out.ptr());
  std::vector<int> want(64, -7);
  for (int t = 0; t < 40; ++t) want[t] = 10 * (39 - t);
  const std::string m = mismatch(out.get(), want);
  check(m.empty(), "exited threads count as arrived at syncthreads", m);
}

void test_views() {
  Buffer<int> out(5);
  CPG_LAUNCH(views_kernel, 1, 1, 0, nullptr, out.ptr());
  const std::string m = mismatch(out.get(), std::vector<int>{30, 20, 40, 70, 65});
  check(m.empty(), "shared array pointer arithmetic", m);
}

void test_atomics() {
  Buffer<int> count(1), block_counts(6), dims_ok(384);
  Buffer<float> sum(1);
  Buffer<unsigned long long> big(1);
  Buffer<unsigned> u(1), bits(6), coords(768), ballots(384);
  CPG_LAUNCH(atomics_kernel, dim3(3, 2), dim3(8, 4, 2), 0, nullptr, count.ptr(), sum.ptr(),
             big.ptr(), u.ptr(), bits.ptr(), block_counts.ptr(), coords.ptr(), ballots.ptr(),
             dims_ok.ptr());
  check(count.get()[0] == 384 && sum.get()[0] == 96.0f && big.get()[0] == 384ull << 40 &&
            u.get()[0] == 1152u,
        "atomic_add of int, float, unsigned long long, unsigned over a 3x2 grid",
        str(count.get()[0]) + " " + str(sum.get()[0]) + " " + str(big.get()[0]) + " " +
            str(u.get()[0]));
  check(bits.get() == std::vector<unsigned>(6, 0xffffffffu), "atomic_or");
  check(block_counts.get() == std::vector<int>(6, 64), "atomic_add on shared memory");
  std::vector<unsigned> want_coords(768);
  for (unsigned b = 0; b < 6; ++b) {
    for (unsigned t = 0; t < 64; ++t) {
      want_coords[2 * (64 * b + t)] = t % 8 | (t / 8 % 4) << 8 | (t / 32) << 16;
      want_coords[2 * (64 * b + t) + 1] = b % 3 | (b / 3) << 8;
    }
  }
  check_equal_vectors("threadIdx/blockIdx in 3-D blocks of a 2-D grid", coords.get(), want_coords);
  check(dims_ok.get() == std::vector<int>(384, 1), "blockDim/gridDim");
  check_equal_vectors("warps are 32 consecutive linear thread ids (x fastest)", ballots.get(),
                      std::vector<unsigned>(384, 0x01010101u));
}

#if defined(CPG_EMU)

std::vector<int> racy(uint64_t seed) {
  cpg::emu::set_seed(seed);
  Buffer<int> out(64);
  CPG_LAUNCH(racy_kernel, 1, 64, 0, nullptr, out.ptr());
  cpg::emu::set_seed(0);
  return out.get();
}

void test_emulator_only() {
  check(racy(1) != racy(2), "a race gives different results under seeds 1 and 2");
  check(racy(1) == racy(1), "the same seed gives the same order");

  Buffer<unsigned> u(32);
  CPG_LAUNCH(uninitialised_kernel, 1, 32, 0, nullptr, u.ptr());
  check(u.get() == std::vector<unsigned>(32, 0xffffffffu),
        "uninitialised shared memory reads 0xff bytes");

  Buffer<float> f(64);
  Buffer<int> i(64);
  Buffer<unsigned> out(64);
  check_error("out-of-bounds shared index is reported",
              error_of([&] { CPG_LAUNCH(oob_kernel, 2, 32, 0, nullptr, f.ptr()); }),
              {"oob_kernel", "block (0,0,0)", "thread (31,0,0)", "'buf'", "index 32", "[0, 32)"});
  check_error("out-of-bounds index through a view (s + 4)[4] is reported",
              error_of([&] { CPG_LAUNCH(view_oob_kernel, 1, 1, 0, nullptr, i.ptr()); }),
              {"view_oob_kernel", "'s'", "index 8", "[0, 8)"});
  check_error("out-of-bounds dynamic shared index is reported", error_of([&] {
                CPG_LAUNCH(dynamic_oob_kernel, 1, 32, 32 * sizeof(float), nullptr, f.ptr());
              }),
              {"dynamic_oob_kernel", "thread (5,0,0)", "'dyn'", "index 105", "[0, 32)"});
  CPG_LAUNCH(dynamic_smem_kernel, 1, 32, 32 * sizeof(int), nullptr, i.ptr());
  std::vector<int> want(64, 0);
  for (int t = 0; t < 32; ++t) want[t] = 31 - t;
  check(i.get() == want, "dynamic shared memory");

  check_error("divergent barriers are reported as a deadlock",
              error_of([&] { CPG_LAUNCH(divergent_barrier_kernel, 1, 32, 0, nullptr, i.ptr()); }),
              {"divergent_barrier_kernel", "deadlock", "threads 0-15 wait at syncthreads (",
               "threads 16-31 wait at syncthreads ("});
  check_error(
      "a barrier against a shuffle is reported as a deadlock",
      error_of([&] { CPG_LAUNCH(barrier_shuffle_deadlock_kernel, 1, 32, 0, nullptr, i.ptr()); }),
      {"deadlock", "threads 0-15 wait at syncthreads", "threads 16-31 wait at shfl.sync.bfly"});
  check_error("a shuffle reading an exited lane is reported",
              error_of([&] { CPG_LAUNCH(shfl_exited_kernel, 1, 32, 0, nullptr, out.ptr()); }),
              {"shfl_exited_kernel", "thread (8,0,0)", "reads lane 16"});
  check_error("mma with an exited lane is reported",
              error_of([&] { CPG_LAUNCH(mma_exited_kernel, 1, 32, 0, nullptr, f.ptr()); }),
              {"mma.m16n8k16.bf16 needs all 32 lanes", "lane 5"});
  Buffer<uint16_t> global(64);
  check_error("ldmatrix from global memory is reported", error_of([&] {
                CPG_LAUNCH(ldmatrix_global_kernel, 1, 32, 0, nullptr, global.ptr(), out.ptr());
              }),
              {"ldmatrix.x1", "thread (0,0,0)", "not in the block's shared memory"});
  check_error("misaligned cp.async is reported", error_of([&] {
                CPG_LAUNCH(cp_async_misaligned_kernel, 1, 16, 0, nullptr, out.ptr());
              }),
              {"cp_async_misaligned_kernel", "cp.async destination", "not 16-byte aligned"});
  check_error("misaligned load16 is reported", error_of([&] {
                CPG_LAUNCH(load16_misaligned_kernel, 1, 1, 0, nullptr, out.ptr(), out.ptr());
              }),
              {"load16_misaligned_kernel", "not 16-byte aligned"});

  std::vector<unsigned> src(64);
  for (int k = 0; k < 64; ++k) src[k] = 0x500u + k;
  Buffer<unsigned> d_src(src), exit_out(16);
  CPG_LAUNCH(cp_async_exit_kernel, 1, 32, 0, nullptr, d_src.ptr(), exit_out.ptr());
  std::vector<unsigned> want_exit(16);
  for (int t = 0; t < 16; ++t) want_exit[t] = src[4 * t + 2];
  check_equal_vectors("cp.async copies pending at thread exit land then", exit_out.get(),
                      want_exit);

  run_votes("votes over the lanes that have not exited", std::vector<int>(64, 1), 40);

  check_error("a block of 2048 threads is an invalid configuration",
              error_of([&] { CPG_LAUNCH(early_exit_kernel, 1, 2048, 0, nullptr, 0, i.ptr()); }),
              {"early_exit_kernel", "invalid configuration"});
  check_error("an empty grid is an invalid configuration",
              error_of([&] { CPG_LAUNCH(early_exit_kernel, 0, 32, 0, nullptr, 0, i.ptr()); }),
              {"invalid configuration"});
  check_error("more than 48 KiB of dynamic shared memory needs set_max_dynamic_smem", error_of([&] {
                CPG_LAUNCH(dynamic_smem_kernel, 1, 32, 64 * 1024, nullptr, i.ptr());
              }),
              {"dynamic_smem_kernel", "65536 bytes", "set_max_dynamic_smem"});
  cpgdev::set_max_dynamic_smem(dynamic_smem_kernel, 64 * 1024);
  check(error_of([&] {
          CPG_LAUNCH(dynamic_smem_kernel, 1, 32, 64 * 1024, nullptr, i.ptr());
        }).empty(),
        "set_max_dynamic_smem allows more");
  check_error("set_max_dynamic_smem beyond 227 KiB is refused",
              error_of([&] { cpgdev::set_max_dynamic_smem(dynamic_smem_kernel, 228 * 1024); }),
              {"227 KiB"});
  check(cpgdev::sm_count() == 4, "sm_count");
}

// A deliberately wrong launch: 64 elements copied from a view that starts 8 elements into a
// 64-element buffer, so threads 56-63 read past its end. Run with --out-of-bounds-global-read
// in a build with -fsanitize=address, where AddressSanitizer must stop it
// (tests/test_emulator.py); without a sanitizer nothing in the emulator checks global memory.
int out_of_bounds_global_read() {
  Buffer<float> in(64, 1.0f), out(64);
  CPG_LAUNCH(global_copy_kernel, 2, 32, 0, nullptr, in.ptr() + 8, out.ptr(), 64);
  std::printf("NOT CAUGHT: the out-of-bounds global read went unreported\n");
  return 3;
}

#endif  // CPG_EMU

int main(int argc, char** argv) {
#if defined(CPG_EMU)
  if (argc > 1 && std::string(argv[1]) == "--out-of-bounds-global-read") {
    return out_of_bounds_global_read();
  }
#endif
  (void)argc, (void)argv;
  test_shuffles();
  test_votes();
  test_ldmatrix();
  test_mma();
  run_ldmatrix_mma(0, "ldmatrix x4/x2/x2.trans fragments feed mma bf16 (GEMM tile)");
  run_ldmatrix_mma(1, "ldmatrix x4/x2/x2.trans fragments feed mma f16 (GEMM tile)");
  test_conversions();
  test_cp_async();
  test_cp_async4_and_hint();
  test_byte_perm();
  test_vector_copy();
  test_block_sum();
  test_early_exit();
  test_views();
  test_atomics();
#if defined(CPG_EMU)
  test_emulator_only();
#endif
  std::printf("%s: %d check(s) failed\n", g_failures ? "FAILED" : "PASSED", g_failures);
  return g_failures ? 1 : 0;
}
