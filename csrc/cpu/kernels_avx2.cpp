// The CPU kernels for AVX2 + FMA, compiled under a target pragma (see
// isa_target.h for the rules this unit keeps).
#include "cpu/isa_target.h"
#include "cpu/kernels.h"

#if CPG_CPU_X86
#include <immintrin.h>

#include <cstring>

#include "core/mask_format.h"

CPG_TARGET_PUSH(CPG_AVX2_FEATURES)
namespace cpg::cpu::isa_avx2 {
#include "cpu/simd_avx2.h"
using S = Avx2Simd;
#define CPG_ISA_NAME "avx2"
#include "cpu/kernels_impl.h"
#undef CPG_ISA_NAME
}  // namespace cpg::cpu::isa_avx2
CPG_TARGET_POP

const cpg::cpu::Kernels* cpg::cpu::avx2_kernels() { return &isa_avx2::kTable; }
#else
const cpg::cpu::Kernels* cpg::cpu::avx2_kernels() { return nullptr; }
#endif
