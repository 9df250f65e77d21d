// Masked conv2d ops: forward and input gradient.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace cpg::ops {

// owner/mask/task are used only by the registered backward; the forward reads
// bits alone.
at::Tensor masked_conv2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bits,
                         const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                         const std::optional<at::Tensor>& owner,
                         const std::optional<at::Tensor>& mask, int64_t task);
// T tasks' inputs x [T, B, C, H, W] against one weight, bits [T, N, words]:
// y [T, B, N, Ho, Wo], the weight read once where the shapes allow.
at::Tensor masked_conv2d_multitask(const at::Tensor& x, const at::Tensor& weight,
                                   const at::Tensor& bits, const std::optional<at::Tensor>& bias,
                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                   at::IntArrayRef dilation, int64_t groups);
at::Tensor masked_conv2d_grad_input(const at::Tensor& grad_out, const at::Tensor& weight,
                                    const at::Tensor& bits, at::IntArrayRef input_size,
                                    at::IntArrayRef stride, at::IntArrayRef padding,
                                    at::IntArrayRef dilation, int64_t groups);

}  // namespace cpg::ops
