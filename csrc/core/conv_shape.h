// Convolution index math shared by every backend.
#pragma once

#include <cstdint>

#include "core/hd.h"

namespace cpg {

CPG_HD int64_t conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil) {
  return (in + 2 * pad - dil * (k - 1) - 1) / stride + 1;
}

// A conv2d problem: input [batch, C, H, W], weight [N, C / groups, kh, kw],
// output [batch, N, Ho, Wo]. The weight's mask bits index its matrix view
// [N, K] with K = C / groups * kh * kw in the weight's memory order.
struct ConvShape {
  int64_t batch, C, H, W;
  int64_t N, kh, kw;
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int64_t groups;

  CPG_HD int64_t Ho() const { return conv_out_size(H, kh, stride_h, pad_h, dil_h); }
  CPG_HD int64_t Wo() const { return conv_out_size(W, kw, stride_w, pad_w, dil_w); }
  CPG_HD int64_t Cg() const { return C / groups; }  // input channels per group
  CPG_HD int64_t Ng() const { return N / groups; }  // output channels per group
  CPG_HD int64_t taps() const { return kh * kw; }   // positions of the kernel window
  CPG_HD int64_t K() const { return Cg() * taps(); }
};

}  // namespace cpg
