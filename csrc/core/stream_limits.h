// The most activation rows per task that the weight streams take
// (gemm_stream.cuh, gemm_stream_grad.cuh: eight n8 mma tiles), shared with the
// ops layer, which decides by shape alone (traceably) whether a training step
// keeps an fp32 weight for them.
#pragma once

namespace cpg {
constexpr int kStreamMaxRows = 64;
}  // namespace cpg
