// The CPU path's fused small-batch linear kernels (kernels.h): up to
// kSmallBatchRows input rows stream the weight once, decoding its bits in
// registers, with no decoded tile and no GEMM call. Larger batches take the
// chunked path (ops/chunking.h): decode a tile, then ATen's GEMM.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace cpg::cpu {

constexpr int64_t kSmallBatchRows = 16;

// Whether `rows` input rows of dtype `t` take the small-batch kernels.
bool small_batch(int64_t rows, at::ScalarType t);

// y2d [rows, N] = x2d [rows, K] against the weight decoded by bits
// [tasks, N, words] (rows = tasks groups of equal size, in task order), plus
// bias. All contiguous, same dtype.
void small_batch_linear(const at::Tensor& x2d, const at::Tensor& w, const at::Tensor& bits,
                        const std::optional<at::Tensor>& bias, at::Tensor& y2d, int64_t tasks);

// dx2d [M, K] = dy2d [M, N] against the decoded weight; N >= 1.
void small_batch_grad_input(const at::Tensor& dy2d, const at::Tensor& w, const at::Tensor& bits,
                            at::Tensor& dx2d);

}  // namespace cpg::cpu
