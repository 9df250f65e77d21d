// The plan query for Python (cpg_kernels._C.plan_masked_linear / _conv2d):
// what the CUDA launchers would launch on a device of a given size, without a
// GPU (cuda/launchers.h, cuda/launch_plan.h). Read by benchmarks/model.
#pragma once

#include <torch/extension.h>

namespace cpg::ops {

void bind_plan_query(pybind11::module& m);

}  // namespace cpg::ops
