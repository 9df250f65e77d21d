// Raw-pointer launchers of the CUDA kernels: the only interface between the
// torch-facing glue (csrc/ops) and the kernels. No torch or CUDA headers here.
//
// The same declarations exist twice: in namespace cpg::cuda (built by nvcc, runs
// on the GPU, pointers are device pointers) and in cpg::emu_kernels (the same
// kernel sources compiled as host C++ with CPG_EMU, run by the CPU emulator on
// host pointers). All arrays are dense row-major; `stream` is a cudaStream_t
// (ignored by the emulator). Every launcher checks its launches and throws
// std::runtime_error on failure.
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

#define CPG_DECLARE_LAUNCHERS                                                                      \
  /* bits[N, words] from a bool mask[N, K]; padding bits zero. */                                  \
  void pack_bits(const bool* mask, int32_t* bits, int64_t N, int64_t K, void* stream);             \
  /* bool mask[N, K] from bits[N, words]. */                                                       \
  void unpack_bits(const int32_t* bits, bool* mask, int64_t N, int64_t K, void* stream);           \
  /* Active set of `task` as bits[N, words]. Picks of older tasks' weights come from      */       \
  /* pick_bits, or from mask > threshold, or (both null) every older weight is picked.    */       \
  void active_bits(const uint8_t* owner, int task, const int32_t* pick_bits, const float* mask,    \
                   float threshold, int32_t* bits, int64_t N, int64_t K, void* stream);            \
  /* counts[256] (int64, overwritten) = histogram of owner values. */                              \
  void owner_histogram(const uint8_t* owner, int64_t numel, int64_t* counts, void* stream);        \
  /* row_counts[N] (int64) = set bits per row of bits[N, words]. */                                \
  void count_bits(const int32_t* bits, int64_t N, int64_t words, int64_t* row_counts,              \
                  void* stream);                                                                   \
  /* out[N, K] = w where the bit is set, else 0 (same dtype as w). */                              \
  void apply_bits(cpg::DType dtype, const void* w, const int32_t* bits, void* out, int64_t N,      \
                  int64_t K, void* stream);                                                        \
  /* One pass over G: grad_w = G*[owner==task] (dtype of G), and when grad_m is not     */         \
  /* null, grad_m = G*W*[0<owner<task] in float32 (straight-through).                   */         \
  void grad_epilogue(cpg::DType dtype, const void* G, const void* w, const uint8_t* owner,         \
                     int task, void* grad_w, float* grad_m, int64_t numel, void* stream);          \
  /* y[M, N] = x[M, K] (W.bits)[N, K]^T (+ bias[N]); fp32 accumulation. */                         \
  void masked_linear(cpg::DType dtype, const void* x, const void* w, const int32_t* bits,          \
                     const void* bias, void* y, int64_t M, int64_t N, int64_t K, bool allow_tf32,  \
                     void* stream);                                                                \
  /* dx[M, K] = dy[M, N] (W.bits)[N, K]. */                                                        \
  void masked_linear_grad_input(cpg::DType dtype, const void* dy, const void* w,                   \
                                const int32_t* bits, void* dx, int64_t M, int64_t N, int64_t K,    \
                                bool allow_tf32, void* stream);                                    \
  /* y[T, M, N] = x[T, M, K] (W.bits[t])^T (+ bias); bits is [T, N, words]. */                     \
  void masked_linear_multitask(cpg::DType dtype, const void* x, const void* w,                     \
                               const int32_t* bits, const void* bias, void* y, int64_t T,          \
                               int64_t M, int64_t N, int64_t K, bool allow_tf32, void* stream);    \
  /* y = conv2d(x, W.bits) (+ bias[N]) with W [N, C/groups, kh, kw] dense row-major; x, y  */      \
  /* [batch, C, H, W] and [batch, N, Ho, Wo], both dense NCHW or both dense NHWC          */       \
  /* (channels_last); fp32 accumulation.                                                  */       \
  void masked_conv2d(cpg::DType dtype, const void* x, const void* w, const int32_t* bits,          \
                     const void* bias, void* y, const cpg::ConvShape& shape, bool channels_last,   \
                     bool allow_tf32, void* stream);                                               \
  /* T tasks' convs against one W: x, y hold T * batch images [task][image] and bits is  */        \
  /* [T, N, words]; shape.batch is the images per task. Layouts as above.                 */       \
  void masked_conv2d_multitask(cpg::DType dtype, const void* x, const void* w,                     \
                               const int32_t* bits, const void* bias, void* y, int64_t T,          \
                               const cpg::ConvShape& shape, bool channels_last, bool allow_tf32,   \
                               void* stream);                                                      \
  /* dx = the input gradient of that conv for dy, through the same W.bits; dy, dx in one */        \
  /* layout as above.                                                                     */       \
  void masked_conv2d_grad_input(cpg::DType dtype, const void* dy, const void* w,                   \
                                const int32_t* bits, void* dx, const cpg::ConvShape& shape,        \
                                bool channels_last, bool allow_tf32, void* stream);                \
  /* The launches of masked_linear_multitask (T tasks; masked_linear is T = 1) or, with  */        \
  /* grad_input, of masked_linear_grad_input (T must be 1).                              */        \
  cpg::LaunchPlan plan_masked_linear(cpg::DType dtype, int64_t T, int64_t M, int64_t N, int64_t K, \
                                     bool grad_input, bool allow_tf32, int sm_count);              \
  /* The launches of masked_conv2d_multitask (T tasks; masked_conv2d is T = 1) or, with  */        \
  /* grad_input, of masked_conv2d_grad_input (T must be 1).                              */        \
  cpg::LaunchPlan plan_masked_conv2d(cpg::DType dtype, int64_t T, const cpg::ConvShape& shape,     \
                                     bool channels_last, bool grad_input, bool allow_tf32,         \
                                     int sm_count);

namespace cpg {
namespace cuda {
CPG_DECLARE_LAUNCHERS

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
CPG_DECLARE_LAUNCHERS
}  // namespace emu_kernels
}  // namespace cpg

#if defined(CPG_EMU)
#define CPG_KERNEL_NS emu_kernels
#else
#define CPG_KERNEL_NS cuda
#endif
