#include "ops/plan_query.h"

#include <stdexcept>
#include <string>

#include "cuda/launchers.h"

namespace cpg::ops {

namespace py = pybind11;

namespace {

cpg::DType parse_dtype(const std::string& name) {
  if (name == "float32") return cpg::DType::F32;
  if (name == "float16") return cpg::DType::F16;
  if (name == "bfloat16") return cpg::DType::BF16;
  throw py::value_error("dtype: expected 'float32', 'float16' or 'bfloat16', got '" + name + "'");
}

// "emulator": the kernel sources as built for the emulator (always present);
// "cuda": as nvcc built them (only in a CUDA build). Both are the same code.
bool use_cuda_build(const std::string& build) {
  if (build == "emulator") return false;
  if (build == "cuda") {
#if defined(CPG_WITH_CUDA)
    return true;
#else
    throw py::value_error("build: 'cuda', but cpg_kernels was built without CUDA");
#endif
  }
  throw py::value_error("build: expected 'emulator' or 'cuda', got '" + build + "'");
}

py::list to_python(const cpg::LaunchPlan& plan) {
  py::list out;
  for (const cpg::PlannedLaunch& l : plan) {
    py::dict params;
    for (const auto& [key, value] : l.params) params[py::str(key)] = value;
    py::dict d;
    d["kernel"] = l.kernel;
    d["grid"] = py::make_tuple(l.grid[0], l.grid[1], l.grid[2]);
    d["threads"] = l.threads;
    d["dynamic_smem"] = l.dynamic_smem;
    d["workspace_bytes"] = l.workspace_bytes;
    d["params"] = params;
    out.append(d);
  }
  return out;
}

template <typename Fn>
py::list planned(Fn&& fn) {
  try {
    return to_python(fn());
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
}

}  // namespace

void bind_plan_query(py::module& m) {
  m.def(
      "plan_masked_linear",
      [](const std::string& dtype, int64_t tasks, int64_t M, int64_t N, int64_t K, bool grad_input,
         bool allow_tf32, int sm_count, const std::string& build) {
        const cpg::DType t = parse_dtype(dtype);
        return planned([&] {
#if defined(CPG_WITH_CUDA)
          if (use_cuda_build(build)) {
            return cpg::cuda::plan_masked_linear(t, tasks, M, N, K, grad_input, allow_tf32,
                                                 sm_count);
          }
#else
          use_cuda_build(build);
#endif
          return cpg::emu_kernels::plan_masked_linear(t, tasks, M, N, K, grad_input, allow_tf32,
                                                      sm_count);
        });
      },
      py::arg("dtype"), py::arg("tasks"), py::arg("M"), py::arg("N"), py::arg("K"),
      py::arg("grad_input"), py::arg("allow_tf32"), py::arg("sm_count"),
      py::arg("build") = "emulator",
      "The launches of masked_linear(_multitask) (or, with grad_input, of "
      "masked_linear_grad_input) on a GPU of sm_count multiprocessors: a list of dicts "
      "(kernel, grid, threads, dynamic_smem, workspace_bytes, params).");
  m.def(
      "plan_masked_linear_f32_weight",
      [](const std::string& dtype, int64_t tasks, int64_t M, int64_t N, int64_t K, int sm_count,
         const std::string& build, bool grad_input) {
        const cpg::DType t = parse_dtype(dtype);
        return planned([&] {
#if defined(CPG_WITH_CUDA)
          if (use_cuda_build(build)) {
            return cpg::cuda::plan_masked_linear_f32_weight(t, tasks, M, N, K, grad_input,
                                                            sm_count);
          }
#else
          use_cuda_build(build);
#endif
          return cpg::emu_kernels::plan_masked_linear_f32_weight(t, tasks, M, N, K, grad_input,
                                                                 sm_count);
        });
      },
      py::arg("dtype"), py::arg("tasks"), py::arg("M"), py::arg("N"), py::arg("K"),
      py::arg("sm_count"), py::arg("build") = "emulator", py::arg("grad_input") = false,
      "The launches of the fp32-weight forward (x and y of 16-bit dtype, an fp32 weight "
      "rounded in registers) or, with grad_input, of its input gradient (dy and dx 16-bit; "
      "tasks must be 1) on a GPU of sm_count multiprocessors, as plan_masked_linear; empty "
      "where the stream does not take the problem (the op then casts the weight and runs "
      "masked_linear's kernels).");
  m.def(
      "plan_linear_weight_grad",
      [](const std::string& dtype, int64_t M, int64_t N, int64_t K, bool allow_tf32, int sm_count,
         const std::string& build, bool f32_weight) {
        const cpg::DType t = parse_dtype(dtype);
        return planned([&] {
#if defined(CPG_WITH_CUDA)
          if (use_cuda_build(build)) {
            return cpg::cuda::plan_linear_weight_grad(t, M, N, K, allow_tf32, f32_weight, sm_count);
          }
#else
          use_cuda_build(build);
#endif
          return cpg::emu_kernels::plan_linear_weight_grad(t, M, N, K, allow_tf32, f32_weight,
                                                           sm_count);
        });
      },
      py::arg("dtype"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("allow_tf32"),
      py::arg("sm_count"), py::arg("build") = "emulator", py::arg("f32_weight") = false,
      "The launches of the fused linear weight gradient (dy [M, N], x [M, K]; with "
      "f32_weight, an fp32 weight and gradient beside 16-bit dy and x) on a GPU of sm_count "
      "multiprocessors, as plan_masked_linear; empty where that kernel does not take the "
      "problem. Whether the op runs it is gemm_path.h's rule.");
  m.def(
      "plan_masked_conv2d",
      [](const std::string& dtype, int64_t tasks, std::vector<int64_t> input, int64_t out_ch,
         std::vector<int64_t> kernel, std::vector<int64_t> stride, std::vector<int64_t> padding,
         std::vector<int64_t> dilation, int64_t groups, bool channels_last, bool grad_input,
         bool allow_tf32, int sm_count, const std::string& build, bool f32_weight) {
        const cpg::DType t = parse_dtype(dtype);
        auto pair = [](const std::vector<int64_t>& v, const char* name) {
          if (v.size() != 2) throw py::value_error(std::string(name) + ": expected 2 values");
          return v;
        };
        if (input.size() != 4) throw py::value_error("input: expected [batch, C, H, W]");
        pair(kernel, "kernel");
        pair(stride, "stride");
        pair(padding, "padding");
        pair(dilation, "dilation");
        if (groups < 1 || input[1] % groups != 0 || out_ch % groups != 0) {
          throw py::value_error("groups: must divide the input and output channels");
        }
        const cpg::ConvShape s{input[0],   input[1],    input[2],    input[3],  out_ch,
                               kernel[0],  kernel[1],   stride[0],   stride[1], padding[0],
                               padding[1], dilation[0], dilation[1], groups};
        if (f32_weight && tasks != 1) {
          throw py::value_error("f32_weight: the fp32-weight form is one task's");
        }
        return planned([&] {
#if defined(CPG_WITH_CUDA)
          if (use_cuda_build(build)) {
            if (f32_weight) {
              return cpg::cuda::plan_masked_conv2d_f32_weight(t, s, channels_last, grad_input,
                                                              sm_count);
            }
            return cpg::cuda::plan_masked_conv2d(t, tasks, s, channels_last, grad_input, allow_tf32,
                                                 sm_count);
          }
#else
          use_cuda_build(build);
#endif
          if (f32_weight) {
            return cpg::emu_kernels::plan_masked_conv2d_f32_weight(t, s, channels_last, grad_input,
                                                                   sm_count);
          }
          return cpg::emu_kernels::plan_masked_conv2d(t, tasks, s, channels_last, grad_input,
                                                      allow_tf32, sm_count);
        });
      },
      py::arg("dtype"), py::arg("tasks"), py::arg("input"), py::arg("out_channels"),
      py::arg("kernel"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
      py::arg("groups"), py::arg("channels_last"), py::arg("grad_input"), py::arg("allow_tf32"),
      py::arg("sm_count"), py::arg("build") = "emulator", py::arg("f32_weight") = false,
      "The launches of masked_conv2d(_multitask) (or, with grad_input, of "
      "masked_conv2d_grad_input) for input [batch, C, H, W] per task, as plan_masked_linear; "
      "with f32_weight, of the one-task fp32-weight form (16-bit activations, an fp32 weight "
      "rounded in registers) of the forward or, with grad_input, of the input gradient, empty "
      "where no kernel takes it (the op then casts).");
}

}  // namespace cpg::ops
