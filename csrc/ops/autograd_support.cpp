#include "ops/autograd_support.h"

#include <torch/csrc/autograd/functions/basic_ops.h>

#include <string>

#include "ops/mask_ops.h"

namespace cpg::ops {

variable_list once_differentiable(variable_list grads, const variable_list& depends_on,
                                  const char* op) {
  if (!at::GradMode::is_enabled()) return grads;
  const size_t n = grads.size();
  variable_list inputs;
  inputs.reserve(n + depends_on.size());
  for (const at::Tensor& g : grads) {
    inputs.push_back(g.defined() ? g.detach().requires_grad_(true) : at::Tensor());
  }
  inputs.insert(inputs.end(), depends_on.begin(), depends_on.end());
  torch::autograd::DelayedError error(
      std::string(op) +
          ": double backward is not supported (its backward formula is not "
          "differentiable); compute the gradients without create_graph=True",
      static_cast<int64_t>(inputs.size()));
  variable_list out = error.apply(std::move(inputs));
  out.resize(n);
  return out;
}

at::Tensor masked_by_bits(const at::Tensor& G, const at::Tensor& bits) {
  return op<&apply_bits>("cpg::apply_bits").call(G, bits);
}

std::pair<at::Tensor, at::Tensor> weight_and_mask_grads(const at::Tensor& G,
                                                        const at::Tensor& weight,
                                                        const at::Tensor& bits,
                                                        const at::Tensor& owner, int64_t task,
                                                        bool need_mask) {
  if (!owner.defined()) return {masked_by_bits(G, bits), at::Tensor()};
  auto [grad_w, grad_m] =
      op<&grad_epilogue>("cpg::grad_epilogue").call(G, weight, owner, task, need_mask);
  return {grad_w, need_mask ? grad_m : at::Tensor()};
}

at::Tensor task_sum(const at::Tensor& weight) {
  const bool narrow = weight.scalar_type() == at::kHalf || weight.scalar_type() == at::kBFloat16;
  return at::zeros(weight.sizes(),
                   weight.options().dtype(narrow ? at::kFloat : weight.scalar_type()));
}

}  // namespace cpg::ops
