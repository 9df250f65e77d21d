// The CPU production path of the element-wise mask ops. Tensors are contiguous
// and already validated by the glue; decoding goes through core/mask_format.h.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace cpg::cpu {

at::Tensor pack_bits(const at::Tensor& mask2d);             // bool [N, K] -> int32
at::Tensor unpack_bits(const at::Tensor& bits, int64_t K);  // -> bool [N, K]
at::Tensor active_bits(const at::Tensor& owner2d, int64_t task,
                       const std::optional<at::Tensor>& pick_bits,
                       const std::optional<at::Tensor>& mask2d, double threshold);
at::Tensor owner_histogram(const at::Tensor& owner);  // int64 [256]
at::Tensor count_bits(const at::Tensor& bits);        // int64 [N]
// out[r] = w[n0 + r] where the bit of row n0 + r is set, else 0, for rows
// n0..n0+out.size(0); any floating dtype, and fp16/bf16 into fp32. This is
// the tile decode of the chunked path and of apply_bits.
void decode_rows(const at::Tensor& w2d, const at::Tensor& bits, int64_t n0, at::Tensor& out);
void grad_epilogue(const at::Tensor& G, const at::Tensor& w, const at::Tensor& owner, int64_t task,
                   at::Tensor& grad_w, std::optional<at::Tensor>& grad_m);

}  // namespace cpg::cpu
