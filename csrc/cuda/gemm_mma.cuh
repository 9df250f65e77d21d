// The masked GEMM on tensor cores: f16 / bf16 operands on mma.m16n8k16, fp32
// operands rounded to TF32 on mma.m16n8k8 (only where TF32 is allowed), fp32
// accumulation.
//
// A block computes a 128 x 128 output tile with 8 warps (2 x 4), each warp
// 64 x 32 as 4 x 4 mma tiles. The reduction advances 128 bytes of operand per
// stage (64 halves or 32 floats) through a 3-stage cp.async pipeline that
// brings both the a tile and the raw W tile. When a stage has landed, each
// thread masks the W chunks it copied, in place in shared memory, with bit
// words it loaded when it issued the copy; one barrier later the warps read
// fragments of W' (by ldmatrix for 16-bit operands, by 32-bit shared loads for
// TF32). W' exists only tile by tile on chip.
//
// The pipeline and the fragment code are generic over a view (gemm_common.cuh)
// that also says how a stage's tiles are loaded (see "Stage loads" below):
// LinearView here, the implicit-GEMM conv views in conv_views.cuh. The linear
// tiles move in whole 16-byte vectors, hence supports(): the reduction and W
// rows hold whole vectors and a and w are 16-byte aligned.
//
// Where the tiles are fewer than the multiprocessors, the launcher splits each
// tile's stages across blocks (gemm_split_k.cuh says why and how).
#pragma once

#include <type_traits>

#include "cuda/gemm_common.cuh"
#include "cuda/gemm_split_k.cuh"

namespace cpg {
namespace CPG_KERNEL_NS {
namespace mma {

constexpr int kThreads = 256;
constexpr int kTileM = 128;
constexpr int kTileN = 128;
constexpr int kWarpsN = 4;
constexpr int kFragsM = 4;           // m16 tiles per warp: 64 rows
constexpr int kFragsN = 4;           // n8 tiles per warp: 32 columns
constexpr int kStageRowBytes = 128;  // operand bytes per tile row per stage
constexpr int kChunksPerThread = 4;  // 16-byte chunks per operand tile per thread

static_assert(kTileM * kStageRowBytes / kVecBytes == kChunksPerThread * kThreads &&
                  kTileN * kStageRowBytes / kVecBytes == kChunksPerThread * kThreads,
              "a and W tiles are kChunksPerThread 16-byte chunks per thread");

// Shared layout of one stage. Tiles are padded so that the 8 rows of an
// ldmatrix (or of a TF32 fragment read) start in 8 distinct 16-byte bank
// groups: a and forward W tiles are [rows][kTileK] with 144-byte rows; the
// grad_input W tile is [kTileK][kTileN] (reduction-major, read transposed)
// with 272- or 544-byte rows.
//
// A layout is what the kernel asks of a view's stage (View::Layout): the
// block's tile (kTileM x kTileN, its warps kWarpsN across, each kFragsM x
// kFragsN mma tiles) and the blocks an SM should hold (kMinBlocks, for
// __launch_bounds__), the reduction per stage (kTileK, in kSteps mma k-steps
// of kStepK), the ring's depth (kStages), the tiles' sizes, where element
// (row, k) of the a tile, (n, k) of a forward W tile and (k, n) of a
// grad_input W tile live (element offsets; a 16-byte chunk's elements are
// consecutive), and init_stage(buf): what a stage buffer needs once before
// the first barrier.
template <typename T, bool kGradInput>
struct Layout {
  using Elem = T;
  static constexpr int kTileM = mma::kTileM, kTileN = mma::kTileN;
  static constexpr int kWarpsN = mma::kWarpsN, kFragsM = mma::kFragsM, kFragsN = mma::kFragsN;
  static constexpr int kMinBlocks = 1;
  static constexpr int kV = vec_elems<T>();
  static constexpr int kTileK = kStageRowBytes / static_cast<int>(sizeof(T));
  static constexpr int kStepK = sizeof(T) == 2 ? 16 : 8;  // k of one mma
  static constexpr int kSteps = kTileK / kStepK;
  static constexpr int kStages = 3;
  static constexpr bool kTapWindow = false;    // conv_window.cuh's layout says true
  static constexpr bool kATransposed = false;  // gemm_weight_grad.cuh's says true
  static constexpr int kKStride = kTileK + kV;
  static constexpr int kNStride = kTileN + 8;
  static constexpr int kATile = kTileM * kKStride;
  static constexpr int kWTile = kGradInput ? kTileK * kNStride : kTileN * kKStride;
  static constexpr int kStageElems = kATile + kWTile;
  static constexpr int kSmemBytes = kStages * kStageElems * static_cast<int>(sizeof(T));
  static_assert(kATile * sizeof(T) % kVecBytes == 0 && kWTile * sizeof(T) % kVecBytes == 0,
                "tiles stay 16-byte aligned");

  CPG_HD static constexpr int a_offset(int row, int k) { return row * kKStride + k; }
  CPG_HD static constexpr int w_offset(int n, int k) { return n * kKStride + k; }
  CPG_HD static constexpr int wt_offset(int k, int n) { return k * kNStride + n; }
  CPG_DEVICE static void init_stage(T*) {}
};

// a[m0 .. m0+128, r0 .. r0+kTileK) into the tile, zero-filled outside [M, R).
template <typename T, bool kGradInput>
CPG_DEVICE void load_a_async(const MaskedGemm<T>& g, int64_t R, int64_t m0, int64_t r0, T* tile) {
  using L = Layout<T, kGradInput>;
  constexpr int kChunksPerRow = kStageRowBytes / kVecBytes;
#pragma unroll
  for (int c = 0; c < kChunksPerThread; ++c) {
    const int chunk = static_cast<int>(threadIdx.x) + c * kThreads;
    const int row = chunk / kChunksPerRow, col = (chunk % kChunksPerRow) * L::kV;
    const int64_t m = m0 + row, r = r0 + col;
    const bool valid = m < g.M && r < R;
    cpgdev::cp_async16_zfill(tile + row * L::kKStride + col, valid ? g.a + m * R + r : g.a, valid);
  }
}

// Where a 16-byte chunk of the W tile comes from (W row n, columns k..) and
// goes to (tile offset).
struct ChunkPos {
  int64_t n;
  int64_t k;
  int offset;
};

// `red0` is the stage's first reduction index, `col0` the block's first output
// column: forward, W rows are output columns; grad_input, W rows are the
// reduction.
template <typename T, bool kGradInput>
CPG_DEVICE ChunkPos weight_chunk(int chunk, int64_t red0, int64_t col0) {
  using L = Layout<T, kGradInput>;
  if (kGradInput) {
    constexpr int kChunksPerRow = kTileN * static_cast<int>(sizeof(T)) / kVecBytes;
    const int row = chunk / kChunksPerRow, col = (chunk % kChunksPerRow) * L::kV;
    return ChunkPos{red0 + row, col0 + col, row * L::kNStride + col};
  }
  constexpr int kChunksPerRow = kStageRowBytes / kVecBytes;
  const int row = chunk / kChunksPerRow, col = (chunk % kChunksPerRow) * L::kV;
  return ChunkPos{col0 + row, red0 + col, row * L::kKStride + col};
}

// W[n, k ..] of this thread's chunks, raw, into the tile (zeros outside
// [N, K]); returns their bit words for mask_weights.
template <typename T, bool kGradInput>
CPG_DEVICE void load_w_async(const MaskedGemm<T>& g, int64_t red0, int64_t col0, T* tile,
                             uint32_t (&words)[kChunksPerThread]) {
#pragma unroll
  for (int c = 0; c < kChunksPerThread; ++c) {
    const ChunkPos p =
        weight_chunk<T, kGradInput>(static_cast<int>(threadIdx.x) + c * kThreads, red0, col0);
    const bool valid = p.n < g.N && p.k < g.K;
    cpgdev::cp_async16_zfill(tile + p.offset, valid ? g.w + p.n * g.K + p.k : g.w, valid);
    words[c] = valid ? static_cast<uint32_t>(g.bits[p.n * g.words + word_of(p.k)]) : 0u;
  }
}

// Turns this thread's landed chunks of W into W' in place.
template <typename T, bool kGradInput>
CPG_DEVICE void mask_weights(T* tile, const uint32_t (&words)[kChunksPerThread], int64_t red0,
                             int64_t col0) {
#pragma unroll
  for (int c = 0; c < kChunksPerThread; ++c) {
    const ChunkPos p =
        weight_chunk<T, kGradInput>(static_cast<int>(threadIdx.x) + c * kThreads, red0, col0);
    cpgdev::store16(tile + p.offset,
                    select_by_bits<T>(cpgdev::load16(tile + p.offset), words[c], p.k));
  }
}

// The m16 x k A fragment at tile rows row0.., columns k0.. (PTX ISA layouts).
// A layout with kATransposed holds the a tile reduction-major, [k][row] at
// at_offset(k, row), and reads it transposed.
template <typename L, typename T>
CPG_DEVICE void load_a_frag(const T* tile, int row0, int k0, int lane, uint32_t (&a)[4]) {
  if constexpr (L::kATransposed && sizeof(T) == 2) {
    // Lanes 8j .. 8j + 7 address matrix j's 8 k rows: j = 0..3 are rows
    // 0-7 / 8-15 at k0, then the same at k0 + 8.
    cpgdev::ldmatrix_x4_trans(
        a, tile + L::at_offset(k0 + lane % 8 + (lane / 16) * 8, row0 + (lane / 8 % 2) * 8));
  } else if constexpr (L::kATransposed) {
    const int row = row0 + lane / 4, k = k0 + lane % 4;
    a[0] = cpgdev::to_tf32(tile[L::at_offset(k, row)]);
    a[1] = cpgdev::to_tf32(tile[L::at_offset(k, row + 8)]);
    a[2] = cpgdev::to_tf32(tile[L::at_offset(k + 4, row)]);
    a[3] = cpgdev::to_tf32(tile[L::at_offset(k + 4, row + 8)]);
  } else if constexpr (sizeof(T) == 2) {
    // Lanes 0-15 address rows 0-15 at k0, lanes 16-31 the same rows at k0 + 8.
    cpgdev::ldmatrix_x4(a, tile + L::a_offset(row0 + lane % 16, k0 + (lane / 16) * 8));
  } else {
    const int row = row0 + lane / 4, k = k0 + lane % 4;
    a[0] = cpgdev::to_tf32(tile[L::a_offset(row, k)]);
    a[1] = cpgdev::to_tf32(tile[L::a_offset(row + 8, k)]);
    a[2] = cpgdev::to_tf32(tile[L::a_offset(row, k + 4)]);
    a[3] = cpgdev::to_tf32(tile[L::a_offset(row + 8, k + 4)]);
  }
}

// The k x n8 B fragments of the warp's kFragsN column tiles, from column n0
// and reduction k0: forward tiles hold W' as [n][k] rows, grad_input tiles as
// [k][n] rows.
template <typename L, bool kGradInput, typename T>
CPG_DEVICE void load_b_frags(const T* tile, int n0, int k0, int lane,
                             uint32_t (&b)[L::kFragsN][2]) {
#pragma unroll
  for (int fn = 0; fn < L::kFragsN; fn += 2) {
    const int n = n0 + fn * 8;
    if constexpr (sizeof(T) == 2) {
      // One x4 serves two n8 tiles: lanes 0-15 address tile fn, lanes 16-31
      // tile fn + 1, each as k rows 0-7 then 8-15 (read transposed: [k][n]).
      uint32_t r[4];
      if constexpr (kGradInput) {
        cpgdev::ldmatrix_x4_trans(r, tile + L::wt_offset(k0 + lane % 16, n + (lane / 16) * 8));
      } else {
        cpgdev::ldmatrix_x4(
            r, tile + L::w_offset(n + (lane / 16) * 8 + lane % 8, k0 + (lane / 8 % 2) * 8));
      }
      b[fn][0] = r[0];
      b[fn][1] = r[1];
      b[fn + 1][0] = r[2];
      b[fn + 1][1] = r[3];
    } else {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int col = n + h * 8 + lane / 4, k = k0 + lane % 4;
        if constexpr (kGradInput) {
          b[fn + h][0] = cpgdev::to_tf32(tile[L::wt_offset(k, col)]);
          b[fn + h][1] = cpgdev::to_tf32(tile[L::wt_offset(k + 4, col)]);
        } else {
          b[fn + h][0] = cpgdev::to_tf32(tile[L::w_offset(col, k)]);
          b[fn + h][1] = cpgdev::to_tf32(tile[L::w_offset(col, k + 4)]);
        }
      }
    }
  }
}

template <typename T>
CPG_DEVICE void mma_step(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  const float c[4] = {acc[0], acc[1], acc[2], acc[3]};
  if constexpr (std::is_same<T, float>::value) {
    cpgdev::mma_tf32_1688(acc, a, b, c);
  } else if constexpr (std::is_same<T, cpgdev::bf16>::value) {
    cpgdev::mma_bf16_16816(acc, a, b, c);
  } else {
    cpgdev::mma_f16_16816(acc, a, b, c);
  }
}

// The A and B fragments of one mma k-step of a warp's tile (Layout L's
// kFragsM x kFragsN mma tiles: 64 x 32 in mma::Layout).
template <typename L>
struct Fragments {
  uint32_t a[L::kFragsM][4];
  uint32_t b[L::kFragsN][2];
};

// A warp's fp32 accumulators.
template <typename L>
using Accumulators = float[L::kFragsM][L::kFragsN][4];

template <typename L, bool kGradInput, typename T>
CPG_DEVICE void load_fragments(const T* a_tile, const T* w_tile, int warp_m, int warp_n, int k0,
                               int lane, Fragments<L>& f) {
#pragma unroll
  for (int fm = 0; fm < L::kFragsM; ++fm) {
    load_a_frag<L>(a_tile, warp_m * L::kFragsM * 16 + fm * 16, k0, lane, f.a[fm]);
  }
  load_b_frags<L, kGradInput>(w_tile, warp_n * L::kFragsN * 8, k0, lane, f.b);
}

template <typename L, typename T>
CPG_DEVICE void mma_fragments(const Fragments<L>& f, Accumulators<L>& acc) {
#pragma unroll
  for (int fm = 0; fm < L::kFragsM; ++fm) {
#pragma unroll
    for (int fn = 0; fn < L::kFragsN; ++fn) mma_step<T>(acc[fm][fn], f.a[fm], f.b[fn]);
  }
}

// The fragments of k-step i + 1 are loaded before the mmas of step i are
// issued, so their shared-memory latency hides behind tensor-core work.
template <typename L, bool kGradInput, typename T>
CPG_DEVICE void multiply_stage(const T* a_tile, const T* w_tile, int warp_m, int warp_n, int lane,
                               Accumulators<L>& acc) {
  Fragments<L> f[2];
  load_fragments<L, kGradInput>(a_tile, w_tile, warp_m, warp_n, 0, lane, f[0]);
#pragma unroll
  for (int i = 0; i < L::kSteps; ++i) {
    if (i + 1 < L::kSteps) {
      load_fragments<L, kGradInput>(a_tile, w_tile, warp_m, warp_n, (i + 1) * L::kStepK, lane,
                                    f[(i + 1) % 2]);
    }
    mma_fragments<L, T>(f[i % 2], acc);
  }
}

// Whether a view writes its tile itself from shared memory
// (write_tile_staged(ring, m0, c0, warp_m, warp_n, lane, acc), the ring free
// to reuse) instead of element by element through store().
template <typename View, typename = void>
struct StagedEpilogue : std::false_type {};
template <typename View>
struct StagedEpilogue<View, std::void_t<decltype(View::kStagedEpilogue)>>
    : std::bool_constant<View::kStagedEpilogue> {};

template <typename View>
constexpr bool staged_epilogue() {
  return StagedEpilogue<View>::value;
}

// Accumulator element e of an m16n8 tile sits at row lane / 4 + 8 * (e / 2),
// column 2 * (lane % 4) + e % 2.
template <typename View>
CPG_DEVICE void write_tile(const View& v, int64_t m0, int64_t c0, int warp_m, int warp_n, int lane,
                           const Accumulators<typename View::Layout>& acc) {
  using L = typename View::Layout;
#pragma unroll
  for (int fm = 0; fm < L::kFragsM; ++fm) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t m = m0 + warp_m * L::kFragsM * 16 + fm * 16 + lane / 4 + 8 * half;
      if (m >= v.rows()) continue;
      const auto row = v.out_row(m);
#pragma unroll
      for (int fn = 0; fn < L::kFragsN; ++fn) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t c = c0 + warp_n * L::kFragsN * 8 + fn * 8 + 2 * (lane % 4) + e;
          if (c < v.cols()) v.store(row, v.out_col(c), acc[fm][fn][2 * half + e]);
        }
      }
    }
  }
}

// ------------------------------------------------------------- stage loads
//
// Besides the view interface of gemm_common.cuh, the pipeline asks a view:
//   Layout                   the shared layout of a stage (see Layout above)
//   stages()                 the reduction stages (of Layout::kTileK each);
//                            host and device (the launcher sizes split-K)
//   block_rows(m0)           what a thread keeps of its a rows for the whole
//                            reduction (a BlockRows; decoded once)
//   Pending, Staged          registers that a stage's loads leave behind:
//                            Pending until the stage has landed (the kernel
//                            keeps kStages - 1 of them), Staged until the
//                            multiply issued after the loads
//   issue_stage(s, m0, c0, rows, buf, pending, staged)
//                            starts stage s's loads into buffer buf: cp.async
//                            copies, or loads into `staged`
//   land_stage(s, c0, buf, pending)
//                            once s's copies have landed, before the barrier
//                            that hands buf to the warps
//   store_staged(buf, staged)
//                            after the multiply: writes `staged` into buf
// Each thread touches only its own chunks in these calls.

// The linear GEMM: a and raw W arrive by cp.async; each thread masks the W
// chunks it copied once they land, with the bit words it loaded at issue.
template <typename T, bool kGradInputV>
struct LinearView : GemmView<T, kGradInputV> {
  using Layout = mma::Layout<T, kGradInputV>;
  using L = Layout;
  struct BlockRows {};
  struct Pending {
    uint32_t words[kChunksPerThread];
  };
  struct Staged {};

  CPG_HD int64_t stages() const { return ceil_div(this->reduction(), L::kTileK); }
  CPG_DEVICE BlockRows block_rows(int64_t) const { return {}; }

  CPG_DEVICE void issue_stage(int64_t stage, int64_t m0, int64_t c0, const BlockRows&, T* buf,
                              Pending& pending, Staged&) const {
    const int64_t red0 = stage * L::kTileK;
    load_a_async<T, kGradInputV>(this->g, this->reduction(), m0, red0, buf);
    load_w_async<T, kGradInputV>(this->g, red0, c0, buf + L::kATile, pending.words);
  }
  CPG_DEVICE void land_stage(int64_t stage, int64_t c0, T* buf, const Pending& pending) const {
    mask_weights<T, kGradInputV>(buf + L::kATile, pending.words, stage * L::kTileK, c0);
  }
  CPG_DEVICE void store_staged(T*, const Staged&) const {}
};

// Starts stage `stage` where it exists, and commits its copies as one group,
// empty or not, so that cp_async_wait<Layout::kStages - 2> always means "stage
// s has landed". Returns whether the stage exists.
template <typename View, typename T>
CPG_DEVICE bool start_stage(const View& v, int64_t stage, int64_t m0, int64_t c0,
                            const typename View::BlockRows& rows, T* buf,
                            typename View::Pending& pending, typename View::Staged& staged) {
  const bool exists = stage < v.stages();
  if (exists) v.issue_stage(stage, m0, c0, rows, buf, pending, staged);
  cpgdev::cp_async_commit();
  return exists;
}

// Grid: (ceil(rows / Layout::kTileM), ceil(cols / Layout::kTileN),
// sub-problems); dynamic shared memory: View::Layout::kSmemBytes.
template <typename View>
CPG_GLOBAL void CPG_LAUNCH_BOUNDS(kThreads, View::Layout::kMinBlocks)
    masked_gemm_mma_kernel(View problem) {
  using T = typename View::Elem;
  using L = typename View::Layout;
  constexpr int kStages = L::kStages;
  CPG_DYNAMIC_SHARED(uint4, smem);
  T* const stages_smem = reinterpret_cast<T*>(&smem[0]);  // [kStages][a tile, W tile]

  View v = problem;
  v.select_z(blockIdx.z);
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * L::kTileM;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * L::kTileN;
  const int lane = cpgdev::lane_id(), warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int warp_m = warp / L::kWarpsN, warp_n = warp % L::kWarpsN;
  const typename View::BlockRows rows = v.block_rows(m0);

  // pending[i]: what stage s + i left behind, issued but not yet landed.
  typename View::Pending pending[kStages - 1] = {};
#pragma unroll
  for (int i = 0; i < kStages; ++i) L::init_stage(stages_smem + i * L::kStageElems);
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    T* const buf = stages_smem + i * L::kStageElems;
    typename View::Staged staged;
    if (start_stage(v, i, m0, c0, rows, buf, pending[i], staged)) v.store_staged(buf, staged);
  }

  Accumulators<L> acc = {};
  const int64_t stages = v.stages();
  int read_buf = 0, refill_buf = kStages - 1;  // s % kStages, (s - 1) % kStages
  for (int64_t s = 0; s < stages; ++s) {
    T* const cur = stages_smem + read_buf * L::kStageElems;
    T* const refill = stages_smem + refill_buf * L::kStageElems;
    cpgdev::cp_async_wait<kStages - 2>();
    v.land_stage(s, c0, cur, pending[0]);
    // Stage s is W' for everyone, and stage s - 1 (the buffer refilled next)
    // is no longer read.
    cpgdev::syncthreads();
#pragma unroll
    for (int i = 0; i < kStages - 2; ++i) pending[i] = pending[i + 1];
    typename View::Staged staged;
    const bool refilled =
        start_stage(v, s + kStages - 1, m0, c0, rows, refill, pending[kStages - 2], staged);
    multiply_stage<L, View::kGradInput>(cur, cur + L::kATile, warp_m, warp_n, lane, acc);
    if (refilled) v.store_staged(refill, staged);
    refill_buf = read_buf;
    read_buf = read_buf + 1 < kStages ? read_buf + 1 : 0;
  }
  if constexpr (staged_epilogue<View>()) {
    // The ring is free once no copy is in flight and every warp is past its
    // last multiply.
    cpgdev::cp_async_wait<0>();
    cpgdev::syncthreads();
    v.write_tile_staged(stages_smem, m0, c0, warp_m, warp_n, lane, acc);
  } else {
    write_tile(v, m0, c0, warp_m, warp_n, lane, acc);
  }
}

template <typename T, bool kGradInput>
bool supports(const MaskedGemm<T>& g) {
  const int64_t v = vec_elems<T>();
  const int64_t reduction = kGradInput ? g.N : g.K;
  return reduction > 0 && reduction % v == 0 && g.K % v == 0 && is_aligned16(g.a) &&
         is_aligned16(g.w);
}

// A split's share of the stages: at least this many of Layout's, to amortize
// the pipeline's fill; for other layouts, as many as hold the same reduction
// bytes per tile row.
constexpr int64_t kMinSplitStages = 8;

template <typename L>
constexpr int64_t min_split_stages() {
  constexpr int64_t kRowBytes = kMinSplitStages * kStageRowBytes;
  constexpr int64_t kStageBytes = L::kTileK * sizeof(typename L::Elem);
  return (kRowBytes + kStageBytes - 1) / kStageBytes;
}

// A launch's shape: (row tiles, column tiles, subproblems * splits) blocks,
// each over stages_per_split of the view's stages (the last split's may be
// fewer), and split-K's workspace and reduction when splits > 1.
struct Plan {
  unsigned row_tiles, col_tiles;
  int64_t subproblems;
  int64_t stages;
  int64_t stages_per_split;
  int smem_bytes;
  split_k::Plan split;
};

// `subproblems` is the grid's z extent (tasks, conv groups).
template <typename View>
Plan plan_view(const View& v, int64_t subproblems, int sm_count) {
  Plan p;
  p.row_tiles = static_cast<unsigned>(ceil_div(v.rows(), View::Layout::kTileM));
  p.col_tiles = static_cast<unsigned>(ceil_div(v.cols(), View::Layout::kTileN));
  p.subproblems = subproblems;
  p.stages = v.stages();
  p.smem_bytes = View::Layout::kSmemBytes;  // > 48 KiB
  const int splits =
      split_k::choose_splits(int64_t{p.row_tiles} * p.col_tiles * subproblems, p.stages,
                             min_split_stages<typename View::Layout>(), subproblems, sm_count);
  p.stages_per_split = ceil_div(p.stages, splits);
  p.split = split_k::plan(v, splits, subproblems, sm_count);
  return p;
}

template <typename View>
void launch_view(const View& v, int64_t subproblems, cpgdev::stream_t stream) {
  const Plan p = plan_view(v, subproblems, cpgdev::sm_count());
  auto run = [&](const auto& view, int64_t z) {
    using V = std::decay_t<decltype(view)>;
    auto* kernel = &masked_gemm_mma_kernel<V>;
    cpgdev::set_max_dynamic_smem(kernel, p.smem_bytes);
    const dim3 grid(p.row_tiles, p.col_tiles, static_cast<unsigned>(z));
    // Launch names of their own, so that the emulator's launch log tells the
    // conv tap-window tiles (conv_window.cuh), wide and narrow, and the weight
    // gradient (gemm_weight_grad.cuh), W as T or fp32, from the others.
    if constexpr (V::Layout::kTapWindow && V::Layout::kTileN == 64) {
      auto* tap_window_n64 = kernel;
      CPG_LAUNCH(tap_window_n64, grid, kThreads, p.smem_bytes, stream, view);
    } else if constexpr (V::Layout::kTapWindow) {
      auto* tap_window = kernel;
      CPG_LAUNCH(tap_window, grid, kThreads, p.smem_bytes, stream, view);
    } else if constexpr (V::Layout::kATransposed) {  // gemm_weight_grad.cuh's views
      if constexpr (V::kF32Weight) {
        auto* f32_weight_grad = kernel;
        CPG_LAUNCH(f32_weight_grad, grid, kThreads, p.smem_bytes, stream, view);
      } else {
        auto* weight_grad = kernel;
        CPG_LAUNCH(weight_grad, grid, kThreads, p.smem_bytes, stream, view);
      }
    } else {
      CPG_LAUNCH(kernel, grid, kThreads, p.smem_bytes, stream, view);
    }
  };
  if (p.split.splits == 1) return run(v, subproblems);
  split_k::StageSplit<View> split_view;
  static_cast<View&>(split_view) = v;
  split_view.stages_per_split = p.stages_per_split;
  split_k::launch(split_view, p.split, subproblems, stream, run);
}

// The launches launch_view(v, subproblems, ...) makes on sm_count
// multiprocessors, appended to `out`.
template <typename View>
void describe_view(const View& v, int64_t subproblems, int sm_count, LaunchPlan& out) {
  using L = typename View::Layout;
  const Plan p = plan_view(v, subproblems, sm_count);
  const bool split = p.split.splits > 1;
  const std::string kernel_view =
      split ? type_name<split_k::StageSplit<View>>() : type_name<View>();
  out.push_back(planned_launch(
      "mma::masked_gemm_mma_kernel<" + kernel_view + ">",
      dim3(p.row_tiles, p.col_tiles, static_cast<unsigned>(subproblems * p.split.splits)), kThreads,
      p.smem_bytes,
      {{"rows", v.rows()},
       {"cols", v.cols()},
       {"tile_m", L::kTileM},
       {"tile_n", L::kTileN},
       {"stage_bytes", L::kTileK * static_cast<int64_t>(sizeof(typename L::Elem))},
       {"k_steps", L::kSteps},
       {"ring", L::kStages},
       {"min_blocks", L::kMinBlocks},
       {"stages", p.stages},
       {"stages_per_split", p.stages_per_split},
       {"splits", p.split.splits}},
      split ? p.split.workspace_bytes : 0));
  if (split) out.push_back(split_k::describe_reduce<View>(p.split));
}

template <typename T, bool kGradInput>
LinearView<T, kGradInput> linear_view(const MaskedGemm<T>& g) {
  LinearView<T, kGradInput> v;
  v.g = g;
  return v;
}

template <typename T, bool kGradInput>
void launch(const MaskedGemm<T>& g, cpgdev::stream_t stream) {
  launch_view(linear_view<T, kGradInput>(g), g.tasks, stream);
}

template <typename T, bool kGradInput>
void describe(const MaskedGemm<T>& g, int sm_count, LaunchPlan& out) {
  describe_view(linear_view<T, kGradInput>(g), g.tasks, sm_count, out);
}

}  // namespace mma
}  // namespace CPG_KERNEL_NS
}  // namespace cpg
