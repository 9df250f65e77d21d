// The `cpg` op library: schemas and their CPU/CUDA implementations. Fake
// (meta) kernels and autograd formulas are registered from Python
// (cpg_kernels/_ops.py) through torch.library.
#include <torch/library.h>

#include "ops/conv_ops.h"
#include "ops/linear_ops.h"
#include "ops/mask_ops.h"

TORCH_LIBRARY(cpg, m) {
  m.def("pack_bits(Tensor mask) -> Tensor");
  m.def("unpack_bits(Tensor bits, int K) -> Tensor");
  m.def("active_bits(Tensor owner, int task, Tensor? mask, Tensor? pick_bits, float threshold) "
        "-> Tensor");
  m.def("owner_histogram(Tensor owner) -> Tensor");
  m.def("count_bits(Tensor bits) -> Tensor");
  m.def("apply_bits(Tensor weight, Tensor bits) -> Tensor");
  m.def("grad_epilogue(Tensor grad, Tensor weight, Tensor owner, int task, bool mask_grad) "
        "-> (Tensor, Tensor)");
  m.def("masked_linear(Tensor x, Tensor weight, Tensor bits, Tensor? bias, Tensor? owner, "
        "Tensor? mask, int task) -> Tensor");
  m.def("masked_linear_grad_input(Tensor grad_out, Tensor weight, Tensor bits) -> Tensor");
  m.def("masked_linear_multitask(Tensor x, Tensor weight, Tensor bits, Tensor? bias) -> Tensor");
  m.def("masked_conv2d(Tensor x, Tensor weight, Tensor bits, Tensor? bias, int[2] stride, "
        "int[2] padding, int[2] dilation, int groups, Tensor? owner, Tensor? mask, int task) "
        "-> Tensor");
  m.def("masked_conv2d_multitask(Tensor x, Tensor weight, Tensor bits, Tensor? bias, "
        "int[2] stride, int[2] padding, int[2] dilation, int groups) -> Tensor");
  m.def("masked_conv2d_grad_input(Tensor grad_out, Tensor weight, Tensor bits, int[] input_size, "
        "int[2] stride, int[2] padding, int[2] dilation, int groups) -> Tensor");
}

// One implementation per op serves every device: each routes internally to
// the CPU path, the CUDA kernels or the emulator (ops/backend.h).
#define CPG_IMPLS(m)                                                 \
  m.impl("pack_bits", &cpg::ops::pack_bits);                          \
  m.impl("unpack_bits", &cpg::ops::unpack_bits);                      \
  m.impl("active_bits", &cpg::ops::active_bits);                      \
  m.impl("owner_histogram", &cpg::ops::owner_histogram);              \
  m.impl("count_bits", &cpg::ops::count_bits);                        \
  m.impl("apply_bits", &cpg::ops::apply_bits);                        \
  m.impl("grad_epilogue", &cpg::ops::grad_epilogue);                  \
  m.impl("masked_linear", &cpg::ops::masked_linear);                  \
  m.impl("masked_linear_grad_input", &cpg::ops::masked_linear_grad_input); \
  m.impl("masked_linear_multitask", &cpg::ops::masked_linear_multitask);   \
  m.impl("masked_conv2d", &cpg::ops::masked_conv2d);                  \
  m.impl("masked_conv2d_multitask", &cpg::ops::masked_conv2d_multitask);  \
  m.impl("masked_conv2d_grad_input", &cpg::ops::masked_conv2d_grad_input);

TORCH_LIBRARY_IMPL(cpg, CPU, m) { CPG_IMPLS(m) }

#if defined(CPG_WITH_CUDA)
TORCH_LIBRARY_IMPL(cpg, CUDA, m) { CPG_IMPLS(m) }
#endif
