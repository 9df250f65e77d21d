// How an ops file registers its ops in the `cpg` library: each family file
// (linear_ops.cpp, conv_ops.cpp, mask_ops.cpp) holds its schemas, kernels and
// autograd formulas in one TORCH_LIBRARY_FRAGMENT(cpg, m), so a new op is
// registered where it is written. The fake kernels that torch.compile traces
// with are registered from Python (cpg_kernels/_ops.py).
#pragma once

#include <torch/library.h>

#include <string>

namespace cpg::ops {

// The op name of a schema "name(args) -> result".
inline std::string op_name(const char* schema) {
  const std::string s(schema);
  return s.substr(0, s.find('('));
}

// Defines `schema` and serves it with `kernel` on the CPU key and, in CUDA
// builds, the CUDA key. One kernel serves both: it routes by itself to the
// CPU path, the CUDA kernels or the emulator (backend.h).
template <typename Fn>
void define_op(torch::Library& m, const char* schema, Fn* kernel) {
  m.def(schema);
  const std::string name = op_name(schema);
  m.impl(name.c_str(), torch::dispatch(c10::DispatchKey::CPU, kernel));
#if defined(CPG_WITH_CUDA)
  m.impl(name.c_str(), torch::dispatch(c10::DispatchKey::CUDA, kernel));
#endif
}

// An op whose results are integers has no gradient: autograd falls through to
// the kernel, so a call does no autograd bookkeeping and makes no copy of the
// call for torch's boxed fallback.
inline void skip_autograd(torch::Library& m, const char* name) {
  m.impl(name, torch::dispatch(c10::DispatchKey::Autograd, torch::CppFunction::makeFallthrough()));
}

// The op's autograd kernel (differentiable ops: a torch::autograd::Function).
template <typename Fn>
void autograd_kernel(torch::Library& m, const char* name, Fn* kernel) {
  m.impl(name, torch::dispatch(c10::DispatchKey::Autograd, kernel));
}

}  // namespace cpg::ops
