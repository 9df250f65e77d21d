// Raw-pointer launchers of the CUDA kernels: the only interface between the
// torch-facing glue (csrc/ops) and the kernels. No torch or CUDA headers here.
//
// The declarations are in launchers.inc, included twice: in namespace
// cpg::cuda (built by nvcc, runs on the GPU, pointers are device pointers) and
// in cpg::emu_kernels (the same kernel sources compiled as host C++ with
// CPG_EMU, run by the CPU emulator on host pointers). All arrays are dense
// row-major; `stream` is a cudaStream_t (ignored by the emulator). Every
// launcher checks its launches and throws std::runtime_error on failure.
//
// The plan_* functions return the launches that masked_linear* and
// masked_conv2d* make for a problem on a device of `sm_count`
// multiprocessors, without launching or touching memory (launch_plan.h): they
// run the same dispatch and launch-shape code, assuming 16-byte aligned
// operands (as torch allocates them). A GPU is not needed.
//
// Mask format and active-set rule: csrc/core/mask_format.h.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/conv_shape.h"
#include "core/dtype.h"
#include "cuda/launch_plan.h"

namespace cpg {
namespace cuda {
#include "cuda/launchers.inc"

// Where the launchers' workspaces (split-K partial sums, small-batch
// partials, unfolded windows) come from. By default the device's
// stream-ordered pool (cudaMallocAsync); the ops layer installs torch's
// caching allocator, so that workspaces count in torch.cuda's memory
// statistics and share its cache. alloc(bytes, stream) returns memory usable
// by work queued on that stream; free(p) may run right after that work is
// queued (stream-ordered reuse, as torch's raw_delete). Null restores the
// default.
using WorkspaceAlloc = void* (*)(size_t bytes, void* stream);
using WorkspaceFree = void (*)(void* p);
void set_workspace_allocator(WorkspaceAlloc alloc, WorkspaceFree free);
}  // namespace cuda
namespace emu_kernels {
#include "cuda/launchers.inc"
}  // namespace emu_kernels
}  // namespace cpg

#if defined(CPG_EMU)
#define CPG_KERNEL_NS emu_kernels
#else
#define CPG_KERNEL_NS cuda
#endif
