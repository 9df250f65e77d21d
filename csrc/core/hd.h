// Qualifier for small helpers that must compile for host and device alike.
#pragma once

#if defined(__CUDACC__)
#define CPG_HD __host__ __device__ __forceinline__
#else
#define CPG_HD inline
#endif
