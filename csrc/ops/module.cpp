// The Python module cpg_kernels._C: loading it registers the `cpg` ops; the few
// functions below configure how they run.
#include <torch/extension.h>

#include "cpu/isa.h"
#include "cpu/precision.h"
#include "emu/runtime.h"
#include "ops/backend.h"
#include "ops/chunking.h"
#include "ops/gemm_path.h"
#include "ops/plan_query.h"

namespace {

cpg::DType parse_dtype(const std::string& dtype) {
  if (dtype == "float32") return cpg::DType::F32;
  if (dtype == "float16") return cpg::DType::F16;
  if (dtype == "bfloat16") return cpg::DType::BF16;
  throw pybind11::value_error("dtype: expected 'float32', 'float16' or 'bfloat16', got '" + dtype +
                              "'");
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "cpg-kernels: masked conv/GEMM ops from dense weights plus packed masks";
  m.def("cuda_built", &cpg::ops::cuda_built, "Whether the CUDA kernels were compiled in.");
  m.def("set_emulation", &cpg::ops::set_emulation, pybind11::arg("enabled"),
        pybind11::arg("seed") = 0,
        "Run the CUDA kernels under the CPU emulator for CPU tensors (testing).");
  m.def("emulation_enabled", &cpg::ops::emulation_enabled);
  m.def("set_decode_chunk_elements", &cpg::ops::set_decode_chunk_elements,
        "Entries per decoded weight tile on the chunked path; returns the old value.");
  m.def("decode_chunk_elements", &cpg::ops::decode_chunk_elements);
  m.def("set_gemm_path", &cpg::ops::set_gemm_path_override, pybind11::arg("path"),
        "Force the GEMM path of the kernel backends (\"fused\", \"library\" or \"auto\": "
        "the rule of csrc/ops/gemm_path.h); returns the previous setting.");
  m.def(
      "library_min_rows",
      [](const std::string& dtype, bool allow_tf32) {
        return cpg::ops::library_min_rows(parse_dtype(dtype), allow_tf32);
      },
      pybind11::arg("dtype"), pybind11::arg("allow_tf32"),
      "The GEMM rows from which a layer of `dtype` takes the library path (gemm_path.h).");
  m.def(
      "weight_grad_library_min_rows",
      [](const std::string& dtype, bool allow_tf32) {
        return cpg::ops::weight_grad_library_min_rows(parse_dtype(dtype), allow_tf32);
      },
      pybind11::arg("dtype"), pybind11::arg("allow_tf32"),
      "The batch rows from which a linear layer's weight gradient takes the two-pass path "
      "instead of the fused kernel (gemm_path.h).");
  m.def("cpu_isa", &cpg::cpu::isa, "The instruction set the CPU kernels run with.");
  m.def("cpu_isas", &cpg::cpu::available_isas, "The CPU kernel builds this CPU can run.");
  m.def("set_cpu_isa", &cpg::cpu::set_isa, pybind11::arg("name"),
        "Pin the CPU kernels' build (\"auto\": ATen's choice); returns the previous setting.");
  m.def("cpu_library_dtype", &cpg::cpu::library_dtype, pybind11::arg("dtype"),
        "The dtype the CPU chunked path hands ATen for layers of `dtype` (fp32 for 16-bit "
        "dtypes this CPU has no native dot products for).");
  m.def("set_emulator_launch_log", &cpg::emu::set_launch_log, pybind11::arg("enabled"),
        "Record the emulator's kernel launches (and clear the record).");
  m.def("take_emulator_launch_log", &cpg::emu::take_launch_log,
        "The recorded launches as '<source file>:<kernel>', and clear the record.");
  cpg::ops::bind_plan_query(m);
}
