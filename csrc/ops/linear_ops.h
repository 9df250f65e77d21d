// Masked linear ops: y = x (W.bits)^T + b, its input and weight gradients, and
// multi-task inference.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace cpg::ops {

// owner/mask/task are used only by the registered backward (which gradient
// reaches weight and mask); the forward reads bits alone.
at::Tensor masked_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bits,
                         const std::optional<at::Tensor>& bias,
                         const std::optional<at::Tensor>& owner,
                         const std::optional<at::Tensor>& mask, int64_t task);
at::Tensor masked_linear_grad_input(const at::Tensor& grad_out, const at::Tensor& weight,
                                    const at::Tensor& bits);
// The weight gradient of masked_linear: (grad_w, grad_m). With owner (the
// training form) grad_w = G*[owner == task] and, with mask_grad, grad_m =
// G*W*[0 < owner < task] (float32; else an empty tensor); without, grad_w is
// G masked by bits. G = grad_out^T x over every leading dimension.
std::tuple<at::Tensor, at::Tensor> masked_linear_weight_grad(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& bits, const std::optional<at::Tensor>& owner, int64_t task, bool mask_grad);
at::Tensor masked_linear_multitask(const at::Tensor& x, const at::Tensor& weight,
                                   const at::Tensor& bits, const std::optional<at::Tensor>& bias);

}  // namespace cpg::ops
