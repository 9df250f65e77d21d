// 3x3 conv tiles for the tensor-core kernel (gemm_mma.cuh): a stage takes
// every tap of one 16-byte block of channels, so that a W row's share of the
// stage is one contiguous run of the weight and arrives by 16-byte loads.
//
// ConvMmaView (conv_views.cuh) takes one tap per stage. A W row's channels
// under one tap lie `taps` elements apart, so it gathers its W' tile element
// by element behind a bit test: for 3x3, the review of d93db6f counted 2,617
// instructions per warp per stage against 450 in the linear loop. Here stage
// s is the reduction channels [kV * s, + kV) (kV: a 16-byte vector's
// elements) under all kTaps taps. The weight is channel-major and tap-minor
// ([N, C, kh, kw]), so those kV channels x kTaps taps of one W row are kTaps
// consecutive 16-byte vectors. Two threads share a run, half of its channels
// each: a thread loads the 5 vectors that cover its half and the bit words
// that cover them, masks in registers (a select on the raw bits, so NaN or Inf
// behind a clear bit never reaches the sum) and stores its channels tap by
// tap, transposed to tap-major.
//
// The tiles are tap-major: a and forward W as [tap][row][kV], the grad_input
// W as [tap][kV][column] (mma::Layout's [k][n], read transposed, padded to
// spread banks). A tap's kV channels are one 16-byte row, so the 8 rows of an
// ldmatrix (or of a TF32 fragment read) are 128 consecutive bytes: no bank
// conflicts, no padding. One mma k-step covers two taps (32 bytes); the 9th
// tap's k-step is half empty and reads its other half from a 16-byte zero
// vector at the end of each stage buffer (init_stage), so a stage is 5 mma
// k-steps for 4.5 of work (72 reduction elements of 16-bit, 36 of TF32).
//
// Tiles: 128 rows x 128 columns, or 128 x 64 where the view has at most 64
// columns (64-channel layers), whose 4-stage ring (108-113 KB) lets two blocks
// share a multiprocessor; the 128-wide tile's (144-149 KB) holds one. The a
// tiles arrive as in ConvMmaView: NHWC by cp.async (a pixel's 16 bytes of
// channels per tap), NCHW gathered element by element (32 consecutive pixels
// per warp load) and stored after the multiply, as the W runs are.
//
// Applies (masked_conv.cu) to 3x3 kernels whose view walks all 9 taps (the
// forward, and the input gradient where one stride phase holds every tap)
// with input channels in whole 16-byte vectors and 16-byte aligned W rows.
// The reduction order differs from ConvMmaView's (channel blocks of kV, all
// taps inside, instead of taps outside blocks of 64 / 32 channels), so the
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

// Shared memory of one multiprocessor on sm_90, and what the runtime keeps
// of it per block.
constexpr int kSmBytes = 228 * 1024;
constexpr int kBlockReservedBytes = 1024;

template <typename T, bool kGradInput, int kTaps, int kTileNV>
struct WindowLayout {
  static_assert(kTileNV == 64 || kTileNV == 128, "a 64- or 128-wide column tile");
  using Elem = T;
  static constexpr int kV = vec_elems<T>();
  static constexpr int kTileM = mma::kTileM, kTileN = kTileNV;
  static constexpr int kWarpsN = kTileN == 128 ? 4 : 2;
  static constexpr int kWarpsM = mma::kThreads / kWarpSize / kWarpsN;
  static constexpr int kFragsM = kTileM / 16 / kWarpsM;  // 4 (128 x 128) or 2 (128 x 64)
  static constexpr int kFragsN = kTileN / 8 / kWarpsN;   // 4
  static constexpr int kTapChannels = kV;
  static constexpr int kTileK = kTaps * kV;
  static constexpr int kStepK = sizeof(T) == 2 ? 16 : 8;  // k of one mma: two taps
  static constexpr int kSteps = (kTileK + kStepK - 1) / kStepK;
  static constexpr int kStages = 4;
  static constexpr bool kTapWindow = true;
  static constexpr bool kATransposed = false;
  static constexpr int kNStride = kTileN + 8;  // as mma::Layout's grad_input W
  static constexpr int kATile = kTileM * kTileK;
  static constexpr int kWTile = kGradInput ? kTileK * kNStride : kTileN * kTileK;
  static constexpr int kZero = kATile + kWTile;  // the zero vector, from the stage's start
  static constexpr int kStageElems = kZero + kV;
  static constexpr int kSmemBytes = kStages * kStageElems * static_cast<int>(sizeof(T));
  static constexpr int kMinBlocks = 2 * (kSmemBytes + kBlockReservedBytes) <= kSmBytes ? 2 : 1;
  static_assert(kSmemBytes <= 227 * 1024, "a block's shared memory on sm_90");
  static_assert(kSteps * kStepK - kTileK <= kV, "past the taps, one zero vector per row");
  static_assert(kATile * sizeof(T) % kVecBytes == 0 && kWTile * sizeof(T) % kVecBytes == 0,
                "tiles stay 16-byte aligned");

  CPG_HD static constexpr int tap_major(int rows, int row, int k) {
    return (k / kV * rows + row) * kV + k % kV;
  }
  // Past the taps (the last k-step's upper half): the zero vector.
  CPG_HD static constexpr int a_offset(int row, int k) {
    return k < kTileK ? tap_major(kTileM, row, k) : kZero + k % kV;
  }
  CPG_HD static constexpr int w_offset(int n, int k) {
    return k < kTileK ? tap_major(kTileN, n, k) : kZero - kATile + k % kV;
  }
  CPG_HD static constexpr int wt_offset(int k, int n) {
    return k < kTileK ? k * kNStride + n : kZero - kATile + n % kV;
  }
  // The zero vector; nothing else writes it, and the kernel's first barrier
  // comes before any read.
  CPG_DEVICE static void init_stage(T* buf) {
    if (threadIdx.x == 0) cpgdev::store16(buf + kZero, uint4{0u, 0u, 0u, 0u});
  }
};

// The raw bits of one storage element, for the transpose.
template <typename T>
using ElemBits = std::conditional_t<sizeof(T) == 2, uint16_t, uint32_t>;

template <typename View, bool kChannelsContiguous, int kTileNV, int kTaps = 9>
struct ConvWindowView : View {
  using T = typename View::Elem;
  using Layout = WindowLayout<T, View::kGradInput, kTaps, kTileNV>;
  using L = Layout;
  static constexpr int kV = vec_elems<T>();
  static constexpr int kTileM = L::kTileM, kTileN = L::kTileN;
  // A W run (kV channels x kTaps taps of one W row) in halves of kV / 2
  // channels: the vectors that cover a half (starting mid-vector for the
  // second) and the bit words that cover it from its first bit on.
  static constexpr int kRun = kV * kTaps;
  static constexpr int kHalf = kRun / 2;
  static constexpr int kHalfVecs = (kHalf % kV + kHalf + kV - 1) / kV;
  static constexpr int kWords = (kBitsPerWord - 1 + kHalf + kBitsPerWord - 1) / kBitsPerWord;
  static_assert(kV % 2 == 0 && kHalfVecs <= 5 && kWords >= 2 && kWords <= 3,
                "a half run: 5 vectors, 2 or 3 bit words");
  // Threads per stage: a tile row each under half the taps (a), two per W run.
  static constexpr int kATaps = (kTaps + 1) / 2;
  static constexpr int kWThreads = 2 * kTileN;
  static constexpr int kColVecs = kTileN / kV;  // grad_input: the columns' vectors
  static_assert(2 * kTileM == mma::kThreads && kWThreads <= mma::kThreads &&
                    kTileN % kWarpSize == 0,
                "a thread per a row and tap parity; W halves warp-uniform");

  struct BlockRows {
    ImageRow row;
  };
  struct Pending {};
  struct Staged {
    uint4 w[kHalfVecs];                         // the raw half run, from its first vector on
    uint32_t words[kWords];                     // its bit words
    int shift;                                  // the half's first bit in words[0]
    uint4 a[kChannelsContiguous ? 1 : kATaps];  // gathered a (NCHW), one vector per tap
  };

  CPG_HD int64_t stages() const { return ceil_div(this->reduction_channels(), kV); }

  CPG_DEVICE BlockRows block_rows(int64_t m0) const { return {this->a_row(m0 + a_tile_row())}; }

  CPG_DEVICE void issue_stage(int64_t stage, int64_t, int64_t c0, const BlockRows& rows, T* buf,
                              Pending&, Staged& staged) const {
    const int64_t ch0 = stage * kV;
    const int row = a_tile_row(), parity = a_tap_parity();
#pragma unroll
    for (int j = 0; j < kATaps; ++j) {
      const int t = parity + 2 * j;
      if (t >= kTaps) break;
      const T* src = this->a_ptr(rows.row, this->a_col_at(ch0, this->tap_of(t)));
      if constexpr (kChannelsContiguous) {
        cpgdev::cp_async16_zfill(buf + L::a_offset(row, t * kV), src != nullptr ? src : this->image,
                                 src != nullptr);
      } else {
        staged.a[j] = this->gather_channels(src);
      }
    }
    if (w_thread()) load_half(run_of(ch0, c0), w_half(), staged);
  }

  CPG_DEVICE void land_stage(int64_t, int64_t, T*, const Pending&) const {}

  CPG_DEVICE void store_staged(T* buf, const Staged& staged) const {
    if constexpr (!kChannelsContiguous) {
      const int row = a_tile_row(), parity = a_tap_parity();
#pragma unroll
      for (int j = 0; j < kATaps; ++j) {
        const int t = parity + 2 * j;
        if (t >= kTaps) break;
        cpgdev::store16(buf + L::a_offset(row, t * kV), staged.a[j]);
      }
    }
    if (!w_thread()) return;
    // The half is warp-uniform, so the two transposes never diverge in a warp.
    if (w_half() == 0) {
      store_half<0>(buf + L::kATile, staged);
    } else {
      store_half<1>(buf + L::kATile, staged);
    }
  }

 private:
  CPG_DEVICE static int thread() { return static_cast<int>(threadIdx.x); }

  // The a tile row this thread moves, under taps of one parity: a warp takes
  // 32 consecutive pixels' 16 bytes per tap (NHWC), or one channel of 32
  // consecutive pixels per load (NCHW), which coalesces.
  CPG_DEVICE static int a_tile_row() { return thread() % kTileM; }
  CPG_DEVICE static int a_tap_parity() { return thread() / kTileM; }
  CPG_DEVICE static bool w_thread() { return thread() < kWThreads; }
  CPG_DEVICE static int w_half() { return thread() / kTileN; }

  // This thread's W run: W row (output channel) n of the group and its first
  // input channel c, and where its taps go in the tile (forward: W row and
  // channel offset 0; grad_input: reduction channel k and first column).
  struct Run {
    int64_t n, c;
    int tile_row, tile_col;
  };
  CPG_DEVICE static Run run_of(int64_t ch0, int64_t c0) {
    const int r = thread() % kTileN;
    if constexpr (View::kGradInput) {
      const int k = r / kColVecs, col = r % kColVecs * kV;
      return {ch0 + k, c0 + col, k, col};
    } else {
      return {c0 + r, ch0, r, 0};
    }
  }

  CPG_DEVICE void load_half(const Run& r, int half, Staged& staged) const {
    const ConvDims& d = this->d;
    const bool valid = r.n < d.Ng && r.c < d.Cg;
    const int64_t row = this->group * d.Ng + r.n;
    const int64_t e0 = r.c * kTaps + half * kHalf;  // the half's first element
    const T* first_vec = this->w + row * d.K + e0 / kV * kV;
#pragma unroll
    for (int i = 0; i < kHalfVecs; ++i) {
      staged.w[i] = valid ? cpgdev::load16(first_vec + i * kV) : uint4{0u, 0u, 0u, 0u};
    }
    const int32_t* bits_row = this->bits + row * d.words;
    const int64_t first = word_of(e0), last = word_of(e0 + kHalf - 1);
#pragma unroll
    for (int i = 0; i < kWords; ++i) {
      staged.words[i] =
          valid && first + i <= last ? static_cast<uint32_t>(bits_row[first + i]) : 0u;
    }
    staged.shift = static_cast<int>(e0 % kBitsPerWord);
  }

  // W' of the half, tap by tap: its channel j under tap t is its element
  // j * kTaps + t (kOff elements into the first vector); tap t's kV / 2
  // channels are half of one tile row.
  template <int kHalfIndex>
  CPG_DEVICE void store_half(T* w_tile, const Staged& staged) const {
    constexpr int kOff = kHalfIndex * kHalf % kV;
    const int shift = staged.shift;
    uint64_t window = (static_cast<uint64_t>(staged.words[1]) << 32 | staged.words[0]) >> shift;
    if constexpr (kWords > 2) {
      if (shift != 0) window |= static_cast<uint64_t>(staged.words[2]) << (64 - shift);
    }
    using E = ElemBits<T>;
    E elems[kHalfVecs * kV];
    memcpy(elems, staged.w, sizeof(elems));
    const Run r = run_of(0, 0);
#pragma unroll
    for (int t = 0; t < kTaps; ++t) {
      E v[kV / 2];
#pragma unroll
      for (int j = 0; j < kV / 2; ++j) {
        const int i = j * kTaps + t;
        v[j] = (window >> i & 1u) != 0u ? elems[kOff + i] : E{0};
      }
      uint32_t u[kV / 2 * sizeof(T) / 4];
      memcpy(u, v, sizeof(u));
      const int col = kHalfIndex * kV / 2;
      const int offset = View::kGradInput ? L::wt_offset(t * kV + r.tile_row, r.tile_col + col)
                                          : L::w_offset(r.tile_row, t * kV + col);
#pragma unroll
      for (int q = 0; q < static_cast<int>(sizeof(u) / 4); ++q) {
        cpgdev::store4(w_tile + offset + q * 4 / static_cast<int>(sizeof(T)), u[q]);
      }
    }
  }
};

// Whether view v (a ForwardView or GradInputView) can take the tap-window
// tiles: a 3x3 kernel whose taps it walks all, in the weight's order (the
// forward; an input-gradient phase that holds every tap), input channels in
// whole 16-byte vectors (a W run's channels: the forward's reduction, the
// input gradient's columns), and 16-byte aligned W rows.
template <int kTaps = 9, typename View>
bool window_supports(const View& v) {
  const int64_t kV = vec_elems<typename View::Elem>();
  return v.d.taps == kTaps && v.taps() == kTaps && v.d.Cg % kV == 0 && v.w_rows_aligned;
}

// The column tile: 64 wide where the view's columns fit it (64-channel
// layers, whose 128-wide tile would be half padding), else 128.
template <typename View>
bool window_narrow(const View& v) {
  return v.cols() <= 64;
}

}  // namespace conv
}  // namespace CPG_KERNEL_NS
}  // namespace cpg
