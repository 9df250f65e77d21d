// The input gradient at small batch on tensor cores: dx[M, K] = dy[M, N] W'
// for up to 64 rows of dy (f16 / bf16 as they are, fp32 rounded to TF32
// where allowed), bound by reading W once. The weight stream of
// gemm_stream.cuh turned around: the same per-warp cp.async pipeline, W
// masked in registers and the mma's A operand, a persistent grid, but the
// sum now runs over N (W's rows) instead of K.
//
// Work: dx's columns (W's) are cut into strips of 128 bytes of each W row (64
// columns of a 16-bit W, 32 of fp32), W's rows into chunks of 32. A block
// takes the strips blockIdx.x, blockIdx.x + gridDim.x, ... for one split of
// N (blockIdx.y); its 4 warps share each strip's rows, warp w taking the
// chunks w, w + 4, ... of the split. The grid is one wave (one or two blocks
// per multiprocessor): a persistent grid.
//
// The split: N is the reduction, so N is what is split. Within a block the
// warps' sums meet in shared memory at a strip's end and warp 0 adds them in
// warp order; across blocks (gridDim.y), each split writes fp32 partial sums
// [splits][M][K] that sum_splits_kernel adds in split order. Deterministic:
// no atomics, one order for every sum. The planner splits N only as far as
// the strips alone cannot fill the device, pricing the partials' bytes.
//
// Pipeline: as the forward's: each warp streams its chunks, strip after
// strip, 4 stages deep (3 in the mixed form). Each lane copies 8 pieces of
// 16 bytes of W (evict-first: W is read once) and later reads back exactly
// those; the warp copies the chunk's bit words and the dy values of its 32
// rows beside them (dy is small and stays in L2, so it rides in the ring and
// a split may be any length). A chunk is used after the lane's cp.async wait
// and a warp barrier; no block barrier lies between landing and use.
//
// Fragments: A = W'^T, so m is a W column and k a W row, and a 32-bit A
// register of a 16-bit type holds two W rows at one column. Lane (g, t)
// (g = lane / 4, t = lane % 4) copies rows 8t .. 8t + 7 of the chunk at
// columns g kV .. g kV + kV - 1 of the strip (kV elements: 16 bytes of T).
// Under a fixed permutation of the reduction index (lane t's k indices are
// its own rows) and of the strip's columns (m = g is column g kV + 2i of
// m-tile i, m = g + 8 the one after it) each of its A registers is one byte
// permute of two masked row pieces (16-bit) or one masked element as it is
// (fp32). dy is read as B under the same row permutation: 16 (fp32: 32) bytes
// of dy row g at the chunk's row 8t. The lane's sums then hold kV consecutive columns of
// dy rows 2t and 2t + 1, written as whole vectors.
//
// Mixed form (WT = float, T 16-bit: the fp32 master weight of a training step
// under autocast): the strip keeps its 64 columns, so W streams as 256 bytes
// of each row; a lane's piece is two 16-byte fp32 copies, rounded to T in
// registers as a cast rounds (weight_stream::rounded_piece) before the mask.
// The operands are those of W cast to T, without the cast's copy.
#pragma once

#include <type_traits>

#include "cuda/gemm_common.cuh"
#include "cuda/gemm_stream.cuh"

namespace cpg {
namespace CPG_KERNEL_NS {
namespace weight_stream_grad {

using weight_stream::kMaxRows;
using weight_stream::kMaxTiles;
using weight_stream::kSm90Smem;
using weight_stream::kSplitLaunchChunks;
using weight_stream::kThreads;
using weight_stream::kWarps;
using weight_stream::word_at;

constexpr int kStripBytes = 128;         // of each W row per strip: 8 lane groups x 16 bytes
constexpr int kChunkRows = 32;           // W rows per chunk: 8 per lane group t
constexpr int kPieces = kChunkRows / 4;  // 16-byte W pieces a lane copies per chunk
constexpr int kBitsSlotVecs = 2 * kChunkRows / 4;  // 2 words per row (16-bit), [word][row]

// Chunks in flight per warp (one being used): the forward's 4, or 3 in the
// mixed form, whose chunks are twice the bytes (so that 64 rows of dy still
// fit one block per multiprocessor, and 2 blocks up to 16 rows).
template <typename T, typename WT>
CPG_HD constexpr int stages() {
  return std::is_same<T, WT>::value ? weight_stream::kStages : weight_stream::kStages - 1;
}

// 16-byte copies of W (stored as WT) per 16-byte operand piece: 1, or 2 mixed.
template <typename T, typename WT>
CPG_HD constexpr int sources() {
  return weight_stream::source_vecs<T, WT>();
}
// W bytes of a chunk: 4 KB (as the forward's), 8 KB in the mixed form.
template <typename T, typename WT>
CPG_HD constexpr int chunk_bytes() {
  return kChunkRows * kStripBytes * sources<T, WT>();
}
// uint4 of W per warp and stage.
template <typename T, typename WT>
CPG_HD constexpr int w_slot_vecs() {
  return kPieces * kWarpSize * sources<T, WT>();
}

template <typename T>
CPG_HD constexpr int strip_cols() {
  return kStripBytes / static_cast<int>(sizeof(T));
}
template <typename T>
CPG_HD constexpr int strip_words() {  // bit words per row of a strip: 2 (16-bit) or 1
  return strip_cols<T>() / kBitsPerWord;
}
// uint4 of one dy row at a chunk's rows: 4 (16-bit) or 8 (fp32).
template <typename T>
CPG_HD constexpr int dy_row_vecs() {
  return kChunkRows * static_cast<int>(sizeof(T)) / kVecBytes;
}
// mma m-tiles of 16 columns a lane's kV columns feed.
template <typename T>
CPG_HD constexpr int m_tiles() {
  return vec_elems<T>() / 2;
}

// Where vector v of staged dy row m sits in a warp's dy slot. fp32 lanes read
// two vectors of a row (2t, 2t + 1): odd rows swap pairs so that the eight
// lanes of a 16-byte read phase hit distinct banks.
template <typename T>
CPG_HD int dy_slot(int m, int v) {
  return m * dy_row_vecs<T>() + (sizeof(T) == 4 ? (v ^ (m & 1)) : v);
}

// How a launch divides the work (plan()).
struct Shape {
  int used_tiles;    // n8 tiles holding dy rows: ceil(M / 8)
  int64_t strips;    // ceil(K / strip_cols)
  int strip_blocks;  // gridDim.x: blocks taking the strips in turn
  int splits;        // gridDim.y: parts of N
  int chunks_per_split;
  int64_t chunks;    // ceil(N / kChunkRows)
  int dy_slot_vecs;  // uint4 of a warp's dy per stage: M rows
  // Shared memory, in uint4: W ring, bits ring, dy ring, then warps 1-3's sums.
  int bits_offset, dy_offset, sums_offset;
  int smem_bytes;
  int blocks_per_sm;  // the occupancy the grid is sized for
};

// What one block does, and where its warp and lane stand.
struct Block {
  int64_t chunk0;  // the split's first chunk
  int chunks;      // the split's chunks
  int tiles;       // strips this block takes
  int warp, lane, g, t;
  int warp_chunks;  // the warp's chunks per strip: w, w + kWarps, ... < chunks
  int positions;    // tiles * warp_chunks: the warp's stream
  int w_vec;        // this lane's W piece 0 in stage 0 of its warp (uint4 index)
  int bits_vec;     // its warp's bits of stage 0
  int dy_vec;       // its warp's dy of stage 0
};

template <typename T, typename WT>
CPG_DEVICE Block block_of(const Shape& s) {
  Block b;
  b.chunk0 = static_cast<int64_t>(blockIdx.y) * s.chunks_per_split;
  const int64_t chunks_left = s.chunks - b.chunk0;
  b.chunks = static_cast<int>(chunks_left < s.chunks_per_split ? chunks_left : s.chunks_per_split);
  const int64_t bx = blockIdx.x;
  b.tiles = bx < s.strips ? static_cast<int>(ceil_div(s.strips - bx, s.strip_blocks)) : 0;
  b.lane = cpgdev::lane_id();
  b.warp = static_cast<int>(threadIdx.x) / kWarpSize;
  b.g = b.lane / 4;
  b.t = b.lane % 4;
  b.warp_chunks = b.warp < b.chunks ? (b.chunks - b.warp + kWarps - 1) / kWarps : 0;
  b.positions = b.tiles * b.warp_chunks;
  constexpr int kStages = stages<T, WT>();
  b.w_vec = b.warp * kStages * w_slot_vecs<T, WT>() + b.lane;
  b.bits_vec = s.bits_offset + b.warp * kStages * kBitsSlotVecs;
  b.dy_vec = s.dy_offset + b.warp * kStages * s.dy_slot_vecs;
  return b;
}

// A stream position of the warp: its strip (of the block's), its chunk in the
// strip, its pipeline stage, and where they start in W.
struct Cursor {
  int tile_i = 0;
  int j = 0;
  int stage = 0;
  int64_t n0 = 0;    // the chunk's first W row
  int64_t col0 = 0;  // the strip's first W column

  template <typename T, typename WT>
  CPG_DEVICE void advance(const Shape& s, const Block& b) {
    n0 += kWarps * kChunkRows;
    if (++j == b.warp_chunks) {
      j = 0;
      ++tile_i;
      n0 = (b.chunk0 + b.warp) * kChunkRows;
      col0 += int64_t{s.strip_blocks} * strip_cols<T>();
    }
    stage = stage + 1 == stages<T, WT>() ? 0 : stage + 1;
  }
};

template <typename T>
CPG_DEVICE Cursor first_position(const Block& b) {
  Cursor c;
  c.n0 = (b.chunk0 + b.warp) * kChunkRows;
  c.col0 = static_cast<int64_t>(blockIdx.x) * strip_cols<T>();
  return c;
}

// Issues the copies of the position at cursor c into its stage: this lane's 8
// W pieces (each 1 or, mixed, 2 copies), the chunk's bit words (lane l: row
// l), and the M dy rows at the chunk's 32 rows of W (n). Rows past N and
// columns past K read as zeros.
template <typename T, typename WT, typename Smem>
CPG_DEVICE void issue(const MaskedGemm<T, WT>& g, const Shape& s, const Block& b, const Cursor& c,
                      uint64_t policy, Smem smem) {
  constexpr int kV = vec_elems<T>();
  constexpr int kSources = sources<T, WT>();
  const int64_t col = c.col0 + b.g * kV;
  const bool col_valid = col < g.K;
  const int64_t row0 = c.n0 + 8 * b.t;
  const WT* w = g.w + row0 * g.K + col;
  const int w_vec = b.w_vec + c.stage * w_slot_vecs<T, WT>();
#pragma unroll
  for (int p = 0; p < kPieces; ++p) {
    const bool valid = col_valid && row0 + p < g.N;
#pragma unroll
    for (int src = 0; src < kSources; ++src) {
      cpgdev::cp_async16_zfill_hint(&smem[w_vec + (p * kSources + src) * kWarpSize],
                                    valid ? w + p * g.K + src * vec_elems<WT>() : g.w, valid,
                                    policy);
    }
  }
  const int64_t row = c.n0 + b.lane;
  const int64_t word0 = c.col0 / kBitsPerWord;
  const int bits_vec = b.bits_vec + c.stage * kBitsSlotVecs;
#pragma unroll
  for (int word = 0; word < strip_words<T>(); ++word) {
    const bool valid = row < g.N && word0 + word < g.words;
    const int slot = word * kChunkRows + b.lane;
    cpgdev::cp_async4_zfill(word_at<uint32_t>(smem, bits_vec + slot / 4, slot % 4),
                            valid ? g.bits + row * g.words + word0 + word : g.bits, valid);
  }
  constexpr int kRowVecs = dy_row_vecs<T>();
  const int dy_vec = b.dy_vec + c.stage * s.dy_slot_vecs;
  const int count = static_cast<int>(g.M) * kRowVecs;
#pragma unroll 1
  for (int i = b.lane; i < count; i += kWarpSize) {
    const int m = i / kRowVecs, v = i % kRowVecs;
    const int64_t n = c.n0 + v * kV;
    const bool valid = n < g.N;
    cpgdev::cp_async16_zfill(&smem[dy_vec + dy_slot<T>(m, v)], valid ? g.a + m * g.N + n : g.a,
                             valid);
  }
}

CPG_DEVICE uint32_t reg_of(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// acc[m-tile][n8 tile] += W'^T[strip columns, chunk rows] . dy^T[chunk rows,
// tile's dy rows] for the chunk at cursor c (landed and visible to the warp).
template <typename T, typename WT, int kTiles, typename Smem>
CPG_DEVICE void multiply(const MaskedGemm<T, WT>& g, const Shape& s, const Block& b,
                         const Cursor& c, Smem smem, float (&acc)[m_tiles<T>()][kTiles][4]) {
  constexpr int kV = vec_elems<T>();
  constexpr int kSources = sources<T, WT>();
  const int w_vec = b.w_vec + c.stage * w_slot_vecs<T, WT>();
  // Piece p of the lane's rows, as T: as copied, or its fp32 copies rounded.
  auto raw_piece = [&](int p) {
    if constexpr (kSources == 1) {
      return cpgdev::load16(&smem[w_vec + p * kWarpSize]);
    } else {
      return weight_stream::rounded_piece<T>(
          cpgdev::load16(&smem[w_vec + 2 * p * kWarpSize]),
          cpgdev::load16(&smem[w_vec + (2 * p + 1) * kWarpSize]));
    }
  };
  // The bit words of the lane's 8 rows at its columns: word g kV / 32 of the
  // strip's, at bit g kV % 32.
  const int word = b.g * kV / kBitsPerWord;
  const int shift = b.g * kV % kBitsPerWord;
  const int bits_vec = b.bits_vec + c.stage * kBitsSlotVecs + word * (kChunkRows / 4) + 2 * b.t;
  const uint4 lo = cpgdev::load16(&smem[bits_vec]), hi = cpgdev::load16(&smem[bits_vec + 1]);
  const uint32_t words[kPieces] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
  const int dy_vec = b.dy_vec + c.stage * s.dy_slot_vecs;
  if constexpr (sizeof(T) == 2) {
    // Two k16 steps; step h takes the lane's rows 4h .. 4h + 3 as k = 2t, 2t + 1,
    // 2t + 8, 2t + 9.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      uint4 p[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        p[r] = weight_stream::mask_piece<T>(raw_piece(4 * h + r), words[4 * h + r] >> shift);
      }
      uint32_t a[4][4];  // per m-tile i: columns 2i (m = g) and 2i + 1 (m = g + 8)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        a[i][0] = cpgdev::byte_perm(reg_of(p[0], i), reg_of(p[1], i), 0x5410u);
        a[i][1] = cpgdev::byte_perm(reg_of(p[0], i), reg_of(p[1], i), 0x7632u);
        a[i][2] = cpgdev::byte_perm(reg_of(p[2], i), reg_of(p[3], i), 0x5410u);
        a[i][3] = cpgdev::byte_perm(reg_of(p[2], i), reg_of(p[3], i), 0x7632u);
      }
#pragma unroll
      for (int nt = 0; nt < kTiles; ++nt) {
        if (nt >= s.used_tiles) break;  // uniform: the dy rows end
        const int m = nt * 8 + b.g;
        uint4 d = {};
        if (m < g.M) d = cpgdev::load16(&smem[dy_vec + dy_slot<T>(m, b.t)]);
        const uint32_t bv[2] = {h == 0 ? d.x : d.z, h == 0 ? d.y : d.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) weight_stream::mma_step<T>(acc[i][nt], a[i], bv);
      }
    }
  } else {
    // Four k8 steps; step h takes the lane's rows 2h and 2h + 1 as k = t, t + 4.
#pragma unroll
    for (int h = 0; h < 4; ++h) {
      const uint4 p0 = weight_stream::as_operand<T>(
          weight_stream::mask_piece<T>(raw_piece(2 * h), words[2 * h] >> shift));
      const uint4 p1 = weight_stream::as_operand<T>(
          weight_stream::mask_piece<T>(raw_piece(2 * h + 1), words[2 * h + 1] >> shift));
      const uint32_t a0[4] = {p0.x, p0.y, p1.x, p1.y}, a1[4] = {p0.z, p0.w, p1.z, p1.w};
#pragma unroll
      for (int nt = 0; nt < kTiles; ++nt) {
        if (nt >= s.used_tiles) break;
        const int m = nt * 8 + b.g;
        uint4 d = {};
        if (m < g.M) d = cpgdev::load16(&smem[dy_vec + dy_slot<T>(m, 2 * b.t + h / 2)]);
        d = weight_stream::as_operand<T>(d);
        const uint32_t bv[2] = {h % 2 == 0 ? d.x : d.z, h % 2 == 0 ? d.y : d.w};
        weight_stream::mma_step<T>(acc[0][nt], a0, bv);
        weight_stream::mma_step<T>(acc[1][nt], a1, bv);
      }
    }
  }
}

// A strip's end: warps 1-3 leave their sums in shared memory, warp 0 adds
// them to its own in warp order (every warp's lane holds the same elements)
// and writes dx (or this split's fp32 partial sums): kV columns of dy rows
// 2t and 2t + 1 per tile, as whole vectors.
template <typename T, typename WT, int kTiles, typename Smem>
CPG_DEVICE void finish_tile(const MaskedGemm<T, WT>& g, const Shape& s, const Block& b,
                            int64_t col0, float (&acc)[m_tiles<T>()][kTiles][4], Smem smem,
                            float* partials) {
  constexpr int kV = vec_elems<T>();
  constexpr int kM = m_tiles<T>();
  constexpr int kRegs = kM * kTiles * 4;
  auto sum_slot = [&](int warp, int i, int nt, int r) {
    const int idx = (((warp - 1) * kRegs + (i * kTiles + nt) * 4 + r) * kWarpSize) + b.lane;
    return word_at<float>(smem, s.sums_offset + idx / 4, idx % 4);
  };
  if (b.warp > 0) {
#pragma unroll
    for (int i = 0; i < kM; ++i) {
#pragma unroll
      for (int nt = 0; nt < kTiles; ++nt) {
#pragma unroll
        for (int r = 0; r < 4; ++r) *sum_slot(b.warp, i, nt, r) = acc[i][nt][r];
      }
    }
  }
  cpgdev::syncthreads();
  if (b.warp == 0) {
#pragma unroll 1
    for (int w = 1; w < kWarps; ++w) {
#pragma unroll
      for (int i = 0; i < kM; ++i) {
#pragma unroll
        for (int nt = 0; nt < kTiles; ++nt) {
#pragma unroll
          for (int r = 0; r < 4; ++r) acc[i][nt][r] += *sum_slot(w, i, nt, r);
        }
      }
    }
    const int64_t col = col0 + b.g * kV;
#pragma unroll
    for (int nt = 0; nt < kTiles; ++nt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {  // dy rows 2t (c0, c2) and 2t + 1 (c1, c3)
        const int64_t m = nt * 8 + 2 * b.t + h;
        if (nt >= s.used_tiles || m >= g.M || col >= g.K) continue;
        float v[kV];
#pragma unroll
        for (int e = 0; e < kV; ++e) v[e] = acc[e / 2][nt][(e % 2) * 2 + h];
        if (partials != nullptr) {
          const int64_t split = blockIdx.y;
          store_vec(partials + (split * g.M + m) * g.K + col, v);
        } else {
          T out[kV];
#pragma unroll
          for (int e = 0; e < kV; ++e) out[e] = cpgdev::from_float<T>(v[e]);
          store_vec(g.out + m * g.K + col, out);
        }
      }
    }
  }
  cpgdev::syncthreads();  // the sums are read before the next strip writes them
}

// A block's whole stream. Grid (strip_blocks, splits, 1), kThreads threads,
// s.smem_bytes of dynamic shared memory. partials: null (dx written as T into
// g.out, splits == 1), else the splits' fp32 sums [splits][M][K].
template <typename T, typename WT, int kTiles, typename Smem>
CPG_DEVICE void grad_stream_body(const MaskedGemm<T, WT>& g, const Shape& s, float* partials,
                                 Smem smem) {
  const Block b = block_of<T, WT>(s);
  const uint64_t policy = cpgdev::l2_evict_first();

  constexpr int kStages = stages<T, WT>();
  Cursor ahead = first_position<T>(b);  // the next position to issue
#pragma unroll
  for (int p = 0; p < kStages - 1; ++p) {
    if (p < b.positions) {
      issue(g, s, b, ahead, policy, smem);
      ahead.advance<T, WT>(s, b);
    }
    cpgdev::cp_async_commit();
  }
  Cursor now = first_position<T>(b);  // the position multiplied
  for (int tile_i = 0; tile_i < b.tiles; ++tile_i) {
    float acc[m_tiles<T>()][kTiles][4] = {};
    for (int j = 0; j < b.warp_chunks; ++j) {
      cpgdev::cp_async_wait<kStages - 2>();  // the position has landed (for this lane)
      cpgdev::syncwarp();  // ... and for the warp; the previous stage is no longer read
      if (ahead.tile_i < b.tiles) {
        issue(g, s, b, ahead, policy, smem);
        ahead.advance<T, WT>(s, b);
      }
      cpgdev::cp_async_commit();
      multiply<T, WT, kTiles>(g, s, b, now, smem, acc);
      now.advance<T, WT>(s, b);
    }
    const int64_t strip = static_cast<int64_t>(blockIdx.x) + int64_t{tile_i} * s.strip_blocks;
    finish_tile<T, WT, kTiles>(g, s, b, strip * strip_cols<T>(), acc, smem, partials);
  }
  cpgdev::cp_async_wait<0>();
}

template <typename T, int kTiles>
CPG_GLOBAL void CPG_LAUNCH_BOUNDS(kThreads)
    masked_linear_grad_input_stream_kernel(MaskedGemm<T> g, Shape s, float* partials) {
  CPG_DYNAMIC_SHARED(uint4, smem);
  grad_stream_body<T, T, kTiles>(g, s, partials, smem);
}

// The mixed form: W stored as fp32, T 16-bit.
template <typename T, int kTiles>
CPG_GLOBAL void CPG_LAUNCH_BOUNDS(kThreads)
    masked_linear_grad_input_f32_weight_stream_kernel(MaskedGemm<T, float> g, Shape s,
                                                      float* partials) {
  CPG_DYNAMIC_SHARED(uint4, smem);
  grad_stream_body<T, float, kTiles>(g, s, partials, smem);
}

// The kernel of the form: masked_linear_grad_input_stream_kernel, or the mixed one.
template <typename T, typename WT, int kTiles>
auto grad_stream_kernel() {
  if constexpr (std::is_same<T, WT>::value) {
    return &masked_linear_grad_input_stream_kernel<T, kTiles>;
  } else {
    return &masked_linear_grad_input_f32_weight_stream_kernel<T, kTiles>;
  }
}

// dx[i] = the splits' partial sums of element i added in split order, as T.
template <typename T>
CPG_GLOBAL void CPG_LAUNCH_BOUNDS(kThreads)
    sum_splits_kernel(const float* partials, T* out, int64_t count, int splits) {
  for (int64_t i = global_thread_index(); i < count; i += global_thread_count()) {
    float sum = partials[i];
    for (int split = 1; split < splits; ++split) sum += partials[split * count + i];
    out[i] = cpgdev::from_float<T>(sum);
  }
}

// The shared memory of a launch for g, and its kernel's kTiles.
struct Layout {
  int tiles;  // n8 tiles of dy rows, rounded up to 1, 2, 4, 8
  int dy_slot_vecs;
  int64_t smem_bytes;  // W ring, bits ring, dy ring, warps 1-3's sums
};

template <typename T, typename WT>
Layout layout_of(const MaskedGemm<T, WT>& g) {
  Layout l;
  const int64_t used = ceil_div(g.M, 8);
  l.tiles = used <= 1 ? 1 : used <= 2 ? 2 : used <= 4 ? 4 : 8;
  l.dy_slot_vecs = static_cast<int>(g.M) * dy_row_vecs<T>();
  const int64_t ring_vecs =
      int64_t{kWarps} * stages<T, WT>() * (w_slot_vecs<T, WT>() + kBitsSlotVecs + l.dy_slot_vecs);
  const int64_t sums_bytes = int64_t{kWarps - 1} * m_tiles<T>() * l.tiles * 4 * kWarpSize * 4;
  l.smem_bytes = ring_vecs * kVecBytes + sums_bytes;
  return l;
}

// Whether blocks_per_sm blocks of layout l fit a multiprocessor's shared
// memory `smem`.
inline bool fits(const Layout& l, const cpgdev::SmemLimits& smem, int blocks_per_sm) {
  const int64_t share = int64_t{smem.per_sm} / blocks_per_sm - smem.reserved_per_block;
  const int64_t limit = share < smem.per_block ? share : smem.per_block;
  return l.smem_bytes <= limit;
}

// Whether the kernel takes g: tensor cores allowed (16-bit, or fp32 with
// TF32), one task of at most kMaxRows rows, W and dx rows and dy rows in
// whole 16-byte vectors of 16-byte aligned row-major operands (W rows in
// whole vectors of both T and WT), and one block fitting the device's shared
// memory `smem`.
template <typename T, typename WT>
bool supports(const MaskedGemm<T, WT>& g, bool allow_tf32, const cpgdev::SmemLimits& smem) {
  constexpr int64_t kBytes = sizeof(T);
  return tensor_cores_allowed<T>(allow_tf32) && g.tasks == 1 && g.M >= 1 && g.M <= kMaxRows &&
         g.K > 0 && g.N > 0 && (g.K * kBytes) % kVecBytes == 0 && (g.N * kBytes) % kVecBytes == 0 &&
         (g.K * static_cast<int64_t>(sizeof(WT))) % kVecBytes == 0 && is_aligned16(g.w) &&
         is_aligned16(g.a) && is_aligned16(g.out) && g.a_plane == 1 && g.out_plane == 1 &&
         fits(layout_of(g), smem, 1);
}

// A launch: the kernel's kTiles, its shape and grid, and the fp32 partial
// sums when N is split.
struct Plan {
  int tiles;
  Shape shape;
  dim3 grid;
  int64_t partials_bytes;  // 0 without splits
};

// The split of N and the blocks that stream W with the least work on the most
// loaded multiprocessor (in chunks), plus the splits' partial sums, for
// sm_count multiprocessors with shared memory `smem`. Requires supports(g, ...).
template <typename T, typename WT>
Plan plan(const MaskedGemm<T, WT>& g, int sm_count, const cpgdev::SmemLimits& smem) {
  Plan p;
  Shape& s = p.shape;
  const Layout l = layout_of(g);
  p.tiles = l.tiles;
  s.used_tiles = static_cast<int>(ceil_div(g.M, 8));
  s.strips = ceil_div(g.K, strip_cols<T>());
  s.chunks = ceil_div(g.N, kChunkRows);
  s.dy_slot_vecs = l.dy_slot_vecs;
  int64_t best_cost = -1;
  for (int blocks_per_sm = 2; blocks_per_sm >= 1; --blocks_per_sm) {
    if (!fits(l, smem, blocks_per_sm)) continue;
    const int64_t slots = int64_t{blocks_per_sm} * sm_count;
    // Beyond two waves' worth of blocks more splits cannot help.
    const int64_t wave_splits = ceil_div(2 * slots, s.strips) + 1;
    int64_t last_cps = 0;
    for (int64_t splits = 1; splits <= wave_splits && splits <= s.chunks; ++splits) {
      const int64_t cps = ceil_div(s.chunks, splits);
      if (cps == last_cps) continue;
      last_cps = cps;
      const int64_t real_splits = ceil_div(s.chunks, cps);
      int64_t strip_blocks = slots / real_splits;
      strip_blocks = strip_blocks < 1 ? 1 : strip_blocks > s.strips ? s.strips : strip_blocks;
      const int64_t blocks = strip_blocks * real_splits;
      const int64_t per_block = ceil_div(s.strips, strip_blocks) * ceil_div(cps, kWarps) * kWarps;
      int64_t cost = ceil_div(blocks, sm_count) * per_block;
      if (real_splits > 1) {
        const int64_t partial_bytes = 2 * real_splits * g.M * g.K * 4;
        cost +=
            ceil_div(partial_bytes, int64_t{chunk_bytes<T, WT>()} * sm_count) + kSplitLaunchChunks;
      }
      if (best_cost < 0 || cost < best_cost) {
        best_cost = cost;
        s.splits = static_cast<int>(real_splits);
        s.chunks_per_split = static_cast<int>(cps);
        s.strip_blocks = static_cast<int>(strip_blocks);
        s.blocks_per_sm = blocks_per_sm;
      }
    }
  }
  constexpr int kStages = stages<T, WT>();
  s.bits_offset = kWarps * kStages * w_slot_vecs<T, WT>();
  s.dy_offset = s.bits_offset + kWarps * kStages * kBitsSlotVecs;
  s.sums_offset = s.dy_offset + kWarps * kStages * s.dy_slot_vecs;
  s.smem_bytes = static_cast<int>(l.smem_bytes);
  p.grid = dim3(static_cast<unsigned>(s.strip_blocks), static_cast<unsigned>(s.splits), 1u);
  p.partials_bytes = s.splits > 1 ? int64_t{4} * s.splits * g.M * g.K : 0;
  return p;
}

// The stream kernel of plan p, writing dx into g.out (partials null) or its
// split's fp32 partial sums [splits][M][K] into `partials`, whose sum is then
// the caller's: the conv layers' unfolded path folds them (conv_unfolded.cuh).
template <typename T, typename WT>
void launch_kernel(const MaskedGemm<T, WT>& g, const Plan& p, float* partials,
                   cpgdev::stream_t stream) {
  auto run = [&](auto kernel) {
    cpgdev::set_max_dynamic_smem(kernel, p.shape.smem_bytes);
    if constexpr (std::is_same<T, WT>::value) {
      CPG_LAUNCH(kernel, p.grid, kThreads, p.shape.smem_bytes, stream, g, p.shape, partials);
    } else {  // its own name in the emulator's launch log
      auto f32_weight_kernel = kernel;
      CPG_LAUNCH(f32_weight_kernel, p.grid, kThreads, p.shape.smem_bytes, stream, g, p.shape,
                 partials);
    }
  };
  switch (p.tiles) {
    case 1: return run(grad_stream_kernel<T, WT, 1>());
    case 2: return run(grad_stream_kernel<T, WT, 2>());
    case 4: return run(grad_stream_kernel<T, WT, 4>());
    default: return run(grad_stream_kernel<T, WT, kMaxTiles>());
  }
}

template <typename T, typename WT>
void launch(const MaskedGemm<T, WT>& g, cpgdev::stream_t stream) {
  const Plan p = plan(g, cpgdev::sm_count(), cpgdev::smem_limits());
  if (p.shape.splits == 1) return launch_kernel(g, p, nullptr, stream);
  DeviceWorkspace partials(static_cast<size_t>(p.partials_bytes), stream);
  launch_kernel(g, p, partials.as<float>(), stream);
  const int64_t count = g.M * g.K;
  auto* sum_kernel = &sum_splits_kernel<T>;
  CPG_LAUNCH(sum_kernel, grid_stride_blocks(count, kThreads), kThreads, 0, stream,
             partials.as<float>(), g.out, count, p.shape.splits);
  partials.release();
}

// The stream kernel's launch (launch_kernel) for plan p, appended to `out`,
// with `workspace_bytes` of partial sums.
template <typename T, typename WT>
void describe_kernel(const MaskedGemm<T, WT>& g, const Plan& p, int64_t workspace_bytes,
                     LaunchPlan& out) {
  const Shape& s = p.shape;
  const char* kernel =
      std::is_same<T, WT>::value
          ? "weight_stream_grad::masked_linear_grad_input_stream_kernel<"
          : "weight_stream_grad::masked_linear_grad_input_f32_weight_stream_kernel<";
  out.push_back(planned_launch(kernel + type_name<T>() + ", " + std::to_string(p.tiles) + ">",
                               p.grid, kThreads, s.smem_bytes,
                               {{"M", g.M},
                                {"N", g.N},
                                {"K", g.K},
                                {"tiles", p.tiles},
                                {"used_tiles", s.used_tiles},
                                {"strips", s.strips},
                                {"strip_blocks", s.strip_blocks},
                                {"splits", s.splits},
                                {"chunks", s.chunks},
                                {"chunks_per_split", s.chunks_per_split},
                                {"chunk_rows", kChunkRows},
                                {"strip_bytes", kStripBytes},
                                {"weight_bytes", static_cast<int64_t>(sizeof(WT))},
                                {"stages", stages<T, WT>()},
                                {"warps", kWarps},
                                {"blocks_per_sm", s.blocks_per_sm}},
                               workspace_bytes));
}

// The launches launch(g, ...) makes on sm_count multiprocessors, appended to
// `out`.
template <typename T, typename WT>
void describe(const MaskedGemm<T, WT>& g, int sm_count, LaunchPlan& out) {
  const Plan p = plan(g, sm_count, kSm90Smem);
  describe_kernel(g, p, p.partials_bytes, out);
  if (p.shape.splits == 1) return;
  const int64_t count = g.M * g.K;
  out.push_back(planned_launch("weight_stream_grad::sum_splits_kernel<" + type_name<T>() + ">",
                               dim3(grid_stride_blocks(count, kThreads, sm_count)), kThreads, 0,
                               {{"elements", count}, {"splits", p.shape.splits}}));
}

}  // namespace weight_stream_grad
}  // namespace CPG_KERNEL_NS
}  // namespace cpg
