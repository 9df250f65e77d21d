#include "cpu/precision.h"

#include "cpu/isa_target.h"

#if CPG_CPU_X86
#include <cpuid.h>
#endif

namespace cpg::cpu {

namespace {

struct Native16 {
  bool bf16 = true, fp16 = true;  // elsewhere than x86: leave ATen its own choice
};

Native16 detect() {
  Native16 n;
#if CPG_CPU_X86
  unsigned a = 0, b = 0, c = 0, d = 0, a1 = 0, b1 = 0, c1 = 0, d1 = 0;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    const unsigned max_sub = a;
    if (max_sub >= 1) __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1);
    const bool amx_bf16 = (d >> 22) & 1u, avx512_fp16 = (d >> 23) & 1u;
    const bool avx512_bf16 = (a1 >> 5) & 1u, amx_fp16 = (a1 >> 21) & 1u;
    n.bf16 = avx512_bf16 || amx_bf16;
    n.fp16 = avx512_fp16 || amx_fp16;
  } else {
    n.bf16 = n.fp16 = false;
  }
#endif
  return n;
}

}  // namespace

c10::ScalarType library_dtype(c10::ScalarType t) {
  static const Native16 native = detect();
  if (t == c10::kBFloat16 && !native.bf16) return c10::kFloat;
  if (t == c10::kHalf && !native.fp16) return c10::kFloat;
  return t;
}

}  // namespace cpg::cpu
