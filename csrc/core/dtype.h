// The element types the kernels understand. Launchers take raw pointers plus
// this tag so that the torch-facing glue and the kernels share no headers.
#pragma once

namespace cpg {

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
  }
  return "?";
}

}  // namespace cpg
