// What the ops' autograd kernels share. Each differentiable op's formula sits
// beside the op in its family file (linear_ops.cpp, conv_ops.cpp,
// mask_ops.cpp) as a torch::autograd::Function whose forward calls the op
// below autograd and whose backward is the formula of docs/architecture.md
// ("Ops"):
//   dx = the op's input gradient, through the same on-the-fly masked operand;
//   G  = dL/dW_eff from aten, with no mask on its operands, then one fused
//        pass: grad_epilogue(G, W, owner, task) gives dW = G*[owner == task]
//        and the straight-through dm = G*W*[0 < owner < task] (training
//        form), or dW = G masked by the bits (inference form);
//   db = dy summed over every dimension but the channels.
// A backward's own ops are not differentiable: under create_graph its results
// carry a node that fails a second backward with a clear message, as Python's
// @once_differentiable does.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <type_traits>
#include <utility>

namespace cpg::ops {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Below = at::AutoDispatchBelowADInplaceOrView;
using OptTensor = std::optional<at::Tensor>;

// The dispatcher's handle of the op whose CPU/CUDA kernel is `Kernel`, found
// on first use. A call through it reaches what a call from Python would: the
// fake kernels under torch.compile, the emulator's routing on the CPU.
template <auto Kernel, typename Signature = std::remove_pointer_t<decltype(Kernel)>>
const c10::TypedOperatorHandle<Signature>& op(const char* name) {
  static const auto handle =
      c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
  return handle;
}

// Function<T> gives an edge to each tensor argument it was passed, in order,
// and none to a None optional, so later arguments' edges shift. This records
// which argument positions held a tensor and finds an argument's edge.
class Present {
 public:
  explicit Present(std::initializer_list<bool> tensors) {
    int64_t pos = 0;
    for (bool t : tensors) bits_ |= int64_t{t} << pos++;
  }
  explicit Present(int64_t bits) : bits_(bits) {}
  int64_t bits() const { return bits_; }
  // Whether backward must produce the gradient of the argument at `pos`.
  bool needs_grad(const AutogradContext* ctx, int pos) const {
    if (!((bits_ >> pos) & 1)) return false;
    const auto below = static_cast<uint64_t>(bits_ & ((int64_t{1} << pos) - 1));
    return ctx->needs_input_grad(static_cast<size_t>(__builtin_popcountll(below)));
  }

 private:
  int64_t bits_ = 0;
};

// A tensor argument without a gradient (bits, owner), wrapped so that
// Function<T>::apply gives it no edge and keeps no record of it: a call then
// costs less.
struct Constant {
  const at::Tensor& tensor;
};
struct OptConstant {
  const OptTensor& tensor;
};

// What Python's @once_differentiable does, but connected: under create_graph
// the gradients become outputs of one node that raises when a second backward
// reaches it. Its edges lead to `depends_on` (the tensors the gradients are
// functions of), so differentiating a gradient reaches it, not "unused".
variable_list once_differentiable(variable_list grads, const variable_list& depends_on,
                                  const char* op);

// grad_W and grad_m from G = dL/dW_eff. Without owner (the inference form),
// the weight gradient of W * bits.
std::pair<at::Tensor, at::Tensor> weight_and_mask_grads(const at::Tensor& G,
                                                        const at::Tensor& weight,
                                                        const at::Tensor& bits,
                                                        const at::Tensor& owner, int64_t task,
                                                        bool need_mask);

// The accumulator of a weight gradient summed over tasks: fp32 for 16-bit
// weights, so the sum rounds once (adding per-task 16-bit gradients in 16 bits
// errs many times that where tasks' contributions cancel).
at::Tensor task_sum(const at::Tensor& weight);

// The weight gradient of W * bits: G with inactive entries zeroed.
at::Tensor masked_by_bits(const at::Tensor& G, const at::Tensor& bits);

}  // namespace cpg::ops
