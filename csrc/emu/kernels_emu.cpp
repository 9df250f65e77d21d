// The CUDA kernel sources compiled as host C++ for the CPU emulator: the same
// files nvcc builds, with the portability layer mapped onto csrc/emu/runtime.h.
// Their launchers land in namespace cpg::emu_kernels (see cuda/launchers.h).
#define CPG_EMU 1
#include "cuda/elementwise.cu"
#include "cuda/masked_conv.cu"
#include "cuda/masked_gemm.cu"
