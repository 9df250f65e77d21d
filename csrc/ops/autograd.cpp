// Autograd kernels of the cpg ops (DispatchKey::Autograd), in C++ so that a
// call runs no Python below torch.ops. Each forward calls the op below
// autograd; each backward is the formula of docs/architecture.md ("Ops"):
//   dx = the op's input gradient, through the same on-the-fly masked operand;
//   G  = dL/dW_eff from aten, with no mask on its operands, then one fused
//        pass: grad_epilogue(G, W, owner, task) gives dW = G*[owner == task]
//        and the straight-through dm = G*W*[0 < owner < task] (training
//        form), or dW = G masked by the bits (inference form);
//   db = dy summed over every dimension but the channels.
// A backward's own ops are not differentiable: under create_graph its results
// carry a node that fails a second backward with a clear message, as Python's
// @once_differentiable does. The mask helpers (integer results) get a kernel
// that only steps below autograd, so they skip torch's boxed fallback.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <string>

#include "ops/conv_ops.h"
#include "ops/linear_ops.h"
#include "ops/mask_ops.h"

namespace cpg::ops {
namespace {

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

// input_size is SymInt[] in the schema (its fake kernel sees symbolic sizes);
// the kernel itself takes plain ints.
using ConvGradInput = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 c10::SymIntArrayRef, at::IntArrayRef, at::IntArrayRef,
                                 at::IntArrayRef, int64_t);

// The accumulator of a weight gradient summed over tasks: fp32 for 16-bit weights, so the
// sum rounds once (adding per-task 16-bit gradients in 16 bits errs many times that where
// tasks' contributions cancel).
at::Tensor task_sum(const at::Tensor& weight) {
  const bool narrow = weight.scalar_type() == at::kHalf || weight.scalar_type() == at::kBFloat16;
  return at::zeros(weight.sizes(),
                   weight.options().dtype(narrow ? at::kFloat : weight.scalar_type()));
}

const auto& linear_op() { return op<&masked_linear>("cpg::masked_linear"); }
const auto& linear_grad_input_op() {
  return op<&masked_linear_grad_input>("cpg::masked_linear_grad_input");
}
const auto& linear_multitask_op() {
  return op<&masked_linear_multitask>("cpg::masked_linear_multitask");
}
const auto& conv_op() { return op<&masked_conv2d>("cpg::masked_conv2d"); }
const auto& conv_grad_input_op() {
  return op<&masked_conv2d_grad_input, ConvGradInput>("cpg::masked_conv2d_grad_input");
}
const auto& conv_multitask_op() {
  return op<&masked_conv2d_multitask>("cpg::masked_conv2d_multitask");
}
const auto& apply_bits_op() { return op<&apply_bits>("cpg::apply_bits"); }
const auto& grad_epilogue_op() { return op<&grad_epilogue>("cpg::grad_epilogue"); }
const auto& pack_bits_op() { return op<&pack_bits>("cpg::pack_bits"); }
const auto& unpack_bits_op() { return op<&unpack_bits>("cpg::unpack_bits"); }
const auto& active_bits_op() { return op<&active_bits>("cpg::active_bits"); }
const auto& owner_histogram_op() { return op<&owner_histogram>("cpg::owner_histogram"); }
const auto& count_bits_op() { return op<&count_bits>("cpg::count_bits"); }

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

// grad_W and grad_m from G = dL/dW_eff. Without owner (the inference form),
// the weight gradient of W * bits.
std::pair<at::Tensor, at::Tensor> weight_and_mask_grads(const at::Tensor& G,
                                                        const at::Tensor& weight,
                                                        const at::Tensor& bits,
                                                        const at::Tensor& owner, int64_t task,
                                                        bool need_mask) {
  if (!owner.defined()) return {apply_bits_op().call(G, bits), at::Tensor()};
  auto [grad_w, grad_m] = grad_epilogue_op().call(G, weight, owner, task, need_mask);
  return {grad_w, need_mask ? grad_m : at::Tensor()};
}

// ------------------------------------------------------------------ linear

// Arguments: x 0, weight 1, bits 2, bias 3, owner 4, mask 5, task 6.
struct MaskedLinear : torch::autograd::Function<MaskedLinear> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            Constant bits, const OptTensor& bias, OptConstant owner,
                            const OptTensor& mask, int64_t task) {
    ctx->save_for_backward({x, weight, bits.tensor, owner.tensor.value_or(at::Tensor())});
    ctx->saved_data["task"] = task;
    ctx->saved_data["present"] =
        Present({true, true, false, bias.has_value(), false, mask.has_value()}).bits();
    Below below;
    return linear_op().call(x, weight, bits.tensor, bias, owner.tensor, mask, task);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Present present(ctx->saved_data["present"].toInt());
    const bool need_x = present.needs_grad(ctx, 0), need_w = present.needs_grad(ctx, 1),
               need_b = present.needs_grad(ctx, 3), need_m = present.needs_grad(ctx, 5);
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &bits = saved[2], &owner = saved[3];
    const at::Tensor& dy = grads[0];
    const c10::SymInt n = weight.sym_size(0), k = weight.sym_size(1);
    variable_list out(7);
    {
      Below below;
      if (need_x) out[0] = linear_grad_input_op().call(dy, weight, bits);
      if (need_w || need_m) {
        const at::Tensor G = dy.reshape_symint({-1, n}).t().mm(x.reshape_symint({-1, k}));
        auto [dw, dm] =
            weight_and_mask_grads(G, weight, bits, owner, ctx->saved_data["task"].toInt(), need_m);
        if (need_w) out[1] = std::move(dw);
        out[5] = std::move(dm);
      }
      if (need_b) out[3] = dy.reshape_symint({-1, n}).sum(0);
    }
    return once_differentiable(std::move(out), {dy, x, weight}, "cpg::masked_linear");
  }
};

at::Tensor masked_linear_autograd(const at::Tensor& x, const at::Tensor& weight,
                                  const at::Tensor& bits, const OptTensor& bias,
                                  const OptTensor& owner, const OptTensor& mask, int64_t task) {
  if (!torch::autograd::compute_requires_grad(x, weight, bias, mask)) {
    Below below;
    return linear_op().call(x, weight, bits, bias, owner, mask, task);
  }
  return MaskedLinear::apply(x, weight, Constant{bits}, bias, OptConstant{owner}, mask, task);
}

// Arguments: x 0, weight 1, bits 2, bias 3.
struct MaskedLinearMultitask : torch::autograd::Function<MaskedLinearMultitask> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            Constant bits, const OptTensor& bias) {
    ctx->save_for_backward({x, weight, bits.tensor});
    ctx->saved_data["present"] = Present({true, true, false, bias.has_value()}).bits();
    Below below;
    return linear_multitask_op().call(x, weight, bits.tensor, bias);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Present present(ctx->saved_data["present"].toInt());
    const bool need_x = present.needs_grad(ctx, 0), need_w = present.needs_grad(ctx, 1),
               need_b = present.needs_grad(ctx, 3);
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &bits = saved[2];
    const at::Tensor& dy = grads[0];
    const int64_t tasks = x.sym_size(0).guard_int(__FILE__, __LINE__);
    variable_list out(4);
    {
      Below below;
      if (need_x) {
        std::vector<at::Tensor> dx;
        for (int64_t t = 0; t < tasks; ++t) {
          dx.push_back(linear_grad_input_op().call(dy[t], weight, bits[t]));
        }
        out[0] = at::stack(dx);
      }
      if (need_w) {
        // Each task's dL/dW_eff through its own bits, summed over the tasks in fp32.
        at::Tensor dw = task_sum(weight);
        for (int64_t t = 0; t < tasks; ++t) {
          dw.add_(apply_bits_op().call(dy[t].t().mm(x[t]), bits[t]));
        }
        out[1] = dw.to(weight.scalar_type());
      }
      if (need_b) out[3] = dy.sum({0, 1});
    }
    return once_differentiable(std::move(out), {dy, x, weight}, "cpg::masked_linear_multitask");
  }
};

at::Tensor masked_linear_multitask_autograd(const at::Tensor& x, const at::Tensor& weight,
                                            const at::Tensor& bits, const OptTensor& bias) {
  if (!torch::autograd::compute_requires_grad(x, weight, bias)) {
    Below below;
    return linear_multitask_op().call(x, weight, bits, bias);
  }
  return MaskedLinearMultitask::apply(x, weight, Constant{bits}, bias);
}

// ------------------------------------------------------------------ conv2d

// stride, padding, dilation and groups saved as one int list for backward.
std::vector<int64_t> pack_conv(at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, int64_t groups) {
  std::vector<int64_t> p(stride.begin(), stride.end());
  p.insert(p.end(), padding.begin(), padding.end());
  p.insert(p.end(), dilation.begin(), dilation.end());
  p.push_back(groups);
  return p;
}

struct ConvArgs {
  std::vector<int64_t> packed;
  at::IntArrayRef stride() const { return at::IntArrayRef(packed).slice(0, 2); }
  at::IntArrayRef padding() const { return at::IntArrayRef(packed).slice(2, 2); }
  at::IntArrayRef dilation() const { return at::IntArrayRef(packed).slice(4, 2); }
  int64_t groups() const { return packed[6]; }
};

// dL/dW_eff of a conv from the library: only the weight's shape matters here.
at::Tensor conv_weight_grad(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight,
                            const ConvArgs& c) {
  return std::get<1>(at::convolution_backward(dy, x, weight, std::nullopt, c.stride(), c.padding(),
                                              c.dilation(), false, {0, 0}, c.groups(),
                                              {false, true, false}));
}

// Arguments: x 0, weight 1, bits 2, bias 3, stride 4, padding 5, dilation 6,
// groups 7, owner 8, mask 9, task 10.
struct MaskedConv2d : torch::autograd::Function<MaskedConv2d> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            Constant bits, const OptTensor& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            OptConstant owner, const OptTensor& mask, int64_t task) {
    ctx->save_for_backward({x, weight, bits.tensor, owner.tensor.value_or(at::Tensor())});
    ctx->saved_data["task"] = task;
    ctx->saved_data["conv"] = pack_conv(stride, padding, dilation, groups);
    ctx->saved_data["present"] = Present({true, true, false, bias.has_value(), false, false, false,
                                          false, false, mask.has_value()})
                                     .bits();
    Below below;
    return conv_op().call(x, weight, bits.tensor, bias, stride, padding, dilation, groups,
                          owner.tensor, mask, task);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Present present(ctx->saved_data["present"].toInt());
    const bool need_x = present.needs_grad(ctx, 0), need_w = present.needs_grad(ctx, 1),
               need_b = present.needs_grad(ctx, 3), need_m = present.needs_grad(ctx, 9);
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &bits = saved[2], &owner = saved[3];
    const ConvArgs c{ctx->saved_data["conv"].toIntVector()};
    const at::Tensor& dy = grads[0];
    variable_list out(11);
    {
      Below below;
      if (need_x) {
        out[0] = conv_grad_input_op().call(dy, weight, bits, x.sym_sizes(), c.stride(), c.padding(),
                                           c.dilation(), c.groups());
      }
      if (need_w || need_m) {
        auto [dw, dm] = weight_and_mask_grads(conv_weight_grad(dy, x, weight, c), weight, bits,
                                              owner, ctx->saved_data["task"].toInt(), need_m);
        if (need_w) out[1] = std::move(dw);
        out[9] = std::move(dm);
      }
      if (need_b) out[3] = dy.sum({0, 2, 3});
    }
    return once_differentiable(std::move(out), {dy, x, weight}, "cpg::masked_conv2d");
  }
};

at::Tensor masked_conv2d_autograd(const at::Tensor& x, const at::Tensor& weight,
                                  const at::Tensor& bits, const OptTensor& bias,
                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation, int64_t groups, const OptTensor& owner,
                                  const OptTensor& mask, int64_t task) {
  if (!torch::autograd::compute_requires_grad(x, weight, bias, mask)) {
    Below below;
    return conv_op().call(x, weight, bits, bias, stride, padding, dilation, groups, owner, mask,
                          task);
  }
  return MaskedConv2d::apply(x, weight, Constant{bits}, bias, stride, padding, dilation, groups,
                             OptConstant{owner}, mask, task);
}

// Arguments: x 0, weight 1, bits 2, bias 3, stride 4, padding 5, dilation 6, groups 7.
struct MaskedConv2dMultitask : torch::autograd::Function<MaskedConv2dMultitask> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            Constant bits, const OptTensor& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
    ctx->save_for_backward({x, weight, bits.tensor});
    ctx->saved_data["conv"] = pack_conv(stride, padding, dilation, groups);
    ctx->saved_data["present"] = Present({true, true, false, bias.has_value()}).bits();
    Below below;
    return conv_multitask_op().call(x, weight, bits.tensor, bias, stride, padding, dilation,
                                    groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const Present present(ctx->saved_data["present"].toInt());
    const bool need_x = present.needs_grad(ctx, 0), need_w = present.needs_grad(ctx, 1),
               need_b = present.needs_grad(ctx, 3);
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &bits = saved[2];
    const ConvArgs c{ctx->saved_data["conv"].toIntVector()};
    const at::Tensor& dy = grads[0];
    const int64_t tasks = x.sym_size(0).guard_int(__FILE__, __LINE__);
    variable_list out(8);
    {
      Below below;
      if (need_x) {
        std::vector<at::Tensor> dx;
        for (int64_t t = 0; t < tasks; ++t) {
          dx.push_back(conv_grad_input_op().call(dy[t], weight, bits[t], x.sym_sizes().slice(1),
                                                 c.stride(), c.padding(), c.dilation(),
                                                 c.groups()));
        }
        out[0] = at::stack(dx);
      }
      if (need_w) {
        // Each task's dL/dW_eff through its own bits, summed over the tasks in fp32.
        at::Tensor dw = task_sum(weight);
        for (int64_t t = 0; t < tasks; ++t) {
          dw.add_(apply_bits_op().call(conv_weight_grad(dy[t], x[t], weight, c), bits[t]));
        }
        out[1] = dw.to(weight.scalar_type());
      }
      if (need_b) out[3] = dy.sum({0, 1, 3, 4});
    }
    return once_differentiable(std::move(out), {dy, x, weight}, "cpg::masked_conv2d_multitask");
  }
};

at::Tensor masked_conv2d_multitask_autograd(const at::Tensor& x, const at::Tensor& weight,
                                            const at::Tensor& bits, const OptTensor& bias,
                                            at::IntArrayRef stride, at::IntArrayRef padding,
                                            at::IntArrayRef dilation, int64_t groups) {
  if (!torch::autograd::compute_requires_grad(x, weight, bias)) {
    Below below;
    return conv_multitask_op().call(x, weight, bits, bias, stride, padding, dilation, groups);
  }
  return MaskedConv2dMultitask::apply(x, weight, Constant{bits}, bias, stride, padding, dilation,
                                      groups);
}

// ------------------------------------------------------------- apply_bits

// Arguments: weight 0, bits 1. The gradient of W * bits is dy * bits.
struct ApplyBits : torch::autograd::Function<ApplyBits> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& weight, Constant bits) {
    ctx->save_for_backward({bits.tensor});
    Below below;
    return apply_bits_op().call(weight, bits.tensor);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(2);
    {
      Below below;
      out[0] = apply_bits_op().call(grads[0], ctx->get_saved_variables()[0]);
    }
    return once_differentiable(std::move(out), {grads[0]}, "cpg::apply_bits");
  }
};

at::Tensor apply_bits_autograd(const at::Tensor& weight, const at::Tensor& bits) {
  if (!torch::autograd::compute_requires_grad(weight)) {
    Below below;
    return apply_bits_op().call(weight, bits);
  }
  return ApplyBits::apply(weight, Constant{bits});
}

// -------------------------------------------- ops with integer results only

at::Tensor pack_bits_autograd(const at::Tensor& mask) {
  Below below;
  return pack_bits_op().call(mask);
}

at::Tensor unpack_bits_autograd(const at::Tensor& bits, int64_t K) {
  Below below;
  return unpack_bits_op().call(bits, K);
}

at::Tensor active_bits_autograd(const at::Tensor& owner, int64_t task, const OptTensor& mask,
                                const OptTensor& pick_bits, double threshold) {
  Below below;
  return active_bits_op().call(owner, task, mask, pick_bits, threshold);
}

at::Tensor owner_histogram_autograd(const at::Tensor& owner) {
  Below below;
  return owner_histogram_op().call(owner);
}

at::Tensor count_bits_autograd(const at::Tensor& bits) {
  Below below;
  return count_bits_op().call(bits);
}

}  // namespace

// grad_epilogue and the two *_grad_input ops are backward pieces, called only
// below autograd from the formulas above; they keep torch's fallback, which
// warns if someone differentiates them directly.
TORCH_LIBRARY_IMPL(cpg, Autograd, m) {
  m.impl("masked_linear", &masked_linear_autograd);
  m.impl("masked_linear_multitask", &masked_linear_multitask_autograd);
  m.impl("masked_conv2d", &masked_conv2d_autograd);
  m.impl("masked_conv2d_multitask", &masked_conv2d_multitask_autograd);
  m.impl("apply_bits", &apply_bits_autograd);
  m.impl("pack_bits", &pack_bits_autograd);
  m.impl("unpack_bits", &unpack_bits_autograd);
  m.impl("active_bits", &active_bits_autograd);
  m.impl("owner_histogram", &owner_histogram_autograd);
  m.impl("count_bits", &count_bits_autograd);
}

}  // namespace cpg::ops
