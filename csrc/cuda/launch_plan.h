// What a launcher launches, as data: the plan query of launchers.h
// (plan_masked_linear, plan_masked_conv2d) that the performance model
// (benchmarks/model) reads instead of re-implementing the dispatchers.
//
// Each kernel family computes its launch shape in a plan function that its
// launcher uses too; the dispatchers walk their rules once, generic over an
// executor that either launches or records (masked_gemm.cu, masked_conv.cu).
// So a planned launch is the launch, down to the grid, given the same
// multiprocessor count. Host code only: no CUDA, no torch; no pointer is read.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <typeinfo>
#include <utility>
#include <vector>

#if defined(__GNUC__) || defined(__clang__)
#include <cxxabi.h>
#endif

namespace cpg {

struct PlannedLaunch {
  // The kernel with its template arguments, demangled (e.g.
  // "mma::masked_gemm_mma_kernel<mma::LinearView<bf16, false>>" up to the
  // spelling of namespaces and element types, which the model normalizes).
  std::string kernel;
  int64_t grid[3];
  int threads;
  int64_t dynamic_smem;     // bytes of dynamic shared memory per block
  int64_t workspace_bytes;  // scratch the launcher allocates for this launch's output
  // The family's launch shape: tiles, stages per block, splits, slices, ...
  std::vector<std::pair<std::string, int64_t>> params;
};
using LaunchPlan = std::vector<PlannedLaunch>;

// The demangled name of T (its mangled name where the ABI has no demangler).
template <typename T>
std::string type_name() {
  const char* mangled = typeid(T).name();
#if defined(__GNUC__) || defined(__clang__)
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> name(
      abi::__cxa_demangle(mangled, nullptr, nullptr, &status), std::free);
  if (status == 0 && name) return name.get();
#endif
  return mangled;
}

}  // namespace cpg
