#include "ops/backend.h"

#include <atomic>

#include "emu/runtime.h"

namespace cpg::ops {

namespace {
std::atomic<bool> g_emulation{false};
std::atomic<uint64_t> g_seed{0};
}  // namespace

std::pair<bool, uint64_t> set_emulation(bool enabled, uint64_t seed) {
  const uint64_t previous_seed = g_seed.exchange(seed);
  return {g_emulation.exchange(enabled), previous_seed};
}

bool emulation_enabled() { return g_emulation; }

Backend backend_for(const at::Tensor& t) {
  if (t.is_cuda()) return Backend::CUDA;
  return g_emulation ? Backend::EMU : Backend::CPU;
}

std::optional<cpg::DType> kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cpg::DType::F32;
    case at::kHalf: return cpg::DType::F16;
    case at::kBFloat16: return cpg::DType::BF16;
    default: return std::nullopt;
  }
}

bool use_fused_kernels(const at::Tensor& t) {
  return backend_for(t) != Backend::CPU && kernel_dtype(t.scalar_type()).has_value();
}

EmulatorLaunch::EmulatorLaunch() { cpg::emu::set_seed(g_seed); }

#if !defined(CPG_WITH_CUDA)
void* cuda_stream(const at::Tensor&) {
  TORCH_CHECK(false, "cpg_kernels was built without CUDA support");
}
bool cuda_built() { return false; }
#endif

}  // namespace cpg::ops
