// Element-wise mask ops (pack, unpack, active set, counts, apply, gradient
// epilogue): validation plus routing to the CPU path, the CUDA kernels or the
// emulator.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace cpg::ops {

at::Tensor pack_bits(const at::Tensor& mask);
at::Tensor unpack_bits(const at::Tensor& bits, int64_t K);
at::Tensor active_bits(const at::Tensor& owner, int64_t task, const std::optional<at::Tensor>& mask,
                       const std::optional<at::Tensor>& pick_bits, double threshold);
at::Tensor owner_histogram(const at::Tensor& owner);
at::Tensor count_bits(const at::Tensor& bits);
at::Tensor apply_bits(const at::Tensor& weight, const at::Tensor& bits);
std::tuple<at::Tensor, at::Tensor> grad_epilogue(const at::Tensor& grad, const at::Tensor& weight,
                                                 const at::Tensor& owner, int64_t task,
                                                 bool mask_grad);

// grad_epilogue's pass into preallocated contiguous outputs of G's shape
// (grad_m float32, or none): G, w and owner contiguous, of one shape; grad_w
// of w's dtype (fp32 w and grad_w beside 16-bit G: the mixed form).
void grad_epilogue_into(const at::Tensor& G, const at::Tensor& w, const at::Tensor& owner,
                        int64_t task, at::Tensor& grad_w, std::optional<at::Tensor>& grad_m);

// Rows [n0, n0 + rows) of weight (viewed [N, K]) with inactive entries zeroed,
// as a new contiguous [rows, K] tensor: the tile decode every chunked path uses.
// `dtype` (CPU tensors only) widens fp16/bf16 to fp32 on the way.
at::Tensor decode_rows(const at::Tensor& weight2d, const at::Tensor& bits, int64_t n0, int64_t rows,
                       std::optional<at::ScalarType> dtype = std::nullopt);
// The same into a preallocated contiguous [rows, K] tensor.
void decode_rows_into(const at::Tensor& weight2d, const at::Tensor& bits, int64_t n0,
                      at::Tensor& out);

}  // namespace cpg::ops
