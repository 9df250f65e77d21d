// The weight and mask gradients of one weight element from G = dL/dW_eff, the
// rule of csrc/core/mask_format.h applied in the kernels' dtypes (and, for an
// fp32 weight beside 16-bit G, the cast between them): shared by
// the grad_epilogue pass (elementwise.cu) and the fused weight-gradient
// epilogue (gemm_weight_grad.cuh), so that both give the same bits for the
// same G.
#pragma once

#include <type_traits>

#include "core/mask_format.h"
#include "cuda/kernel_utils.cuh"

namespace cpg {
namespace CPG_KERNEL_NS {

// A T value as WT (exact: WT is T or fp32), and a WT value as T (rounded as a
// cast rounds).
template <typename WT, typename T>
CPG_DEVICE WT widened(T v) {
  if constexpr (std::is_same<T, WT>::value) {
    return v;
  } else {
    return cpgdev::to_float(v);
  }
}
template <typename T, typename WT>
CPG_DEVICE T narrowed(WT v) {
  if constexpr (std::is_same<T, WT>::value) {
    return v;
  } else {
    return cpgdev::from_float<T>(v);
  }
}

// dW = G where the task owns the weight, else 0.
template <typename T>
CPG_DEVICE T weight_grad_of(T g, uint8_t owner, int task) {
  return is_trainable(owner, task) ? g : cpgdev::from_float<T>(0.0f);
}

// The straight-through mask gradient, in fp32: G * W where an older task owns
// the weight, else 0.
template <typename T>
CPG_DEVICE float mask_grad_of(T g, T w, uint8_t owner, int task) {
  return is_pickable(owner, task) ? cpgdev::to_float(g) * cpgdev::to_float(w) : 0.0f;
}

}  // namespace CPG_KERNEL_NS
}  // namespace cpg
