// Which implementation runs an op: the CPU path, the CUDA kernels on the GPU,
// or the same CUDA kernels under the CPU emulator (for CPU tensors while
// emulation is switched on; this is how CI tests kernels without a GPU).
#pragma once

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>

#include <cstdint>
#include <optional>
#include <utility>

#include "core/dtype.h"
#include "cuda/launchers.h"

namespace cpg::ops {

enum class Backend { CPU, EMU, CUDA };

// Returns the previous (enabled, seed), for a caller to restore.
std::pair<bool, uint64_t> set_emulation(bool enabled, uint64_t seed);
bool emulation_enabled();
Backend backend_for(const at::Tensor& t);

// The kernels' element type for a torch dtype; nullopt where only the ATen
// path handles it (float64).
std::optional<cpg::DType> kernel_dtype(at::ScalarType t);

// Whether an op on `t` runs the fused kernels of csrc/cuda (on the GPU or
// under the emulator): everywhere but the CPU backend, for the kernels' dtypes.
bool use_fused_kernels(const at::Tensor& t);

// The current CUDA stream of t's device (defined only in CUDA builds).
void* cuda_stream(const at::Tensor& t);
bool cuda_built();

// Serialises emulated launches and applies the configured seed.
struct EmulatorLaunch {
  EmulatorLaunch();
};

}  // namespace cpg::ops

#if defined(CPG_WITH_CUDA)
#define CPG_CUDA_LAUNCHER(fn, ...) ::cpg::cuda::fn(__VA_ARGS__)
#else
#define CPG_CUDA_LAUNCHER(fn, ...) TORCH_CHECK(false, "cpg_kernels was built without CUDA support")
#endif

// The answer of query `fn` (a *_supported function of csrc/cuda/launchers.h)
// for the backend that runs ref: on the GPU by its device's limits (false in
// a build without CUDA), under the emulator by sm_90's.
#if defined(CPG_WITH_CUDA)
#define CPG_CUDA_QUERY(fn, ...) ::cpg::cuda::fn(__VA_ARGS__)
#else
#define CPG_CUDA_QUERY(fn, ...) false
#endif
#define CPG_QUERY_LAUNCHER(backend, ref, fn, ...)  \
  ([&]() -> bool {                                 \
    if ((backend) == ::cpg::ops::Backend::CUDA) {  \
      c10::DeviceGuard cpg_guard_((ref).device()); \
      return CPG_CUDA_QUERY(fn, __VA_ARGS__);      \
    }                                              \
    return ::cpg::emu_kernels::fn(__VA_ARGS__);    \
  }())

// Runs launcher `fn` of csrc/cuda/launchers.h on the GPU or under the emulator.
#define CPG_RUN_LAUNCHER(backend, ref, fn, ...)                         \
  do {                                                                  \
    if ((backend) == ::cpg::ops::Backend::CUDA) {                       \
      c10::DeviceGuard cpg_guard_((ref).device());                      \
      CPG_CUDA_LAUNCHER(fn, __VA_ARGS__, ::cpg::ops::cuda_stream(ref)); \
    } else {                                                            \
      ::cpg::ops::EmulatorLaunch cpg_emu_;                              \
      ::cpg::emu_kernels::fn(__VA_ARGS__, nullptr);                     \
    }                                                                   \
  } while (0)
