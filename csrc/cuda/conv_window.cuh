// 3x3 conv tiles for the tensor-core kernel (gemm_mma.cuh): a stage takes
// every tap of a few channels, so that a W row's share of the stage is one
// contiguous run of the weight and arrives by 16-byte loads.
//
// ConvMmaView (conv_views.cuh) takes one tap per stage. A W row's channels
// under one tap lie `taps` elements apart, so it gathers its W' tile element
// by element behind a bit test: for 3x3, the review of d93db6f counted 2,617
// instructions per warp per stage against 450 in the linear loop. Here stage
// s is the reduction channels [kTapChannels * s, + kTapChannels) under all
// kTaps taps. The weight is channel-major and tap-minor ([N, C, kh, kw]), so
// kV channels x kTaps taps of one W row are kTaps consecutive 16-byte vectors:
// each thread loads one such run and the bit words that cover it, masks it in
// registers (select_by_bits, exactly as the linear kernel masks its chunks),
// transposes it to tap-major and stores one 16-byte vector per tap.
//
// The tiles are tap-major: a and forward W as [tap][row][kTapChannels], the
// grad_input W as [tap][kTapChannels][column] (mma::Layout's [k][n], read
// transposed). One tap is 32 bytes of channels, one mma k-step (k16 for
// 16-bit, k8 for TF32), so a stage is kTaps k-steps: 144 (16-bit) or 72 (TF32)
// reduction elements, 2.25 times mma::Layout's stage, in a 3-deep ring of
// 221-228 KB. The a tiles arrive as in ConvMmaView: NHWC by cp.async (a
// pixel's 32 bytes of channels per tap), NCHW gathered element by element
// (32 consecutive pixels per warp load) and stored after the multiply.
//
// Applies (masked_conv.cu) to 3x3 kernels whose view walks all 9 taps (the
// forward, and the input gradient at stride 1) with channel counts in whole
// 16-byte vectors and 16-byte aligned W rows. The reduction order differs
// from ConvMmaView's (channel blocks of 16 instead of 64, taps inside), so the
// sums round differently; each path is deterministic on its own, and the
// dispatcher picks one per shape.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda/conv_views.cuh"
#include "cuda/gemm_mma.cuh"

namespace cpg {
namespace CPG_KERNEL_NS {
namespace conv {

template <typename T, bool kGradInput, int kTaps>
struct WindowLayout {
  using Elem = T;
  static constexpr int kV = vec_elems<T>();
  static constexpr int kTapChannels = 2 * kV;  // 32 bytes: one mma k-step
  static constexpr int kStepK = kTapChannels;
  static constexpr int kSteps = kTaps;
  static constexpr int kTileK = kTaps * kTapChannels;
  static constexpr int kStages = 3;
  static constexpr bool kTapWindow = true;
  static constexpr int kNStride = mma::kTileN + 8;  // as mma::Layout's grad_input W
  static constexpr int kATile = mma::kTileM * kTileK;
  static constexpr int kWTile = kGradInput ? kTileK * kNStride : mma::kTileN * kTileK;
  static constexpr int kStageElems = kATile + kWTile;
  static constexpr int kSmemBytes = kStages * kStageElems * static_cast<int>(sizeof(T));
  static_assert(kSmemBytes <= 227 * 1024, "a block's shared memory on sm_80 / sm_90");
  static_assert(kATile * sizeof(T) % kVecBytes == 0 && kWTile * sizeof(T) % kVecBytes == 0,
                "tiles stay 16-byte aligned");

  // A row's 32 bytes of one tap are two 16-byte chunks, swapped on rows 4-7
  // of every 8, so that the 8 rows of an ldmatrix (or of a TF32 fragment
  // read) cover all 32 banks without padding (which would not fit 3 stages).
  CPG_HD static constexpr int tap_major(int rows, int row, int k) {
    const int tap = k / kTapChannels, c = k % kTapChannels;
    return (tap * rows + row) * kTapChannels + ((c / kV) ^ ((row >> 2) & 1)) * kV + c % kV;
  }
  CPG_HD static constexpr int a_offset(int row, int k) { return tap_major(mma::kTileM, row, k); }
  CPG_HD static constexpr int w_offset(int n, int k) { return tap_major(mma::kTileN, n, k); }
  CPG_HD static constexpr int wt_offset(int k, int n) { return k * kNStride + n; }
};

// The raw bits of one storage element, for the transpose.
template <typename T>
using ElemBits = std::conditional_t<sizeof(T) == 2, uint16_t, uint32_t>;

template <typename View, bool kChannelsContiguous, int kTaps = 9>
struct ConvWindowView : View {
  using T = typename View::Elem;
  using Layout = WindowLayout<T, View::kGradInput, kTaps>;
  using L = Layout;
  static constexpr int kV = vec_elems<T>();
  static constexpr int kTapChannels = L::kTapChannels;
  // A thread's run: kV channels x kTaps taps of one W row, from a multiple of
  // kV on, and the bit words it can touch.
  static constexpr int kRun = kV * kTaps;
  static constexpr int kWords = (kBitsPerWord - kV + kRun + kBitsPerWord - 1) / kBitsPerWord;
  // grad_input W: the tile's columns as 16-byte vectors.
  static constexpr int kColVecs = mma::kTileN / kV;
  static_assert(2 * mma::kTileM == mma::kThreads && 2 * mma::kTileN == mma::kThreads &&
                    kTapChannels * kColVecs == mma::kThreads,
                "a thread per a row and half a tap, and per W run");

  struct BlockRows {
    ImageRow row;
  };
  struct Pending {};
  struct Staged {
    uint4 w[kTaps];              // the raw W run, in the weight's order
    uint32_t words[kWords];      // its bit words, from the run's first one on
    int shift;                   // the run's first bit in words[0]
    uint4 a[kChannelsContiguous ? 1 : kTaps];  // gathered a (NCHW), one vector per tap
  };

  CPG_HD int64_t stages() const { return ceil_div(this->reduction_channels(), kTapChannels); }

  CPG_DEVICE BlockRows block_rows(int64_t m0) const { return {this->a_row(m0 + a_tile_row())}; }

  CPG_DEVICE void issue_stage(int64_t stage, int64_t, int64_t c0, const BlockRows& rows, T* buf,
                              Pending&, Staged& staged) const {
    const int64_t ch0 = stage * kTapChannels;
    const int row = a_tile_row(), half = a_half();
#pragma unroll
    for (int t = 0; t < kTaps; ++t) {
      const ImageCol col = this->a_col_at(ch0 + half * kV, this->tap_of(t));
      const T* src = this->a_ptr(rows.row, col);
      if constexpr (kChannelsContiguous) {
        cpgdev::cp_async16_zfill(buf + L::a_offset(row, t * kTapChannels + half * kV),
                                 src != nullptr ? src : this->image, src != nullptr);
      } else {
        staged.a[t] = gather_channels(src);
      }
    }
    load_run(run_of(ch0, c0), staged);
  }

  CPG_DEVICE void land_stage(int64_t, int64_t, T*, const Pending&) const {}

  CPG_DEVICE void store_staged(T* buf, const Staged& staged) const {
    if constexpr (!kChannelsContiguous) {
      const int row = a_tile_row(), half = a_half();
#pragma unroll
      for (int t = 0; t < kTaps; ++t) {
        cpgdev::store16(buf + L::a_offset(row, t * kTapChannels + half * kV), staged.a[t]);
      }
    }
    store_run(buf + L::kATile, staged);
  }

 private:
  CPG_DEVICE static int thread() { return static_cast<int>(threadIdx.x); }

  // The a tile row and half of a tap's channels this thread moves: NHWC, a
  // warp copies 16 pixels' 32 contiguous bytes per tap; NCHW, a warp gathers
  // one channel of 32 consecutive pixels per load, which coalesces.
  CPG_DEVICE static int a_tile_row() {
    return kChannelsContiguous ? thread() / 2 : thread() % mma::kTileM;
  }
  CPG_DEVICE static int a_half() {
    return kChannelsContiguous ? thread() % 2 : thread() / mma::kTileM;
  }

  // This thread's W run: output channel n and first input channel c of the
  // group (forward: tile row tid / 2 and half tid % 2; grad_input: reduction
  // channel tid / kColVecs and column vector tid % kColVecs), and the tile
  // position its tap vectors go to.
  struct Run {
    int64_t n, c;
    int tile_row, tile_col;  // forward: W row and half; grad_input: k and column
  };
  CPG_DEVICE static Run run_of(int64_t ch0, int64_t c0) {
    if constexpr (View::kGradInput) {
      const int k = thread() / kColVecs, col = thread() % kColVecs * kV;
      return {ch0 + k, c0 + col, k, col};
    } else {
      const int n = thread() / 2, half = thread() % 2;
      return {c0 + n, ch0 + half * kV, n, half * kV};
    }
  }

  CPG_DEVICE void load_run(const Run& r, Staged& staged) const {
    const ConvDims& d = this->d;
    const bool valid = r.n < d.Ng && r.c < d.Cg;
    const int64_t row = this->group * d.Ng + r.n;
    const int64_t k0 = r.c * kTaps;
    const T* run = this->w + row * d.K + k0;
#pragma unroll
    for (int i = 0; i < kTaps; ++i) {
      staged.w[i] = valid ? cpgdev::load16(run + i * kV) : uint4{0u, 0u, 0u, 0u};
    }
    const int32_t* bits_row = this->bits + row * d.words;
    const int64_t first = word_of(k0), last = word_of(k0 + kRun - 1);
#pragma unroll
    for (int i = 0; i < kWords; ++i) {
      staged.words[i] =
          valid && first + i <= last ? static_cast<uint32_t>(bits_row[first + i]) : 0u;
    }
    staged.shift = static_cast<int>(k0 % kBitsPerWord);
  }

  // W' of the run, tap by tap: element (channel j, tap t) of the run is its
  // element j * kTaps + t; tap t's kV channels are one tile vector.
  CPG_DEVICE void store_run(T* w_tile, const Staged& staged) const {
    uint32_t window[kWords];  // the run's bits from bit 0 on
#pragma unroll
    for (int i = 0; i < kWords; ++i) {
      const uint64_t hi = i + 1 < kWords ? staged.words[i + 1] : 0u;
      window[i] = static_cast<uint32_t>((hi << 32 | staged.words[i]) >> staged.shift);
    }
    uint4 masked[kTaps];
#pragma unroll
    for (int q = 0; q < kTaps; ++q) {
      masked[q] = select_by_bits<T>(staged.w[q], window[q * kV / kBitsPerWord], q * kV);
    }
    using E = ElemBits<T>;
    E elems[kRun];
    memcpy(elems, masked, sizeof(elems));
    const Run r = run_of(0, 0);
#pragma unroll
    for (int t = 0; t < kTaps; ++t) {
      E v[kV];
#pragma unroll
      for (int j = 0; j < kV; ++j) v[j] = elems[j * kTaps + t];
      uint4 u;
      memcpy(&u, v, kVecBytes);
      const int offset = View::kGradInput
                             ? L::wt_offset(t * kTapChannels + r.tile_row, r.tile_col)
                             : L::w_offset(r.tile_row, t * kTapChannels + r.tile_col);
      cpgdev::store16(w_tile + offset, u);
    }
  }

  // kV channels from src on (zeros for null), as a tile vector.
  CPG_DEVICE uint4 gather_channels(const T* src) const {
    T v[kV];
#pragma unroll
    for (int j = 0; j < kV; ++j) {
      v[j] = src != nullptr ? src[j * this->image_strides.c] : cpgdev::from_float<T>(0.0f);
    }
    uint4 u;
    memcpy(&u, v, kVecBytes);
    return u;
  }
};

// Whether view v (a ForwardView or GradInputView) can take the tap-window
// tiles: a 3x3 kernel whose taps it walks all, in the weight's order (the
// forward; the input gradient's full phase), input channels in whole 16-byte
// vectors (a W run's length; the forward's reduction, the input gradient's
// columns), and 16-byte aligned W rows.
template <int kTaps = 9, typename View>
bool window_supports(const View& v) {
  const int64_t kV = vec_elems<typename View::Elem>();
  return v.d.taps == kTaps && v.taps() == kTaps && v.d.Cg % kV == 0 && v.w_rows_aligned;
}

}  // namespace conv
}  // namespace CPG_KERNEL_NS
}  // namespace cpg
