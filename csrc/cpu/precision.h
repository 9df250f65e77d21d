// The dtype the chunked path hands to ATen's GEMM and convolution.
//
// On a CPU without native 16-bit dot products (bf16: AVX512_BF16 or AMX-BF16;
// fp16: AVX512_FP16 or AMX-FP16), ATen's bf16/fp16 GEMMs and convolutions
// convert element by element and run several times slower than its fp32 ones.
// There the chunked path decodes its tile straight into fp32, widens the
// activation (exact), calls the fp32 library routine and rounds the result
// once: the same accumulate-in-fp32-and-round that ATen's 16-bit paths do.
#pragma once

#include <c10/core/ScalarType.h>

namespace cpg::cpu {

// kFloat for a 16-bit dtype this CPU has no native dot products for; else t.
c10::ScalarType library_dtype(c10::ScalarType t);

}  // namespace cpg::cpu
