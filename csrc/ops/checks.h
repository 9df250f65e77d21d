// Argument validation shared by every op. Each message names the argument and
// what was expected; bad arguments raise ValueError in Python.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "core/mask_format.h"

namespace cpg::ops {

// A weight of any rank viewed as the matrix [N, K] of the mask format.
struct MatrixShape {
  int64_t N;
  int64_t K;
  int64_t words() const { return cpg::words_per_row(K); }
};

MatrixShape matrix_shape(const at::Tensor& weight);

void check_floating(const at::Tensor& t, const char* name);
void check_same_dtype(const at::Tensor& t, const at::Tensor& ref, const char* name,
                      const char* ref_name);
void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* name,
                       const char* ref_name);
// bits: int32 [N, ceil(K/32)] (or [T, N, ceil(K/32)] when `tasks` >= 0).
void check_bits(const at::Tensor& bits, const at::Tensor& weight, MatrixShape s,
                int64_t tasks = -1);
// owner: uint8 with the weight's shape.
void check_owner(const at::Tensor& owner, const at::Tensor& weight);
// Real-valued picking mask: float32 with the weight's shape.
void check_mask(const at::Tensor& mask, const at::Tensor& weight);
// A task id is 1..255: owner is uint8 and 0 means free.
void check_task(int64_t task);
// The training form (owner given) needs a task; the inference form has neither.
void check_grad_context(const at::Tensor& weight, const std::optional<at::Tensor>& owner,
                        const std::optional<at::Tensor>& mask, int64_t task);
// The fp32-weight form (autocast's): 16-bit activations (x, or grad_out)
// against an fp32 weight. The ops that take it (the linear ops, the conv
// forward) give results of the activations' dtype computed with the weight
// rounded to it as a cast rounds, and a weight gradient in fp32.
bool f32_weight_form(const at::Tensor& x, const at::Tensor& weight);
// bias [N] of ref's dtype and device (ref: the weight, or x in the
// fp32-weight form, where bias and output are x's dtype).
void check_bias(const std::optional<at::Tensor>& bias, const at::Tensor& ref, int64_t N,
                const char* ref_name = "weight");

}  // namespace cpg::ops
