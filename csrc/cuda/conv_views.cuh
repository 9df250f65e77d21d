// Masked conv2d as an implicit GEMM: views (gemm_common.cuh) through which
// the masked-GEMM kernels compute a convolution, gathering their a operand
// from an image instead of reading a matrix. W' is the weight's [N, K] view
// masked by its bits, exactly as in the linear layer; groups run on gridDim.z
// (one GEMM each, W rows and channels offset by the group).
//
//   forward     rows: output pixels m = (b, oh, ow)     batch * Ho * Wo
//               cols: output channels n of the group     N / groups
//               a[m, (c, tap)] = x[b, c, oh*sh - ph + r*dh, ow*sw - pw + s*dw]
//   grad_input  rows: input pixels m = (b, h, w)         batch * H * W
//               cols: input channels c of the group      C / groups
//               a[m, (n, tap)] = dy[b, n, (h + ph - r*dh) / sh, (w + pw - s*dw) / sw]
//                                zero unless both divisions are exact and land
//                                inside dy
// where tap = r * kw + s walks the kernel window. Activations are addressed
// through element strides, so every view takes NCHW and NHWC alike.
//
// Reduction order. The simt kernel walks a's columns in the weight's memory
// order (channel-major, tap-minor), one element at a time. The mma kernel
// (ConvMmaView) needs 16-byte vectors along the reduction in its tiles, so a
// stage is one tap and Layout::kTileK consecutive channels; an NHWC image then
// gives contiguous vectors, which arrive by cp.async.
#pragma once

#include <cstdint>
#include <cstring>

#include "core/conv_shape.h"
#include "cuda/gemm_common.cuh"
#include "cuda/gemm_mma.cuh"

namespace cpg {
namespace CPG_KERNEL_NS {
namespace conv {

// Element strides of an activation [batch, channels, height, width].
struct ImageStrides {
  int64_t n, c, h, w;
};

// A dense activation: NCHW, or NHWC (channels_last).
inline ImageStrides dense_strides(int64_t C, int64_t H, int64_t W, bool channels_last) {
  if (channels_last) return {H * W * C, 1, W * C, C};
  return {C * H * W, H * W, W, 1};
}

// a / b and a % b for a >= 0, b > 0: in 32 bits whenever the operands fit,
// since 64-bit division is a called subroutine several times slower.
struct DivMod {
  int64_t q, r;
};

CPG_DEVICE DivMod divmod(int64_t a, int64_t b) {
  if (a <= INT32_MAX && b <= INT32_MAX) {
    const int q = static_cast<int>(a) / static_cast<int>(b);
    return {q, a - q * b};
  }
  return {a / b, a % b};
}

// Pixel m of images [batch, height, width] (height * width < 2^31).
struct Pixel {
  int64_t b;
  int y, x;
};

CPG_DEVICE Pixel pixel_of(int64_t m, int height, int width) {
  const DivMod bp = divmod(m, static_cast<int64_t>(height) * width);
  const int p = static_cast<int>(bp.r);
  return {bp.q, p / width, p % width};
}

// A view's ARow: the image offset of pixel m's batch and group, and where its
// window starts (forward: the input position under tap 0; grad_input: the
// padded input position). Rows past the problem start at kOutside, far enough
// from any image that every tap stays outside, so they read zeros.
struct ImageRow {
  int64_t base;
  int y0, x0;
};
constexpr int kOutside = -(1 << 30);

// A view's ACol: a channel's offset and a tap's displacement in the image.
struct ImageCol {
  int64_t offset;
  int dy, dx;
  bool valid;
};

// A kernel tap: its displacement in the image, and its index r * kw + s in a
// weight row's taps.
struct Tap {
  int dy, dx;
  int index;
};

struct OutCol {
  int64_t offset;
  float bias;
};

// The conv dimensions a kernel decodes with, as 32-bit ints where they are
// image or channel sizes.
struct ConvDims {
  int64_t batch;
  int H, W, Ho, Wo;
  int Cg, Ng, kh, kw, taps;
  int stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int64_t K, words;
};

inline ConvDims conv_dims(const ConvShape& s) {
  auto i32 = [](int64_t v) { return static_cast<int>(v); };
  ConvDims d;
  d.batch = s.batch;
  d.H = i32(s.H);
  d.W = i32(s.W);
  d.Ho = i32(s.Ho());
  d.Wo = i32(s.Wo());
  d.Cg = i32(s.Cg());
  d.Ng = i32(s.Ng());
  d.kh = i32(s.kh);
  d.kw = i32(s.kw);
  d.taps = i32(s.taps());
  d.stride_h = i32(s.stride_h);
  d.stride_w = i32(s.stride_w);
  d.pad_h = i32(s.pad_h);
  d.pad_w = i32(s.pad_w);
  d.dil_h = i32(s.dil_h);
  d.dil_w = i32(s.dil_w);
  d.K = s.K();
  d.words = words_per_row(d.K);
  return d;
}

// The input gradient of a strided conv, one stride phase at a time: input
// row h only receives kernel rows r with (h + pad_h - r * dil_h) % stride_h
// == 0, so the pixels whose padded position is q (mod stride) share one set
// of taps, about 1 / stride of them per dimension. A Phase is one such set of
// pixels (h = h0 + i * step, i < count) and its taps (r = r0 + j * step,
// j < count), per dimension; the implicit GEMM of a phase skips the taps that
// would only multiply zeros. full_phase is every pixel and every tap.
struct PhaseDim {
  int pixel0, pixel_step, pixels;
  int tap0, tap_step, taps;
};
struct Phase {
  PhaseDim y, x;
};

inline PhaseDim full_phase_dim(int size, int kernel) { return {0, 1, size, 0, 1, kernel}; }

// Residue q of dimension (size, kernel, stride, pad, dil).
inline PhaseDim stride_phase_dim(int size, int kernel, int stride, int pad, int dil, int q) {
  PhaseDim p;
  p.pixel0 = ((q - pad) % stride + stride) % stride;
  p.pixel_step = stride;
  p.pixels = p.pixel0 < size ? (size - p.pixel0 + stride - 1) / stride : 0;
  // r * dil = q (mod stride) holds for r0, r0 + stride / gcd(stride, dil), ...
  int g = stride, b = dil;
  while (b != 0) {
    const int t = g % b;
    g = b;
    b = t;
  }
  p.tap_step = stride / g;
  p.tap0 = 0;
  while (p.tap0 < kernel && p.tap0 < p.tap_step &&
         (static_cast<int64_t>(p.tap0) * dil) % stride != q) {
    ++p.tap0;
  }
  const bool any = p.tap0 < kernel && (static_cast<int64_t>(p.tap0) * dil) % stride == q;
  p.taps = any ? (kernel - 1 - p.tap0) / p.tap_step + 1 : 0;
  return p;
}

inline Phase full_phase(const ConvDims& d) {
  return {full_phase_dim(d.H, d.kh), full_phase_dim(d.W, d.kw)};
}

// Phase (qy, qx), qy < stride_h and qx < stride_w.
inline Phase stride_phase(const ConvDims& d, int qy, int qx) {
  return {stride_phase_dim(d.H, d.kh, d.stride_h, d.pad_h, d.dil_h, qy),
          stride_phase_dim(d.W, d.kw, d.stride_w, d.pad_w, d.dil_w, qx)};
}

// What both directions share: operands, dimensions, the group, the weights,
// and the view interface's a and W' elements from the direction's a_col_at,
// a_ptr and weight_tap (View: the derived view).
template <typename T, typename View>
struct ConvOperands {
  using ARow = ImageRow;
  using ACol = ImageCol;

  const T* image;       // what a is gathered from: x (forward) or dy (grad_input)
  const T* w;           // [N, K]
  const int32_t* bits;  // [N, words]
  const T* bias;        // forward only; may be null
  T* out;               // y (forward) or dx (grad_input)
  ConvDims d;
  ImageStrides image_strides, out_strides;
  int64_t group;        // the launch's first group until select_z
  bool w_rows_aligned;  // every W row starts 16-byte aligned

  CPG_DEVICE void select_z(int64_t z) { group += z; }

  // Kernel tap (r, s).
  CPG_DEVICE Tap tap_at(int r, int s) const { return {r * d.dil_h, s * d.dil_w, r * d.kw + s}; }

  // Reduction r of a: channel r / taps under the view's tap r % taps (the
  // view walks view().taps() of the kernel's taps: all of them, or a stride
  // phase's).
  CPG_DEVICE ImageCol a_col(int64_t r) const {
    const int taps = view().taps();
    return view().a_col_at(r / taps, view().tap_of(static_cast<int>(r % taps)));
  }
  CPG_DEVICE float a(const ImageRow& row, const ImageCol& col) const {
    const T* p = view().a_ptr(row, col);
    return p != nullptr ? cpgdev::to_float(*p) : 0.0f;
  }

  // W' at reduction r (channel r / taps, the view's tap r % taps) and output
  // column c.
  CPG_DEVICE float weight(int64_t r, int64_t c) const {
    const int taps = view().taps();
    const int64_t ch = r / taps;
    if (ch >= view().reduction_channels() || c >= view().cols()) return 0.0f;
    return view().weight_tap(ch, view().tap_of(static_cast<int>(r % taps)).index, c);
  }

  // W'[n, c, tap t] of the group (n < Ng, c < Cg).
  CPG_DEVICE float weight_at(int64_t n, int64_t c, int t) const {
    return masked_weight(w, bits, d.K, d.words, group * d.Ng + n, c * d.taps + t);
  }

  // vec_elems<T>() channels of the image from src on (zeros for null), as the
  // 16 bytes of a tile chunk: the a gather of the mma views (ConvMmaView,
  // ConvWindowView) where channels are not contiguous.
  CPG_DEVICE uint4 gather_channels(const T* src) const {
    constexpr int kV = vec_elems<T>();
    T v[kV];
#pragma unroll
    for (int j = 0; j < kV; ++j) {
      v[j] = src != nullptr ? src[j * image_strides.c] : cpgdev::from_float<T>(0.0f);
    }
    uint4 u;
    memcpy(&u, v, kVecBytes);
    return u;
  }

  // W'[n, [c, c + kV), tap t] of the group as the 16 bytes of a tile chunk,
  // zeros past Ng and Cg. The channels lie `taps` elements apart in the
  // weight, so they are gathered one by one, each bit word loaded once as the
  // walk enters it; a 1x1 kernel's are contiguous: one 16-byte load.
  CPG_DEVICE uint4 weight_vector(int64_t n, int64_t c, int t) const {
    constexpr int kV = vec_elems<T>();
    T v[kV];
#pragma unroll
    for (int j = 0; j < kV; ++j) v[j] = cpgdev::from_float<T>(0.0f);
    if (n < d.Ng && c < d.Cg) {
      const int64_t row = group * d.Ng + n;
      const T* w_row = w + row * d.K;
      const int32_t* bits_row = bits + row * d.words;
      const int64_t k0 = c * d.taps + t;
      if (d.taps == 1 && w_rows_aligned && c + kV <= d.Cg) {
        return select_by_bits<T>(cpgdev::load16(w_row + k0),
                                 static_cast<uint32_t>(bits_row[word_of(k0)]), k0);
      }
      int64_t word_index = -1;
      uint32_t word = 0;
#pragma unroll
      for (int j = 0; j < kV; ++j) {
        const int64_t k = k0 + j * d.taps;
        if (c + j >= d.Cg) break;
        if (word_of(k) != word_index) {
          word_index = word_of(k);
          word = static_cast<uint32_t>(bits_row[word_index]);
        }
        if ((word & bit_of(k)) != 0u) v[j] = w_row[k];
      }
    }
    uint4 u;
    memcpy(&u, v, kVecBytes);
    return u;
  }

  // W'[n, [c, c + 4 / sizeof(T)), tap t] of the group packed into 32 bits,
  // zeros past Ng and Cg: the span of one lane when a warp reads consecutive
  // channels (ConvMmaView).
  CPG_DEVICE uint32_t weight_span(int64_t n, int64_t c, int t) const {
    constexpr int kE = 4 / static_cast<int>(sizeof(T));
    T v[kE];
#pragma unroll
    for (int e = 0; e < kE; ++e) {
      v[e] = cpgdev::from_float<T>(0.0f);
      if (n < d.Ng && c + e < d.Cg) {
        const int64_t row = group * d.Ng + n, k = (c + e) * d.taps + t;
        if (test_bit(bits + row * d.words, k)) v[e] = w[row * d.K + k];
      }
    }
    uint32_t u;
    memcpy(&u, v, 4);
    return u;
  }

  CPG_DEVICE void store(int64_t row, const OutCol& col, float acc) const {
    out[row + col.offset] = cpgdev::from_float<T>(acc + col.bias);
  }

 private:
  CPG_DEVICE const View& view() const { return static_cast<const View&>(*this); }
};

// y = conv2d(x, W') (+ bias).
template <typename T>
struct ForwardView : ConvOperands<T, ForwardView<T>> {
  using Elem = T;
  static constexpr bool kGradInput = false;

  CPG_HD int64_t rows() const { return this->d.batch * this->d.Ho * this->d.Wo; }
  CPG_HD int64_t cols() const { return this->d.Ng; }
  CPG_HD int64_t reduction() const { return this->d.K; }
  // The channels a's columns walk per tap: the group's input channels.
  CPG_HD int64_t reduction_channels() const { return this->d.Cg; }
  // Every kernel tap, in the weight's order.
  CPG_HD int taps() const { return this->d.taps; }
  CPG_DEVICE Tap tap_of(int t) const { return this->tap_at(t / this->d.kw, t % this->d.kw); }

  CPG_DEVICE ImageRow a_row(int64_t m) const {
    const ConvDims& d = this->d;
    if (m >= rows()) return {0, kOutside, kOutside};
    const Pixel p = pixel_of(m, d.Ho, d.Wo);
    const ImageStrides& s = this->image_strides;
    return {p.b * s.n + this->group * d.Cg * s.c, p.y * d.stride_h - d.pad_h,
            p.x * d.stride_w - d.pad_w};
  }
  // Input channel c of the group under a tap.
  CPG_DEVICE ImageCol a_col_at(int64_t c, Tap tap) const {
    return {c * this->image_strides.c, tap.dy, tap.dx, c < this->d.Cg};
  }
  // Where a[row, col] lives, or null where it reads the zero padding.
  CPG_DEVICE const T* a_ptr(const ImageRow& row, const ImageCol& col) const {
    const int y = row.y0 + col.dy, x = row.x0 + col.dx;
    if (!col.valid || y < 0 || y >= this->d.H || x < 0 || x >= this->d.W) return nullptr;
    const ImageStrides& s = this->image_strides;
    return this->image + row.base + col.offset + y * s.h + x * s.w;
  }

  // W' of input channel ch under kernel tap t (Tap::index), for output
  // channel c (all in range).
  CPG_DEVICE float weight_tap(int64_t ch, int t, int64_t c) const {
    return this->weight_at(c, ch, t);
  }

  CPG_DEVICE int64_t out_row(int64_t m) const {
    const Pixel p = pixel_of(m, this->d.Ho, this->d.Wo);
    const ImageStrides& o = this->out_strides;
    return p.b * o.n + p.y * o.h + p.x * o.w;
  }
  CPG_DEVICE OutCol out_col(int64_t c) const {
    const int64_t n = this->group * this->d.Ng + c;
    const float bias = this->bias != nullptr ? cpgdev::to_float(this->bias[n]) : 0.0f;
    return {n * this->out_strides.c, bias};
  }
};

// dx = conv2d's input gradient for dy through W' (the transposed convolution).
// Its rows are the input pixels of `phase` (full_phase: all of them) and its
// reduction walks that phase's taps only.
template <typename T>
struct GradInputView : ConvOperands<T, GradInputView<T>> {
  using Elem = T;
  static constexpr bool kGradInput = true;
  Phase phase;

  CPG_HD int64_t rows() const { return this->d.batch * phase.y.pixels * phase.x.pixels; }
  CPG_HD int64_t cols() const { return this->d.Cg; }
  CPG_HD int64_t reduction() const { return static_cast<int64_t>(this->d.Ng) * taps(); }
  // The channels a's columns walk per tap: the group's output channels.
  CPG_HD int64_t reduction_channels() const { return this->d.Ng; }
  // The phase's taps, row-major over its kernel rows and columns.
  CPG_HD int taps() const { return phase.y.taps * phase.x.taps; }
  CPG_DEVICE Tap tap_of(int slot) const {
    const int j = slot / phase.x.taps, i = slot % phase.x.taps;
    return this->tap_at(phase.y.tap0 + j * phase.y.tap_step, phase.x.tap0 + i * phase.x.tap_step);
  }

  // Row m's input pixel (m < rows()).
  CPG_DEVICE Pixel input_pixel(int64_t m) const {
    const Pixel p = pixel_of(m, phase.y.pixels, phase.x.pixels);
    return {p.b, phase.y.pixel0 + p.y * phase.y.pixel_step,
            phase.x.pixel0 + p.x * phase.x.pixel_step};
  }

  CPG_DEVICE ImageRow a_row(int64_t m) const {
    const ConvDims& d = this->d;
    if (m >= rows()) return {0, kOutside, kOutside};
    const Pixel p = input_pixel(m);
    const ImageStrides& s = this->image_strides;
    return {p.b * s.n + this->group * d.Ng * s.c, p.y + d.pad_h, p.x + d.pad_w};
  }
  // Output channel n of the group under a tap.
  CPG_DEVICE ImageCol a_col_at(int64_t n, Tap tap) const {
    return {n * this->image_strides.c, tap.dy, tap.dx, n < this->d.Ng};
  }
  // The output pixel (oy, ox) whose window puts the tap displaced by (dy, dx)
  // on the padded input position (py, px); false where there is none (the
  // stride skips it, or it lies past dy).
  CPG_DEVICE bool source_pixel(int py, int px, int dy, int dx, int& oy, int& ox) const {
    const ConvDims& d = this->d;
    const int ty = py - dy, tx = px - dx;
    if (ty < 0 || tx < 0 || ty % d.stride_h != 0 || tx % d.stride_w != 0) return false;
    oy = ty / d.stride_h;
    ox = tx / d.stride_w;
    return oy < d.Ho && ox < d.Wo;
  }
  // Where a[row, col] lives (that source pixel's channel), or null where it
  // reads zero.
  CPG_DEVICE const T* a_ptr(const ImageRow& row, const ImageCol& col) const {
    int oy, ox;
    if (!col.valid || !source_pixel(row.y0, row.x0, col.dy, col.dx, oy, ox)) return nullptr;
    const ImageStrides& s = this->image_strides;
    return this->image + row.base + col.offset + oy * s.h + ox * s.w;
  }

  // W' of output channel ch under kernel tap t (Tap::index), for input
  // channel c (all in range).
  CPG_DEVICE float weight_tap(int64_t ch, int t, int64_t c) const {
    return this->weight_at(ch, c, t);
  }

  CPG_DEVICE int64_t out_row(int64_t m) const {
    const Pixel p = input_pixel(m);
    const ImageStrides& o = this->out_strides;
    return p.b * o.n + p.y * o.h + p.x * o.w;
  }
  CPG_DEVICE OutCol out_col(int64_t c) const {
    return {(this->group * this->d.Cg + c) * this->out_strides.c, 0.0f};
  }
};

// A conv view with the stage loads of the mma kernel (gemm_mma.cuh). Stage s
// is the view's tap s % taps and channels [kTileK * (s / taps), + kTileK) of the
// reduction's channels; a tile row of a is then one pixel's channels:
//  - kChannelsContiguous (NHWC): 16-byte vectors, copied by cp.async with zero
//    fill where the window leaves the image. A warp copies 4 pixels' 128
//    contiguous bytes, like the linear kernel's rows.
//  - otherwise (NCHW): gathered into registers element by element (channels
//    lie H*W apart), 32 consecutive pixels per warp load so that it
//    coalesces, and stored after the multiply.
// W' is read into registers for every layout and stored after the multiply:
//  - 1x1 kernels: a row's channels are contiguous, so as the linear kernel's
//    16-byte chunks (mma::weight_chunk, the tile's reduction index read as a
//    channel; weight_vector);
//  - larger kernels: a row's channels lie `taps` elements apart. A thread
//    gathering 16-byte chunks would have each warp load touch ~32 cache lines
//    (8 W rows x 4 lanes); instead the 32 lanes of a warp read consecutive
//    channels of one W row, 4 bytes each (weight_span), so a load touches the
//    few lines that 32 channels x taps span, and store 4-byte spans.
// Needs reduction_channels() % vec_elems<T>() == 0 (chunks are all in or all
// out), and for kChannelsContiguous a 16-byte aligned image.
template <typename View, bool kChannelsContiguous>
struct ConvMmaView : View {
  using T = typename View::Elem;
  using Layout = mma::Layout<T, View::kGradInput>;
  using L = Layout;
  static constexpr int kV = vec_elems<T>();
  static constexpr int kChunks = mma::kChunksPerThread;
  static constexpr int kChunksPerRow = mma::kStageRowBytes / kVecBytes;
  static constexpr int kRows = kChannelsContiguous ? kChunks : 1;  // a rows per thread

  struct BlockRows {
    ImageRow row[kRows];
  };
  struct Pending {};
  // The W tile as [output channel][input channel] (forward: [col][reduction],
  // grad_input: [reduction][col]), its rows' stride, and the 4-byte spans per
  // thread that tile it when a warp takes consecutive input channels.
  static constexpr int kWRows = View::kGradInput ? L::kTileK : mma::kTileN;
  static constexpr int kWCols = View::kGradInput ? mma::kTileN : L::kTileK;
  static constexpr int kWStride = View::kGradInput ? L::kNStride : L::kKStride;
  static constexpr int kSpanElems = 4 / static_cast<int>(sizeof(T));
  static constexpr int kWarpCols = kWarpSize * kSpanElems;  // input channels per warp load
  static constexpr int kWarps = mma::kThreads / kWarpSize;
  static constexpr int kSpans = kWRows * (kWCols / kWarpCols) / kWarps;
  static_assert(kWCols % kWarpCols == 0 && kSpans * 4 == kChunks * kVecBytes,
                "the spans hold what the chunks hold");
  struct Staged {
    uint4 a[kChunks];    // gathered layouts only
    uint32_t w[kSpans];  // W' as chunks (1x1 kernels) or spans
  };

  // Tile row and 16-byte column of this thread's a chunk i.
  CPG_DEVICE static int a_chunk_row(int i) {
    const int chunk = static_cast<int>(threadIdx.x) + i * mma::kThreads;
    return kChannelsContiguous ? chunk / kChunksPerRow : chunk % mma::kTileM;
  }
  CPG_DEVICE static int a_chunk_vec(int i) {
    const int chunk = static_cast<int>(threadIdx.x) + i * mma::kThreads;
    return kChannelsContiguous ? chunk % kChunksPerRow : chunk / mma::kTileM;
  }
  CPG_DEVICE static int a_chunk_offset(int i) {
    return a_chunk_row(i) * L::kKStride + a_chunk_vec(i) * kV;
  }

  CPG_HD int64_t stages() const {
    return this->taps() * ceil_div(this->reduction_channels(), L::kTileK);
  }

  CPG_DEVICE BlockRows block_rows(int64_t m0) const {
    BlockRows rows;
#pragma unroll
    for (int i = 0; i < kRows; ++i) rows.row[i] = this->a_row(m0 + a_chunk_row(i));
    return rows;
  }

  CPG_DEVICE void issue_stage(int64_t stage, int64_t, int64_t c0, const BlockRows& rows, T* buf,
                              Pending&, Staged& staged) const {
    const Tap tap = this->tap_of(static_cast<int>(stage % this->taps()));
    const int64_t ch0 = stage / this->taps() * L::kTileK;
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const ImageCol col = this->a_col_at(ch0 + a_chunk_vec(i) * kV, tap);
      const T* src = this->a_ptr(rows.row[kChannelsContiguous ? i : 0], col);
      if constexpr (kChannelsContiguous) {
        cpgdev::cp_async16_zfill(buf + a_chunk_offset(i), src != nullptr ? src : this->image,
                                 src != nullptr);
      } else {
        staged.a[i] = this->gather_channels(src);
      }
    }
    if (this->d.taps == 1) {
#pragma unroll
      for (int i = 0; i < kChunks; ++i) {
        const mma::ChunkPos p = weight_pos(i, ch0, c0);
        const uint4 chunk = this->weight_vector(p.n, p.k, tap.index);
        memcpy(staged.w + i * 4, &chunk, kVecBytes);
      }
      return;
    }
    // Output channels n0.. and input channels c_in0.. of the tile.
    const int64_t n0 = View::kGradInput ? ch0 : c0, c_in0 = View::kGradInput ? c0 : ch0;
#pragma unroll
    for (int i = 0; i < kSpans; ++i) {
      const SpanPos p = span_pos(i);
      staged.w[i] = this->weight_span(n0 + p.row, c_in0 + p.col, tap.index);
    }
  }

  CPG_DEVICE void land_stage(int64_t, int64_t, T*, const Pending&) const {}

  CPG_DEVICE void store_staged(T* buf, const Staged& staged) const {
    if constexpr (!kChannelsContiguous) {
#pragma unroll
      for (int i = 0; i < kChunks; ++i) cpgdev::store16(buf + a_chunk_offset(i), staged.a[i]);
    }
    if (this->d.taps == 1) {
#pragma unroll
      for (int i = 0; i < kChunks; ++i) {
        uint4 chunk;
        memcpy(&chunk, staged.w + i * 4, kVecBytes);
        cpgdev::store16(buf + L::kATile + weight_pos(i, 0, 0).offset, chunk);
      }
      return;
    }
#pragma unroll
    for (int i = 0; i < kSpans; ++i) {
      const SpanPos p = span_pos(i);
      cpgdev::store4(buf + L::kATile + p.row * kWStride + p.col, staged.w[i]);
    }
  }

 private:
  // Span i of this thread in the W tile: warp load u = warp + i * kWarps
  // covers kWarpCols consecutive input channels of one tile row.
  struct SpanPos {
    int row, col;
  };
  CPG_DEVICE static SpanPos span_pos(int i) {
    constexpr int kLoadsPerRow = kWCols / kWarpCols;
    const int u = static_cast<int>(threadIdx.x) / kWarpSize + i * kWarps;
    return {u / kLoadsPerRow, (u % kLoadsPerRow) * kWarpCols + cpgdev::lane_id() * kSpanElems};
  }

  // Chunk i of the W tile: (output channel n, channel k) of the group.
  CPG_DEVICE static mma::ChunkPos weight_pos(int i, int64_t ch0, int64_t c0) {
    return mma::weight_chunk<T, View::kGradInput>(static_cast<int>(threadIdx.x) + i * mma::kThreads,
                                                  ch0, c0);
  }
};

}  // namespace conv
}  // namespace CPG_KERNEL_NS
}  // namespace cpg
