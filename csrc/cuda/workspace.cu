// The launchers' workspace memory (portability.h's device_alloc / device_free
// on the GPU): an installed allocator (launchers.h, set_workspace_allocator),
// or else the device's stream-ordered pool.
#include <atomic>

#include "cuda/launchers.h"
#include "cuda/portability.h"

namespace cpg {
namespace cuda {
namespace {

struct Allocator {
  WorkspaceAlloc alloc;
  WorkspaceFree free;
};
// Installed once, at load, before any launch; atomic so that a late install
// is still well-defined.
std::atomic<Allocator*> g_allocator{nullptr};

}  // namespace

void set_workspace_allocator(WorkspaceAlloc alloc, WorkspaceFree free) {
  static Allocator installed;  // one slot: installs are rare and never concurrent with use
  if (alloc == nullptr || free == nullptr) {
    g_allocator.store(nullptr);
    return;
  }
  installed = {alloc, free};
  g_allocator.store(&installed);
}

}  // namespace cuda
}  // namespace cpg

namespace cpgdev {
inline namespace gpu {

void* device_alloc(size_t bytes, stream_t stream) {
  if (const cpg::cuda::Allocator* a = cpg::cuda::g_allocator.load()) {
    void* p = a->alloc(bytes, stream);
    if (p == nullptr && bytes > 0)
      throw std::runtime_error("cpg_kernels: workspace allocation failed");
    return p;
  }
  void* p = nullptr;
  check(cudaMallocAsync(&p, bytes, stream), "cudaMallocAsync");
  return p;
}

void device_free(void* p, stream_t stream) {
  if (const cpg::cuda::Allocator* a = cpg::cuda::g_allocator.load()) {
    a->free(p);
    return;
  }
  check(cudaFreeAsync(p, stream), "cudaFreeAsync");
}

}  // namespace gpu
}  // namespace cpgdev
