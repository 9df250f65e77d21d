// The portability layer: everything a kernel needs that is not plain C++.
//
// Kernel sources in csrc/cuda/ use only what this header provides, so the same
// file builds (a) with nvcc for the GPU and (b) as host C++ with CPG_EMU defined,
// where every name below is implemented by the CPU emulator (csrc/emu/runtime.h)
// with the PTX ISA's exact semantics and fragment layouts.
//
// The contract, identical in both builds:
//   CPG_GLOBAL                      kernel qualifier
//   CPG_DEVICE                      device-function qualifier (inlined)
//   CPG_LAUNCH_BOUNDS(n[, blocks])  __launch_bounds__(n[, blocks]) or nothing
//   threadIdx blockIdx blockDim gridDim, dim3, uint4
//   CPG_SHARED_ARRAY(T, name, N)    block-shared array T name[N] (N a constant)
//   CPG_DYNAMIC_SHARED(T, name)     the launch's dynamic shared memory as T*
//   cpgdev::syncthreads()           block barrier
//   cpgdev::syncwarp()              warp barrier (full mask)
//   cpgdev::lane_id()               threadIdx.x % 32 for 1-D blocks
//   cpgdev::shfl(v, src) shfl_xor(v, m) shfl_down(v, d) shfl_up(v, d)
//                                   full-warp shuffles of 32-bit values
//   cpgdev::ballot(p) any(p) all(p) full-warp votes
//   cpgdev::atomic_add(p, v)        float, int32, uint32, unsigned long long
//   cpgdev::atomic_or(p, v)         uint32
//   cpgdev::load16(p) store16(p,v)  16-byte vector global/shared access (uint4)
//   cpgdev::store4(p, v)            4-byte global/shared store (uint32_t), aligned
//   cpgdev::cp_async16(dst_smem, src_gmem)         cp.async.cg 16 bytes
//   cpgdev::cp_async16_zfill(dst, src, bool valid) same; writes zeros if !valid
//   cpgdev::l2_evict_first()        an L2 cache policy: evict these lines first
//   cpgdev::cp_async16_zfill_hint(dst, src, valid, policy)
//                                   cp_async16_zfill with that L2 policy (for a
//                                   stream read once; a hint, no semantics)
//   cpgdev::cp_async4_zfill(dst, src, bool valid)  cp.async.ca of 4 bytes
//   cpgdev::cp_async_commit()  cpgdev::cp_async_wait<N>()
//   cpgdev::ldmatrix_x1/x2/x4(regs, row_ptr) and *_trans
//                                   ldmatrix.sync.aligned.m8n8.b16
//   cpgdev::mma_bf16_16816(d, a, b, c)  mma.sync m16n8k16 bf16, f32 accumulate
//   cpgdev::mma_f16_16816(d, a, b, c)   mma.sync m16n8k16 f16, f32 accumulate
//   cpgdev::mma_tf32_1688(d, a, b, c)   mma.sync m16n8k8 tf32, f32 accumulate
//   cpgdev::to_tf32(float) -> uint32    cvt.rna.tf32.f32
//   cpgdev::byte_perm(a, b, sel)        prmt.b32 (default mode: bytes 0-3 of a,
//                                   4-7 of b; a selector nibble's bit 3
//                                   replicates the chosen byte's sign bit)
//   cpgdev::bf16, cpgdev::f16           16-bit storage types
//   cpgdev::to_float(x), cpgdev::from_float<T>(f), cpgdev::pack2(lo, hi)
//   cpgdev::pack2_rn<T>(lo, hi)        two floats rounded (to nearest even) to a
//                                   16-bit T and packed, lo in the low half:
//                                   cvt.rn.{bf16x2,f16x2}.f32
//   cpgdev::stream_t
//   CPG_LAUNCH(kernel, grid, block, smem_bytes, stream, args...)
//                                   launch and check; throws std::runtime_error
//   cpgdev::set_max_dynamic_smem(kernel, bytes)   set once per kernel and device
//   cpgdev::sm_count()              multiprocessors of the current device (cached)
//   cpgdev::smem_limits()           its shared memory per SM, per block (opt-in)
//                                   and reserved per block, in bytes (cached)
//   cpgdev::device_alloc(bytes, stream) device_free(p, stream)
//                                   stream-ordered global scratch (a launcher's
//                                   workspace); throws std::runtime_error
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "core/hd.h"
#include "core/smem_limits.h"

#if defined(CPG_EMU)

#include "emu/runtime.h"

#else  // ---------------------------------------------------------------- CUDA

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <mutex>
#include <set>
#include <tuple>

#define CPG_GLOBAL __global__
#define CPG_DEVICE __device__ __forceinline__
#define CPG_LAUNCH_BOUNDS(...) __launch_bounds__(__VA_ARGS__)
#define CPG_SHARED_ARRAY(T, name, N) __shared__ T name[N]
#define CPG_DYNAMIC_SHARED(T, name)                                  \
  extern __shared__ __align__(16) unsigned char cpg_dynamic_smem_[]; \
  T* name = reinterpret_cast<T*>(cpg_dynamic_smem_)

// The inline namespaces keep this branch's host functions (sm_count(), ...)
// apart from the emulator's (cpgdev::emulated) at link time: both builds live
// in one library, and an out-of-line copy of one must never stand in for the
// other's.
namespace cpgdev {
inline namespace gpu {

using stream_t = cudaStream_t;
using bf16 = __nv_bfloat16;
using f16 = __half;
constexpr unsigned kFullMask = 0xffffffffu;

CPG_DEVICE void syncthreads() { __syncthreads(); }
CPG_DEVICE void syncwarp() { __syncwarp(kFullMask); }
CPG_DEVICE int lane_id() { return static_cast<int>(threadIdx.x & 31u); }

template <typename T>
CPG_DEVICE T shfl(T v, int src) {
  return __shfl_sync(kFullMask, v, src);
}
template <typename T>
CPG_DEVICE T shfl_xor(T v, int m) {
  return __shfl_xor_sync(kFullMask, v, m);
}
template <typename T>
CPG_DEVICE T shfl_down(T v, unsigned d) {
  return __shfl_down_sync(kFullMask, v, d);
}
template <typename T>
CPG_DEVICE T shfl_up(T v, unsigned d) {
  return __shfl_up_sync(kFullMask, v, d);
}
CPG_DEVICE unsigned ballot(bool p) { return __ballot_sync(kFullMask, p); }
CPG_DEVICE bool any(bool p) { return __any_sync(kFullMask, p) != 0; }
CPG_DEVICE bool all(bool p) { return __all_sync(kFullMask, p) != 0; }

template <typename T>
CPG_DEVICE T atomic_add(T* p, T v) {
  return atomicAdd(p, v);
}
CPG_DEVICE unsigned atomic_or(unsigned* p, unsigned v) { return atomicOr(p, v); }

CPG_DEVICE uint4 load16(const void* p) { return *reinterpret_cast<const uint4*>(p); }
CPG_DEVICE void store16(void* p, uint4 v) { *reinterpret_cast<uint4*>(p) = v; }
CPG_DEVICE void store4(void* p, uint32_t v) { *reinterpret_cast<uint32_t*>(p) = v; }

CPG_DEVICE unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

CPG_DEVICE void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst)), "l"(src));
}
CPG_DEVICE void cp_async16_zfill(void* dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;  // src-size 0 fills the 16 bytes with zeros
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(n));
}
CPG_DEVICE uint64_t l2_evict_first() {
  uint64_t policy;
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}
CPG_DEVICE void cp_async16_zfill_hint(void* dst, const void* src, bool valid, uint64_t policy) {
  const int n = valid ? 16 : 0;
  asm volatile(
      "cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\n" ::"r"(smem_addr(dst)),
      "l"(src), "r"(n), "l"(policy));
}
CPG_DEVICE void cp_async4_zfill(void* dst, const void* src, bool valid) {
  const int n = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(n));
}
CPG_DEVICE void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
CPG_DEVICE void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

CPG_DEVICE void ldmatrix_x1(uint32_t (&r)[1], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
               : "=r"(r[0])
               : "r"(smem_addr(p)));
}
CPG_DEVICE void ldmatrix_x2(uint32_t (&r)[2], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(p)));
}
CPG_DEVICE void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
CPG_DEVICE void ldmatrix_x1_trans(uint32_t (&r)[1], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
               : "=r"(r[0])
               : "r"(smem_addr(p)));
}
CPG_DEVICE void ldmatrix_x2_trans(uint32_t (&r)[2], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(p)));
}
CPG_DEVICE void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

CPG_DEVICE void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                               const float (&c)[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
}
CPG_DEVICE void mma_f16_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                              const float (&c)[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
}
CPG_DEVICE void mma_tf32_1688(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                              const float (&c)[4]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
}
CPG_DEVICE uint32_t to_tf32(float f) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(f));
  return r;
}

CPG_DEVICE uint32_t byte_perm(uint32_t a, uint32_t b, uint32_t selector) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(selector));
  return r;
}

CPG_DEVICE float to_float(float x) { return x; }
CPG_DEVICE float to_float(bf16 x) { return __bfloat162float(x); }
CPG_DEVICE float to_float(f16 x) { return __half2float(x); }
template <typename T>
CPG_DEVICE T from_float(float f);
template <>
CPG_DEVICE float from_float<float>(float f) {
  return f;
}
template <>
CPG_DEVICE bf16 from_float<bf16>(float f) {
  return __float2bfloat16_rn(f);
}
template <>
CPG_DEVICE f16 from_float<f16>(float f) {
  return __float2half_rn(f);
}
template <typename T>
CPG_DEVICE uint32_t pack2(T lo, T hi) {
  uint16_t l, h;
  memcpy(&l, &lo, 2);
  memcpy(&h, &hi, 2);
  return static_cast<uint32_t>(l) | (static_cast<uint32_t>(h) << 16);
}

template <typename T>
CPG_DEVICE uint32_t pack2_rn(float lo, float hi);
template <>
CPG_DEVICE uint32_t pack2_rn<bf16>(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (lo) in the low half
  uint32_t r;
  memcpy(&r, &v, 4);
  return r;
}
template <>
CPG_DEVICE uint32_t pack2_rn<f16>(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  uint32_t r;
  memcpy(&r, &v, 4);
  return r;
}

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("cpg_kernels: CUDA error in ") + what + ": " +
                             cudaGetErrorString(err));
  }
}

// Launchers call these on every launch; each driver query runs once per
// device (and kernel), then the answer is cached: nothing is queried per launch.
constexpr int kMaxCachedDevices = 64;

inline int current_device() {
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  return dev;
}

template <typename Kernel>
inline void set_max_dynamic_smem(Kernel kernel, int bytes) {
  // The attribute stays set on the function: set it once per (kernel, device, size).
  static std::mutex mutex;
  static std::set<std::tuple<const void*, int, int>> done;
  const auto key = std::make_tuple(reinterpret_cast<const void*>(kernel), current_device(), bytes);
  std::lock_guard<std::mutex> lock(mutex);
  if (done.count(key)) return;
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
        "cudaFuncSetAttribute");
  done.insert(key);
}

inline int sm_count() {
  static std::atomic<int> cached[kMaxCachedDevices];  // 0: not queried yet
  const int dev = current_device();
  int n = dev < kMaxCachedDevices ? cached[dev].load(std::memory_order_relaxed) : 0;
  if (n == 0) {
    check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev),
          "cudaDeviceGetAttribute");
    if (dev < kMaxCachedDevices) cached[dev].store(n, std::memory_order_relaxed);
  }
  return n;
}

// Usable by work queued on `stream` after the call; device_free releases it
// once the work queued before it is done. Defined in workspace.cu: torch's
// caching allocator when the ops layer installed it (launchers.h,
// set_workspace_allocator), else the device's stream-ordered pool.
void* device_alloc(size_t bytes, stream_t stream);
void device_free(void* p, stream_t stream);

inline SmemLimits smem_limits() {
  static std::mutex mutex;
  static SmemLimits cached[kMaxCachedDevices];  // per_sm 0: not queried yet
  const int dev = current_device();
  std::lock_guard<std::mutex> lock(mutex);
  if (dev < kMaxCachedDevices && cached[dev].per_sm > 0) return cached[dev];
  SmemLimits l;
  check(cudaDeviceGetAttribute(&l.per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev),
        "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&l.per_block, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
        "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&l.reserved_per_block, cudaDevAttrReservedSharedMemoryPerBlock, dev),
        "cudaDeviceGetAttribute");
  if (dev < kMaxCachedDevices) cached[dev] = l;
  return l;
}

}  // namespace gpu
}  // namespace cpgdev

// Every launch goes through here: one place to check the launch error.
#define CPG_LAUNCH(kernel, grid, block, smem, stream, ...)      \
  do {                                                          \
    kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__); \
    ::cpgdev::check(cudaGetLastError(), "launch of " #kernel);  \
  } while (0)

#endif  // CPG_EMU
