// Compiled only in CUDA builds: the one place the glue touches CUDA headers.
// (c10's stream header needs only the CUDA runtime; ATen/cuda/CUDAContext.h
// would pull in cuSPARSE/cuBLAS headers that a bare toolkit may lack.)
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/launchers.h"
#include "ops/backend.h"

namespace cpg::ops {
namespace {

// The kernels' workspaces come from torch's caching allocator, so they show
// in torch.cuda.memory_allocated / max_memory_allocated like any tensor.
void* torch_workspace_alloc(size_t bytes, void* stream) {
  return c10::cuda::CUDACachingAllocator::raw_alloc_with_stream(bytes,
                                                                static_cast<cudaStream_t>(stream));
}
void torch_workspace_free(void* p) {
  if (p != nullptr) c10::cuda::CUDACachingAllocator::raw_delete(p);
}

const bool g_workspace_allocator_installed = [] {
  cpg::cuda::set_workspace_allocator(&torch_workspace_alloc, &torch_workspace_free);
  return true;
}();

}  // namespace

void* cuda_stream(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

bool cuda_built() { return true; }

}  // namespace cpg::ops
