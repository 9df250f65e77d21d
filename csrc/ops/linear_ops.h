// Masked linear ops: y = x (W.bits)^T + b, its input gradient, and multi-task
// inference.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace cpg::ops {

// owner/mask/task are used only by the registered backward (which gradient
// reaches weight and mask); the forward reads bits alone.
at::Tensor masked_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bits,
                         const std::optional<at::Tensor>& bias,
                         const std::optional<at::Tensor>& owner,
                         const std::optional<at::Tensor>& mask, int64_t task);
at::Tensor masked_linear_grad_input(const at::Tensor& grad_out, const at::Tensor& weight,
                                    const at::Tensor& bits);
at::Tensor masked_linear_multitask(const at::Tensor& x, const at::Tensor& weight,
                                   const at::Tensor& bits, const std::optional<at::Tensor>& bias);

}  // namespace cpg::ops
