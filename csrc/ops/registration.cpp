// The `cpg` op library: schemas and their kernels. The autograd kernels are in
// ops/autograd.cpp; the fake (meta) kernels that torch.compile needs are
// registered from Python (cpg_kernels/_ops.py).
#include <torch/library.h>

#include "ops/conv_ops.h"
#include "ops/linear_ops.h"
#include "ops/mask_ops.h"

TORCH_LIBRARY(cpg, m) {
  m.def("pack_bits(Tensor mask) -> Tensor");
  m.def("unpack_bits(Tensor bits, int K) -> Tensor");
  // No default threshold: its one home is cpg_kernels.masks.DEFAULT_THRESHOLD.
  m.def(
      "active_bits(Tensor owner, int task, Tensor? mask, Tensor? pick_bits, float threshold) "
      "-> Tensor");
  m.def("owner_histogram(Tensor owner) -> Tensor");
  m.def("count_bits(Tensor bits) -> Tensor");
  m.def("apply_bits(Tensor weight, Tensor bits) -> Tensor");
  m.def(
      "grad_epilogue(Tensor grad, Tensor weight, Tensor owner, int task, bool mask_grad) "
      "-> (Tensor, Tensor)");
  // The inference form passes bits alone; the training form adds owner, mask
  // and task, which only the backward reads.
  m.def(
      "masked_linear(Tensor x, Tensor weight, Tensor bits, Tensor? bias=None, "
      "Tensor? owner=None, Tensor? mask=None, int task=0) -> Tensor");
  m.def("masked_linear_grad_input(Tensor grad_out, Tensor weight, Tensor bits) -> Tensor");
  m.def(
      "masked_linear_multitask(Tensor x, Tensor weight, Tensor bits, Tensor? bias=None) "
      "-> Tensor");
  m.def(
      "masked_conv2d(Tensor x, Tensor weight, Tensor bits, Tensor? bias=None, "
      "int[2] stride=1, int[2] padding=0, int[2] dilation=1, int groups=1, "
      "Tensor? owner=None, Tensor? mask=None, int task=0) -> Tensor");
  m.def(
      "masked_conv2d_multitask(Tensor x, Tensor weight, Tensor bits, Tensor? bias=None, "
      "int[2] stride=1, int[2] padding=0, int[2] dilation=1, int groups=1) -> Tensor");
  // input_size is symbolic under torch.compile's dynamic shapes (the backward
  // passes the input's sizes).
  m.def(
      "masked_conv2d_grad_input(Tensor grad_out, Tensor weight, Tensor bits, "
      "SymInt[] input_size, int[2] stride=1, int[2] padding=0, int[2] dilation=1, "
      "int groups=1) -> Tensor");
}

namespace {

// One kernel per op serves every device: each routes internally to the CPU
// path, the CUDA kernels or the emulator (ops/backend.h).
void register_kernels(torch::Library& m) {
  m.impl("pack_bits", &cpg::ops::pack_bits);
  m.impl("unpack_bits", &cpg::ops::unpack_bits);
  m.impl("active_bits", &cpg::ops::active_bits);
  m.impl("owner_histogram", &cpg::ops::owner_histogram);
  m.impl("count_bits", &cpg::ops::count_bits);
  m.impl("apply_bits", &cpg::ops::apply_bits);
  m.impl("grad_epilogue", &cpg::ops::grad_epilogue);
  m.impl("masked_linear", &cpg::ops::masked_linear);
  m.impl("masked_linear_grad_input", &cpg::ops::masked_linear_grad_input);
  m.impl("masked_linear_multitask", &cpg::ops::masked_linear_multitask);
  m.impl("masked_conv2d", &cpg::ops::masked_conv2d);
  m.impl("masked_conv2d_multitask", &cpg::ops::masked_conv2d_multitask);
  m.impl("masked_conv2d_grad_input", &cpg::ops::masked_conv2d_grad_input);
}

}  // namespace

TORCH_LIBRARY_IMPL(cpg, CPU, m) { register_kernels(m); }

#if defined(CPG_WITH_CUDA)
TORCH_LIBRARY_IMPL(cpg, CUDA, m) { register_kernels(m); }
#endif
