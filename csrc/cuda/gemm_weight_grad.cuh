// The weight and mask gradients of a masked linear layer in one pass: the dW
// GEMM
//   G[N, K] = dy[M, N]^T x[M, K]
// on the tensor-core pipeline of gemm_mma.cuh, with an epilogue that turns
// each fp32 sum into the layer's gradients where it is produced (the rule of
// grad_rule.cuh, the same as the grad_epilogue kernel's):
//   training form (owner):  dW = G*[owner == task] and, when asked,
//                           dm = G*W*[0 < owner < task] (fp32,
//                           straight-through)
//   inference form (bits):  dW = G where the mask bit is set, else 0
// G is rounded to the weight's dtype before the rule, as the two-pass path
// rounds it when aten's mm writes it. G itself never reaches global memory:
// the two-pass path (mm, then grad_epilogue) writes a weight-sized G and reads
// it back; this kernel reads W and the owners and writes dW and dm once.
//
// The reduction runs over the batch rows M, the leading dimension of both
// operands. A stage holds dy rows [r0, r0 + kTileK) of the block's 128 output
// rows as a [k][m] tile (ldmatrix.trans gives the A fragments) and the same x
// rows of its 128 columns as a [k][n] tile (read as the grad_input W tile).
// Nothing is masked on the way in. The epilogue stages the block's fp32 sums
// in the ring's shared memory and applies the rule to runs of 16 columns in
// 16-byte accesses (write_tile_staged). Split-K (gemm_split_k.cuh) applies
// when the output tiles are fewer than the multiprocessors; its ordered
// reduction then applies the rule element by element (store).
//
// Mixed form (WT = float, T 16-bit: an fp32 master weight under autocast): the
// GEMM is T's; W is read as fp32 and rounded to T for the mask gradient, and
// dW is written as fp32. Both hold exactly the values the T form gives for W
// cast to T (dW is G rounded to T or 0, widened), so the gradient reaches the
// fp32 weight without a T-sized dW and the cast's backward.
#pragma once

#include <type_traits>

#include "cuda/gemm_mma.cuh"
#include "cuda/grad_rule.cuh"

namespace cpg {
namespace CPG_KERNEL_NS {
namespace weight_grad {

// One weight-gradient problem: dy [M, N], x [M, K] of T; W and grad_w [N, K]
// of WT; owner [N, K] (training form) or bits [N, words] (inference form,
// owner null); grad_m [N, K] or null.
template <typename T, typename WT = T>
struct WeightGrad {
  static_assert(std::is_same<T, WT>::value || (std::is_same<WT, float>::value && sizeof(T) == 2),
                "W is stored as T, or as fp32 for 16-bit T");
  const T* dy;
  const T* x;
  const WT* w;
  const uint8_t* owner;
  const int32_t* bits;
  int task;
  WT* grad_w;
  float* grad_m;
  int64_t M, N, K, words;
};

// mma::Layout's tile and warps, with both operands stored reduction-major.
template <typename T>
struct Layout {
  using Elem = T;
  static constexpr int kTileM = mma::kTileM, kTileN = mma::kTileN;
  static constexpr int kWarpsN = mma::kWarpsN, kFragsM = mma::kFragsM, kFragsN = mma::kFragsN;
  // Two blocks per SM (at most 128 registers; 2 x 104 KB of ring on sm_90),
  // so that one block's epilogue, a stream of W, owners and gradients,
  // overlaps the other's main loop.
  static constexpr int kMinBlocks = 2;
  static constexpr int kV = vec_elems<T>();
  static constexpr int kTileK = mma::kStageRowBytes / static_cast<int>(sizeof(T));
  static constexpr int kStepK = sizeof(T) == 2 ? 16 : 8;
  static constexpr int kSteps = kTileK / kStepK;
  static constexpr int kStages = 3;
  static constexpr bool kTapWindow = false;
  static constexpr bool kATransposed = true;
  // 8 elements of padding put the 8 rows an ldmatrix (or a TF32 fragment
  // read) addresses in 8 distinct 16-byte bank groups.
  static constexpr int kMStride = kTileM + 8;
  static constexpr int kNStride = kTileN + 8;
  static constexpr int kATile = kTileK * kMStride;
  static constexpr int kWTile = kTileK * kNStride;
  static constexpr int kStageElems = kATile + kWTile;
  static constexpr int kSmemBytes = kStages * kStageElems * static_cast<int>(sizeof(T));
  static_assert(kATile * sizeof(T) % kVecBytes == 0 && kWTile * sizeof(T) % kVecBytes == 0,
                "tiles stay 16-byte aligned");

  CPG_HD static constexpr int at_offset(int k, int row) { return k * kMStride + row; }
  CPG_HD static constexpr int wt_offset(int k, int n) { return k * kNStride + n; }
  CPG_DEVICE static void init_stage(T*) {}
};

// src[r0 .., c0 ..] of a row-major [rows, cols] matrix into a [kTileK][128]
// tile of row stride `stride`, zero-filled outside the matrix.
template <typename T>
CPG_DEVICE void load_tile_async(const T* src, int64_t rows, int64_t cols, int64_t r0, int64_t c0,
                                int stride, T* tile) {
  constexpr int kV = vec_elems<T>();
  constexpr int kChunksPerRow = mma::kTileM * static_cast<int>(sizeof(T)) / kVecBytes;
  static_assert(Layout<T>::kTileK * kChunksPerRow == mma::kChunksPerThread * mma::kThreads,
                "a stage's tiles are kChunksPerThread 16-byte chunks per thread");
#pragma unroll
  for (int c = 0; c < mma::kChunksPerThread; ++c) {
    const int chunk = static_cast<int>(threadIdx.x) + c * mma::kThreads;
    const int row = chunk / kChunksPerRow, col = (chunk % kChunksPerRow) * kV;
    const int64_t r = r0 + row, cc = c0 + col;
    const bool valid = r < rows && cc < cols;
    cpgdev::cp_async16_zfill(tile + row * stride + col, valid ? src + r * cols + cc : src, valid);
  }
}

// The view the mma kernel runs: rows are W's rows (dy's columns), columns
// W's columns (x's), the reduction dy's and x's rows.
template <typename T, typename WT>
struct WeightGradViewOf {
  using Elem = T;
  static constexpr bool kF32Weight = !std::is_same<T, WT>::value;
  using Layout = weight_grad::Layout<T>;
  using L = Layout;
  static constexpr bool kGradInput = true;  // the B tile is [k][n], read transposed
  WeightGrad<T, WT> p;

  struct BlockRows {};
  struct Pending {};
  struct Staged {};
  struct OutRow {
    int64_t offset;  // of element (n, 0)
    int64_t n;
  };

  CPG_DEVICE void select_z(int64_t) {}
  CPG_HD int64_t rows() const { return p.N; }
  CPG_HD int64_t cols() const { return p.K; }
  CPG_HD int64_t reduction() const { return p.M; }
  CPG_HD int64_t stages() const { return ceil_div(p.M, L::kTileK); }
  CPG_DEVICE BlockRows block_rows(int64_t) const { return {}; }

  CPG_DEVICE void issue_stage(int64_t stage, int64_t m0, int64_t c0, const BlockRows&, T* buf,
                              Pending&, Staged&) const {
    const int64_t r0 = stage * L::kTileK;
    load_tile_async(p.dy, p.M, p.N, r0, m0, L::kMStride, buf);
    load_tile_async(p.x, p.M, p.K, r0, c0, L::kNStride, buf + L::kATile);
  }
  CPG_DEVICE void land_stage(int64_t, int64_t, T*, const Pending&) const {}
  CPG_DEVICE void store_staged(T*, const Staged&) const {}

  CPG_DEVICE OutRow out_row(int64_t n) const { return {n * p.K, n}; }
  CPG_DEVICE int64_t out_col(int64_t c) const { return c; }

  // One element (split-K's reduction and row tails store through this).
  CPG_DEVICE void store(const OutRow& row, int64_t c, float acc) const {
    const int64_t i = row.offset + c;
    const T g = cpgdev::from_float<T>(acc);
    if (p.owner != nullptr) {
      const uint8_t owner = p.owner[i];
      p.grad_w[i] = widened<WT>(weight_grad_of(g, owner, p.task));
      if (p.grad_m != nullptr) {
        p.grad_m[i] = mask_grad_of(g, narrowed<T>(p.w[i]), owner, p.task);
      }
    } else {
      p.grad_w[i] =
          widened<WT>(test_bit(p.bits + row.n * p.words, c) ? g : cpgdev::from_float<T>(0.0f));
    }
  }

  // The block's tile, staged: the warps' fp32 sums go to shared memory (the
  // ring, free by now) as a [128][kOutStride] tile; then each thread takes
  // runs of 16 columns of one row, consecutive threads consecutive runs, and
  // moves each stream (owners, W, dW, dm) in 16-byte accesses. The rule costs
  // a few instructions per element this way, against a load and a store of
  // one or two bytes per stream per element straight from the fragments.
  static constexpr bool kStagedEpilogue = true;
  static constexpr int kRun = 16;
  static constexpr int kOutStride = L::kTileN + 4;  // fp32; 16-byte aligned rows
  static_assert(L::kTileM * kOutStride * 4 <= L::kSmemBytes, "the tile fits in the ring");

  CPG_DEVICE void write_tile_staged(T* ring, int64_t m0, int64_t c0, int warp_m, int warp_n,
                                    int lane, const mma::Accumulators<L>& acc) const {
    float* const tile = reinterpret_cast<float*>(ring);
#pragma unroll
    for (int fm = 0; fm < L::kFragsM; ++fm) {
#pragma unroll
      for (int fn = 0; fn < L::kFragsN; ++fn) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = warp_m * L::kFragsM * 16 + fm * 16 + lane / 4 + 8 * (e / 2);
          const int c = warp_n * L::kFragsN * 8 + fn * 8 + 2 * (lane % 4) + e % 2;
          tile[r * kOutStride + c] = acc[fm][fn][e];
        }
      }
    }
    cpgdev::syncthreads();
    constexpr int kRunsPerRow = L::kTileN / kRun;
    constexpr int kRunsPerThread = L::kTileM * kRunsPerRow / mma::kThreads;
#pragma unroll 2
    for (int j = 0; j < kRunsPerThread; ++j) {
      const int run = static_cast<int>(threadIdx.x) + j * mma::kThreads;
      const int r = run / kRunsPerRow, c = (run % kRunsPerRow) * kRun;
      const int64_t n = m0 + r, k = c0 + c;
      if (n < p.N && k < p.K) store_run(tile + r * kOutStride + c, n, k);
    }
  }

  // Elements (n, k .. k + kRun) of the gradients from their fp32 sums.
  CPG_DEVICE void store_run(const float* sums, int64_t n, int64_t k) const {
    const int64_t i = n * p.K + k;
    const bool whole =
        k + kRun <= p.K && is_aligned16(p.grad_w + i) &&
        (p.owner == nullptr || is_aligned16(p.owner + i)) &&
        (p.grad_m == nullptr || (is_aligned16(p.w + i) && is_aligned16(p.grad_m + i)));
    if (!whole) {  // a row's tail, or rows that do not start 16-byte aligned
      const OutRow row = out_row(n);
      for (int j = 0; j < kRun && k + j < p.K; ++j) store(row, k + j, sums[j]);
      return;
    }
    T g[kRun];
    WT gw[kRun];
#pragma unroll
    for (int j = 0; j < kRun; ++j) g[j] = cpgdev::from_float<T>(sums[j]);
    if (p.owner != nullptr) {
      uint8_t owner[kRun];
      load_vec(p.owner + i, owner);
#pragma unroll
      for (int j = 0; j < kRun; ++j) gw[j] = widened<WT>(weight_grad_of(g[j], owner[j], p.task));
      if (p.grad_m != nullptr) {
        WT w[kRun];
        float gm[kRun];
        load_vec(p.w + i, w);
#pragma unroll
        for (int j = 0; j < kRun; ++j) {
          gm[j] = mask_grad_of(g[j], narrowed<T>(w[j]), owner[j], p.task);
        }
        store_vec(p.grad_m + i, gm);
      }
    } else {
      // k is a multiple of 16: the run's bits sit in one word.
      const uint32_t word = static_cast<uint32_t>(p.bits[n * p.words + word_of(k)]);
#pragma unroll
      for (int j = 0; j < kRun; ++j) {
        gw[j] = widened<WT>((word & bit_of(k + j)) != 0u ? g[j] : cpgdev::from_float<T>(0.0f));
      }
    }
    store_vec(p.grad_w + i, gw);
  }
};

// Whether the kernel takes the problem: tensor cores (16-bit, or fp32 as TF32
// where allowed), dy's and x's rows in whole 16-byte vectors and both
// 16-byte aligned (the tiles move as 16-byte copies), a reduction to run.
template <typename T, typename WT>
bool supports(const WeightGrad<T, WT>& g, bool allow_tf32) {
  const int64_t v = vec_elems<T>();
  return tensor_cores_allowed<T>(allow_tf32) && g.M > 0 && g.N % v == 0 && g.K % v == 0 &&
         is_aligned16(g.dy) && is_aligned16(g.x);
}

// The views by name (the kernels' names in plans and the resource table):
// W as T, and the mixed form.
template <typename T>
struct WeightGradView : WeightGradViewOf<T, T> {};
template <typename T>
struct F32WeightGradView : WeightGradViewOf<T, float> {};

template <typename T, typename WT>
auto view(const WeightGrad<T, WT>& g) {
  std::conditional_t<std::is_same<T, WT>::value, WeightGradView<T>, F32WeightGradView<T>> v;
  v.p = g;
  return v;
}

template <typename T, typename WT>
void launch(const WeightGrad<T, WT>& g, cpgdev::stream_t stream) {
  mma::launch_view(view(g), 1, stream);
}

template <typename T, typename WT>
void describe(const WeightGrad<T, WT>& g, int sm_count, LaunchPlan& out) {
  mma::describe_view(view(g), 1, sm_count, out);
}

}  // namespace weight_grad
}  // namespace CPG_KERNEL_NS
}  // namespace cpg
