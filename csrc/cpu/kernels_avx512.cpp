// The CPU kernels for AVX-512 (F, VL, BW, DQ), compiled under a target pragma
// (see isa_target.h for the rules this unit keeps).
#include "cpu/isa_target.h"
#include "cpu/kernels.h"

#if CPG_CPU_X86
#include <immintrin.h>

#include <cstring>

#include "core/mask_format.h"

CPG_TARGET_PUSH(CPG_AVX512_FEATURES)
namespace cpg::cpu::isa_avx512 {
#include "cpu/simd_avx2.h"
#include "cpu/simd_avx512.h"
using S = Avx512Simd;
#define CPG_ISA_NAME "avx512"
#include "cpu/kernels_impl.h"
#undef CPG_ISA_NAME
}  // namespace cpg::cpu::isa_avx512
CPG_TARGET_POP

const cpg::cpu::Kernels* cpg::cpu::avx512_kernels() { return &isa_avx512::kTable; }
#else
const cpg::cpu::Kernels* cpg::cpu::avx512_kernels() { return nullptr; }
#endif
