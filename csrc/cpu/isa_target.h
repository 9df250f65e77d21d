// Compiling a region of one translation unit for a wider instruction set.
//
// torch.utils.cpp_extension passes the same flags to every C++ file, so the
// per-ISA kernel units widen their target with a pragma around their own code
// instead of -mavx2 (GCC: `#pragma GCC target`; clang: `#pragma clang
// attribute`). Rules for a unit that does this, so that no code compiled for
// the wider target can run on a CPU without it:
// - include every header (standard, core/, immintrin.h) before the push, and
//   no torch header at all: inline functions instantiated in the region would
//   be emitted for the wider target and could be picked by the linker for
//   callers elsewhere;
// - keep the region's code in a namespace of its own (cpg::cpu::isa_<name>);
// - no namespace-scope object with a dynamic initializer in the region (it
//   would run at load time): tables are constant-initialized;
// - only functions reached through the table that isa.cpp selects after
//   checking the CPU run there.
#pragma once

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define CPG_CPU_X86 1
#else
#define CPG_CPU_X86 0
#endif

#define CPG_PRAGMA(x) _Pragma(#x)

#if defined(__clang__)
#define CPG_TARGET_PUSH(features) \
  CPG_PRAGMA(clang attribute push(__attribute__((target(features))), apply_to = function))
#define CPG_TARGET_POP CPG_PRAGMA(clang attribute pop)
#elif defined(__GNUC__)
#define CPG_TARGET_PUSH(features) CPG_PRAGMA(GCC push_options) CPG_PRAGMA(GCC target(features))
#define CPG_TARGET_POP CPG_PRAGMA(GCC pop_options)
#endif

// The features each unit is built for. Every CPU that ATen runs its AVX2
// kernels on has these (AVX2 + FMA; F16C and POPCNT came earlier); the
// AVX-512 set is the one ATen requires for its AVX512 kernels (F, VL, BW, DQ).
#define CPG_AVX2_FEATURES "avx2,fma,f16c,popcnt"
#define CPG_AVX512_FEATURES "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c,popcnt"
