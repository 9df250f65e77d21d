// Compiled only in CUDA builds: the one place the glue touches CUDA headers.
// (c10's stream header needs only the CUDA runtime; ATen/cuda/CUDAContext.h
// would pull in cuSPARSE/cuBLAS headers that a bare toolkit may lack.)
#include <c10/cuda/CUDAStream.h>

#include "ops/backend.h"

namespace cpg::ops {

void* cuda_stream(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

bool cuda_built() { return true; }

}  // namespace cpg::ops
