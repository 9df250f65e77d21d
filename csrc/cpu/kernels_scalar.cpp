// The CPU kernels for the compiler's baseline target (SSE2 on x86-64): the
// fallback on CPUs without AVX2 and on other architectures.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstring>

#include "core/mask_format.h"
#include "cpu/kernels.h"

namespace cpg::cpu {
namespace isa_scalar {
#include "cpu/simd_scalar.h"
using S = ScalarSimd;
#define CPG_ISA_NAME "scalar"
#include "cpu/kernels_impl.h"
#undef CPG_ISA_NAME
}  // namespace isa_scalar

const Kernels* scalar_kernels() { return &isa_scalar::kTable; }

}  // namespace cpg::cpu
