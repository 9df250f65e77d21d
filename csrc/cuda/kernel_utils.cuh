// Small helpers shared by the kernels in csrc/cuda/: dtype dispatch, 16-byte
// vector access, warp reductions and launch geometry. Plain C++17 plus the
// names of portability.h, so it builds for the GPU and for the emulator alike.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "core/dtype.h"
#include "cuda/launch_plan.h"
#include "cuda/launchers.h"
#include "cuda/portability.h"

namespace cpg {
namespace CPG_KERNEL_NS {

constexpr int kWarpSize = 32;
constexpr int kVecBytes = 16;  // one load16 / store16 / cp.async

// ------------------------------------------------------- host and device side

CPG_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

CPG_HD bool is_aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) % kVecBytes) == 0;
}

template <typename E>
CPG_HD constexpr int vec_elems() {
  return kVecBytes / static_cast<int>(sizeof(E));
}

// ---------------------------------------------------------------- host side

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<E>{}) with the element type E of `dtype`.
template <typename Fn>
void dispatch_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::F32: fn(TypeTag<float>{}); return;
    case DType::F16: fn(TypeTag<cpgdev::f16>{}); return;
    case DType::BF16: fn(TypeTag<cpgdev::bf16>{}); return;
  }
  throw std::invalid_argument(std::string("cpg_kernels: unsupported dtype ") + dtype_name(dtype));
}

inline cpgdev::stream_t as_stream(void* stream) { return static_cast<cpgdev::stream_t>(stream); }

// Blocks for a grid-stride loop over `work` items: never more than the work
// needs, and at most 8 per multiprocessor (one wave of 256-thread blocks at
// full occupancy), so threads loop rather than blocks queue.
inline unsigned grid_stride_blocks(int64_t work, int threads, int sm_count) {
  constexpr int64_t kBlocksPerSm = 8;
  const int64_t cap = kBlocksPerSm * sm_count;
  const int64_t needed = ceil_div(work, threads);
  return static_cast<unsigned>(needed < cap ? (needed > 0 ? needed : 1) : cap);
}

inline unsigned grid_stride_blocks(int64_t work, int threads) {
  return grid_stride_blocks(work, threads, cpgdev::sm_count());
}

// A launch as the plan query reports it (launch_plan.h).
inline PlannedLaunch planned_launch(std::string kernel, dim3 grid, int threads,
                                    int64_t dynamic_smem,
                                    std::vector<std::pair<std::string, int64_t>> params,
                                    int64_t workspace_bytes = 0) {
  return PlannedLaunch{std::move(kernel), {int64_t{grid.x}, int64_t{grid.y}, int64_t{grid.z}},
                       threads,           dynamic_smem,
                       workspace_bytes,   std::move(params)};
}

// Device memory for the launches a launcher queues on `stream`: release()
// frees it (stream-ordered) once they are queued. If a launch throws first,
// the destructor frees it and keeps quiet, since the launch's error is the
// one to report.
class DeviceWorkspace {
 public:
  DeviceWorkspace(size_t bytes, cpgdev::stream_t stream)
      : p_(cpgdev::device_alloc(bytes, stream)), stream_(stream) {}
  ~DeviceWorkspace() {
    if (p_ == nullptr) return;
    try {
      cpgdev::device_free(p_, stream_);
    } catch (...) {
    }
  }
  DeviceWorkspace(const DeviceWorkspace&) = delete;
  DeviceWorkspace& operator=(const DeviceWorkspace&) = delete;

  template <typename E>
  E* as() const {
    return static_cast<E*>(p_);
  }
  void release() {
    void* p = p_;
    p_ = nullptr;
    cpgdev::device_free(p, stream_);
  }

 private:
  void* p_;
  cpgdev::stream_t stream_;
};

// -------------------------------------------------------------- device side

CPG_DEVICE int64_t global_thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

CPG_DEVICE int64_t global_thread_count() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// Shared-memory pointers are passed as a template type `Smem`: E* on the GPU,
// and under the emulator its bounds-checked view of the shared array, which
// the helpers below keep (indexing and `+` are checked there).

// v[0..N) = p[0..N): N * sizeof(E) a multiple of 16, p 16-byte aligned. `Ptr`
// is const E* (global memory) or a Smem.
template <typename E, int N, typename Ptr>
CPG_DEVICE void load_vec(Ptr p, E (&v)[N]) {
  constexpr int kPer = vec_elems<E>();
  static_assert(N % kPer == 0, "load_vec: whole 16-byte vectors only");
#pragma unroll
  for (int c = 0; c < N / kPer; ++c) {
    const uint4 u = cpgdev::load16(p + c * kPer);
    memcpy(&v[c * kPer], &u, kVecBytes);
  }
}

template <typename E, int N, typename Ptr>
CPG_DEVICE void store_vec(Ptr p, const E (&v)[N]) {
  constexpr int kPer = vec_elems<E>();
  static_assert(N % kPer == 0, "store_vec: whole 16-byte vectors only");
#pragma unroll
  for (int c = 0; c < N / kPer; ++c) {
    uint4 u;
    memcpy(&u, &v[c * kPer], kVecBytes);
    cpgdev::store16(p + c * kPer, u);
  }
}

// The first `count` (<= N) elements: whole 16-byte vectors when all N are
// wanted and p is aligned, else element by element. v[count..N) untouched.
template <typename E, int N>
CPG_DEVICE void load_prefix(const E* p, int count, E (&v)[N]) {
  if (count == N && is_aligned16(p)) {
    load_vec(p, v);
    return;
  }
#pragma unroll
  for (int j = 0; j < N; ++j) {
    if (j < count) v[j] = p[j];
  }
}

template <typename E, int N>
CPG_DEVICE void store_prefix(E* p, int count, const E (&v)[N]) {
  if (count == N && is_aligned16(p)) {
    store_vec(p, v);
    return;
  }
#pragma unroll
  for (int j = 0; j < N; ++j) {
    if (j < count) p[j] = v[j];
  }
}

// Sum over the 32 lanes of a warp; every lane gets the total. The butterfly's
// order is fixed, so the result is bit-reproducible.
template <typename V>
CPG_DEVICE V warp_sum(V v) {
#pragma unroll
  for (int m = kWarpSize / 2; m > 0; m /= 2) v += cpgdev::shfl_xor(v, m);
  return v;
}

CPG_DEVICE int popcount32(uint32_t v) {
#if defined(__CUDA_ARCH__)
  return __popc(v);
#else
  int n = 0;
  for (; v != 0u; v &= v - 1u) ++n;  // clears the lowest set bit each step
  return n;
#endif
}

}  // namespace CPG_KERNEL_NS
}  // namespace cpg
