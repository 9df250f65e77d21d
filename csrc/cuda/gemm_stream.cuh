// The forward at small batch on tensor cores: y = x W'^T for up to 64 rows of
// x at a time (f16 / bf16 as they are, fp32 rounded to TF32 where allowed),
// bound by reading W once. After Marlin and Machete: W streams through a
// per-warp cp.async pipeline together with its bit words, is masked in
// registers, and is the mma's A operand, so that the rows of x sit in its n
// dimension (8 per mma).
//
// Work: W is cut into tiles of 16 rows (one mma's m). A block takes the tiles
// blockIdx.x, blockIdx.x + gridDim.x, ... of one split of K (blockIdx.y) for
// one group of x rows (blockIdx.z); its 4 warps share each tile's K range,
// warp w taking the chunks (256 bytes of each of the 16 rows) w, w + 4, ...
// The grid is one wave (one or two blocks per multiprocessor), so blocks do
// not queue: a persistent grid.
//
// Pipeline: each warp streams its chunks, tile after tile, kStages deep.
// Each lane copies 16-byte pieces of W (with an L2 evict-first hint: W is read
// once) into shared memory and later reads back exactly the pieces it copied,
// and the warp copies the chunks' bit words beside them. A chunk is used after
// the lane's cp.async wait and a warp barrier (the bit words and x come from
// other lanes of the warp); no block barrier lies between landing and use.
// The x columns a warp reads are its own chunks' (the same in every tile), so
// the warp stages them itself in its first tile.
//
// Fragments: lane (g, t) (g = lane / 4, t = lane % 4) copies W rows g and
// g + 8 at columns 8t .. 8t + 7 of each 32-column quad (16-bit; fp32: 4t ..
// 4t + 3 of 16). Its two 16-byte pieces are, register for register, its A
// fragments of two k-steps, under a fixed permutation of the reduction index
// inside the quad; x is read as B under the same permutation (16 bytes of
// row g at the same columns), so the product is unchanged. The bits of the
// lane's 8 (or 4) columns mask the raw registers (select_by_bits).
//
// Sums: each warp's mma chain runs over its chunks in order; at a tile's end
// the warps' sums meet in shared memory and are added in warp order; with
// several splits, each writes fp32 partial sums that sum_splits_kernel adds in
// split order. Deterministic: no atomics, one order for every sum.
//
// Several tasks (multi-task inference): a group holds whole tasks, each task
// in its own n8 tiles and multiplied by its own bits, so W is read once for up
// to 8 tasks. One task with up to 64 rows is one group.
//
// Mixed form (WT = float, T 16-bit: an fp32 master weight under autocast): W
// streams as fp32 and each lane rounds its 8 columns to T in registers before
// masking (pack2_rn, the rounding of a cast to T), so the operands are those
// of W cast to T, without the cast's weight-sized copy; the sums are added in
// this form's own order (within T's rounding of the cast form's, not bit for
// bit). A chunk is still 256 bytes of W: 64 columns, 2 quads of 32, each
// lane's piece of a quad two 16-byte copies.
#pragma once

#include <type_traits>

#include "core/stream_limits.h"
#include "cuda/gemm_common.cuh"

namespace cpg {
namespace CPG_KERNEL_NS {
namespace weight_stream {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kStages = 4;                             // chunks in flight per warp (one being used)
constexpr int kTileRows = 16;                          // W rows of a tile: the mma's m
constexpr int kChunkBytes = 256;                       // bytes of each tile row per chunk
constexpr int kQuads = kChunkBytes / (4 * kVecBytes);  // of 4 lanes x 16 bytes
constexpr int kMaxTiles = 8;                           // n8 mma tiles of x rows per group
constexpr int kMaxRows = kStreamMaxRows;
static_assert(kMaxRows == 8 * kMaxTiles, "a group's rows fill at most kMaxTiles n8 tiles");
// The shared memory the plan query (describe) assumes: sm_90's (H100, H200),
// the devices the performance model predicts. A launch reads its device's.
constexpr cpgdev::SmemLimits kSm90Smem{228 * 1024, 227 * 1024, 1024};
// Padding of a staged x row: rows 2i and 2i + 1 start in different halves of
// the banks, so a warp's 16-byte x reads are conflict-free.
constexpr int kXRowPadBytes = 64;
// The planner's price of splitting K, in chunks per multiprocessor: the
// partial sums' kernel launch (~1.5 us of device time at ~23 GB/s per SM).
constexpr int64_t kSplitLaunchChunks = 8;

// Columns of a chunk of W stored as WT.
template <typename WT>
CPG_HD constexpr int chunk_cols() {
  return kChunkBytes / static_cast<int>(sizeof(WT));
}

// 16-byte copies of W (stored as WT) that make one lane's 16-byte operand
// piece of T: 1, or 2 in the mixed form.
template <typename T, typename WT>
CPG_HD constexpr int source_vecs() {
  static_assert(std::is_same<T, WT>::value || (std::is_same<WT, float>::value && sizeof(T) == 2),
                "W is stored as T, or as fp32 for 16-bit T");
  return static_cast<int>(sizeof(WT) / sizeof(T));
}

// Operand quads (4 lanes x 16 bytes of T) in a chunk: 4, or 2 in the mixed form.
template <typename T, typename WT>
CPG_HD constexpr int chunk_quads() {
  return kQuads / source_vecs<T, WT>();
}

// uint4 slots of shared memory per warp and stage.
constexpr int kWSlotVecs = 2 * kQuads * kWarpSize;  // W: 2 row halves x quads x lanes
constexpr int kBitsSlotVecs = kTileRows;            // per task: a row's chunk words

// How a launch divides the work (plan()).
struct Shape {
  int tasks_per_group;  // tasks whose x rows one group holds
  int tiles_per_task;   // n8 tiles of one task's rows: ceil(M / 8)
  int64_t row_tiles;    // ceil(N / 16)
  int row_blocks;       // gridDim.x: blocks taking a group's tiles in turn
  int splits;           // gridDim.y: parts of K
  int chunks_per_split;
  int64_t chunks;  // ceil(K / chunk_cols)
  int x_stride;    // elements per staged x row
  // Shared memory, in uint4: W ring, bits ring, warps' sums, then x.
  int bits_offset, sums_offset, x_offset;
  int smem_bytes;
  int blocks_per_sm;  // the occupancy the grid is sized for
};

// A 4-byte word of shared memory inside uint4 slot `vec` (bounds-checked by
// the emulator at the slot).
template <typename U, typename Smem>
CPG_DEVICE U* word_at(Smem smem, int64_t vec, int word) {
  static_assert(sizeof(U) == 4, "4-byte words");
  return reinterpret_cast<U*>(&smem[vec]) + word;
}

template <typename T>
CPG_DEVICE void mma_step(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (std::is_same<T, cpgdev::bf16>::value) {
    cpgdev::mma_bf16_16816(acc, a, b, acc);
  } else if constexpr (std::is_same<T, cpgdev::f16>::value) {
    cpgdev::mma_f16_16816(acc, a, b, acc);
  } else {
    cpgdev::mma_tf32_1688(acc, a, b, acc);
  }
}

CPG_DEVICE uint32_t tf32_bits(uint32_t f) {
  float v;
  memcpy(&v, &f, 4);
  return cpgdev::to_tf32(v);
}

// fp32 operands go to the tensor cores rounded to TF32.
template <typename T>
CPG_DEVICE uint4 as_operand(uint4 v) {
  if constexpr (sizeof(T) == 4) {
    v.x = tf32_bits(v.x);
    v.y = tf32_bits(v.y);
    v.z = tf32_bits(v.z);
    v.w = tf32_bits(v.w);
  }
  return v;
}

// What one block does, and where its warp and lane stand. Everything the
// stream needs per position is derived from these by adds (no division in
// the loop).
struct Block {
  int64_t first_task;  // of the group
  int tasks;           // in the group (the last group may have fewer)
  int rows;            // x rows of the group: tasks * M
  int64_t col0;        // the split's first column
  int chunks;          // the split's chunks
  int tiles;           // row tiles this block takes
  int warp, lane, g, t;
  int warp_chunks;  // the warp's chunks per tile: w, w + kWarps, ... < chunks
  int positions;    // tiles * warp_chunks: the warp's stream
  int w_vec;        // this lane's W piece in stage 0 of its warp (uint4 index)
  int bits_vec;     // its warp's bits of stage 0, task 0, row 0
};

template <typename T, typename WT>
CPG_DEVICE Block block_of(const MaskedGemm<T, WT>& g, const Shape& s) {
  Block b;
  b.first_task = static_cast<int64_t>(blockIdx.z) * s.tasks_per_group;
  const int64_t tasks_left = g.tasks - b.first_task;
  b.tasks = static_cast<int>(tasks_left < s.tasks_per_group ? tasks_left : s.tasks_per_group);
  b.rows = b.tasks * static_cast<int>(g.M);
  const int64_t chunk0 = static_cast<int64_t>(blockIdx.y) * s.chunks_per_split;
  b.col0 = chunk0 * chunk_cols<WT>();
  const int64_t chunks_left = s.chunks - chunk0;
  b.chunks = static_cast<int>(chunks_left < s.chunks_per_split ? chunks_left : s.chunks_per_split);
  const int64_t bx = blockIdx.x;
  b.tiles = bx < s.row_tiles ? static_cast<int>(ceil_div(s.row_tiles - bx, s.row_blocks)) : 0;
  b.lane = cpgdev::lane_id();
  b.warp = static_cast<int>(threadIdx.x) / kWarpSize;
  b.g = b.lane / 4;
  b.t = b.lane % 4;
  b.warp_chunks = b.warp < b.chunks ? (b.chunks - b.warp + kWarps - 1) / kWarps : 0;
  b.positions = b.tiles * b.warp_chunks;
  b.w_vec = b.warp * kStages * kWSlotVecs + b.lane;
  b.bits_vec = s.bits_offset + b.warp * kStages * s.tasks_per_group * kBitsSlotVecs;
  return b;
}

// A stream position of the warp: its tile (of the block's), its chunk in the
// tile, and its pipeline stage.
struct Cursor {
  int tile_i = 0;
  int j = 0;
  int stage = 0;
  int local_col = 0;  // the chunk's first column relative to the split's (x's column)

  template <typename WT>
  CPG_DEVICE void advance(const Block& b) {
    local_col += kWarps * chunk_cols<WT>();
    if (++j == b.warp_chunks) {
      j = 0;
      ++tile_i;
      local_col = b.warp * chunk_cols<WT>();
    }
    stage = stage + 1 == kStages ? 0 : stage + 1;
  }
};

template <typename WT>
CPG_DEVICE Cursor first_position(const Block& b) {
  Cursor c;
  c.local_col = b.warp * chunk_cols<WT>();
  return c;
}

// The position to issue next, and where its copies come from: this lane's W
// row g and bit words of task 0 at the chunk, kept up to date by adds.
template <typename T, typename WT>
struct IssueCursor : Cursor {
  const WT* w;          // W[n, col + t kV], n = tile * 16 + g, kV = vec_elems<T>()
  const int32_t* bits;  // bits[n, col / 32 + t]
  int64_t cols_left;    // K - col
  bool rows_valid[2];   // rows g and g + 8 exist (< N)

  CPG_DEVICE void start_tile(const MaskedGemm<T, WT>& g, const Shape& s, const Block& b) {
    const int64_t tile = static_cast<int64_t>(blockIdx.x) + int64_t{tile_i} * s.row_blocks;
    const int64_t n = tile * kTileRows + b.g;
    const int64_t col = b.col0 + local_col;
    w = g.w + n * g.K + col + b.t * vec_elems<T>();
    bits = g.bits + b.first_task * g.bits_task_stride + n * g.words + col / kBitsPerWord + b.t;
    cols_left = g.K - col;
    rows_valid[0] = n < g.N;
    rows_valid[1] = n + 8 < g.N;
  }
  CPG_DEVICE void advance(const MaskedGemm<T, WT>& g, const Shape& s, const Block& b) {
    const int tile_before = tile_i;
    Cursor::advance<WT>(b);
    if (tile_i != tile_before) {
      start_tile(g, s, b);
      return;
    }
    constexpr int kStep = kWarps * chunk_cols<WT>();
    w += kStep;
    bits += kStep / kBitsPerWord;
    cols_left -= kStep;
  }
};

// Issues the copies of the position at cursor c into its stage: the warp's 16
// W rows of the chunk, their bit words for every task of the group, and in the
// first tile the group's x rows at the chunk's columns.
template <typename T, typename WT, bool kMultiTask, int kTiles, typename Smem>
CPG_DEVICE void issue(const MaskedGemm<T, WT>& g, const Shape& s, const Block& b,
                      const IssueCursor<T, WT>& c, uint64_t policy, Smem smem) {
  constexpr int kV = vec_elems<T>();
  constexpr int kSourceV = vec_elems<WT>();
  constexpr int kSources = source_vecs<T, WT>();
  constexpr int kCols = chunk_cols<WT>();
  constexpr int kWords = kCols / kBitsPerWord;
  const int w_vec = b.w_vec + c.stage * kWSlotVecs;
  const int left = c.cols_left < kCols ? static_cast<int>(c.cols_left) : kCols;  // in the chunk
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const WT* row = c.w + h * 8 * g.K;
#pragma unroll
    for (int q = 0; q < chunk_quads<T, WT>(); ++q) {
#pragma unroll
      for (int p = 0; p < kSources; ++p) {
        const int col = (q * 4 + b.t) * kV + p * kSourceV;  // in the chunk
        const bool valid = c.rows_valid[h] && col < left;
        cpgdev::cp_async16_zfill_hint(&smem[w_vec + ((q * kSources + p) * 2 + h) * kWarpSize],
                                      valid ? row + q * 4 * kV + p * kSourceV : g.w, valid, policy);
      }
    }
  }
  // Bit words: lane t copies word t of its rows' chunk words (16-bit W: 4, fp32: 2).
  if (b.t < kWords) {
    const bool word_valid = b.t * kBitsPerWord < left;
    const int bits_vec = b.bits_vec + c.stage * s.tasks_per_group * kBitsSlotVecs + b.g;
    constexpr int kMaxTasks = kMultiTask ? kTiles : 1;
#pragma unroll
    for (int task = 0; task < kMaxTasks; ++task) {
      if (task >= b.tasks) break;
      const int32_t* task_bits = c.bits + task * g.bits_task_stride;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const bool valid = c.rows_valid[h] && word_valid;
        cpgdev::cp_async4_zfill(
            word_at<uint32_t>(smem, bits_vec + task * kBitsSlotVecs + 8 * h, b.t),
            valid ? task_bits + h * 8 * g.words : g.bits, valid);
      }
    }
  }
  if (c.tile_i == 0) {
    // The group's x rows at this chunk's columns: 32 lanes x 16 bytes per step.
    constexpr int kVecsPerRow = kCols / kV;
    const int64_t col = b.col0 + c.local_col;
    const T* x = g.a + b.first_task * g.M * g.K + col;
#pragma unroll 1
    for (int i = b.lane; i < b.rows * kVecsPerRow; i += kWarpSize) {
      const int r = i / kVecsPerRow, v = (i % kVecsPerRow) * kV;
      const bool valid = v < left;
      cpgdev::cp_async16_zfill(&smem[s.x_offset + (r * s.x_stride + c.local_col + v) / kV],
                               valid ? x + int64_t{r} * g.K + v : g.a, valid);
    }
  }
}

// fp32: the x this lane copied at cursor c, rounded to TF32 in place (after
// its wait, before the warp barrier that shows it to the other lanes).
template <typename T, typename Smem>
CPG_DEVICE void round_staged_x(const Shape& s, const Block& b, const Cursor& c, Smem smem) {
  if constexpr (sizeof(T) == 4) {  // then W is fp32 too: chunk_cols<T>() is the chunk's
    if (c.tile_i != 0) return;
    constexpr int kV = vec_elems<T>();
    constexpr int kVecsPerRow = chunk_cols<T>() / kV;
#pragma unroll 1
    for (int i = b.lane; i < b.rows * kVecsPerRow; i += kWarpSize) {
      const int r = i / kVecsPerRow, v = (i % kVecsPerRow) * kV;
      const int vec = s.x_offset + (r * s.x_stride + c.local_col + v) / kV;
      cpgdev::store16(&smem[vec], as_operand<T>(cpgdev::load16(&smem[vec])));
    }
  }
}

// The lane's 16-byte piece of raw W with every element whose bit (of `bits`,
// LSB first) is clear set to all-zero bits. Each nibble of bits is spread to
// the sign bits of a word's bytes by one multiply (the four shifted copies of
// the nibble touch distinct bits, so nothing carries), and a byte permute
// copies each sign bit over its element: 3 instructions per 32-bit register
// where select_by_bits takes 6.
template <typename T>
CPG_DEVICE uint4 mask_piece(uint4 raw, uint32_t bits) {
  constexpr uint32_t kSpread = 0x10204080u;  // bit e of a nibble -> bit 8e + 7
  const uint32_t lo = (bits & 0xfu) * kSpread;
  if constexpr (sizeof(T) == 2) {
    const uint32_t hi = ((bits >> 4) & 0xfu) * kSpread;
    raw.x &= cpgdev::byte_perm(lo, 0u, 0x9988u);  // elements 0, 1
    raw.y &= cpgdev::byte_perm(lo, 0u, 0xbbaau);
    raw.z &= cpgdev::byte_perm(hi, 0u, 0x9988u);
    raw.w &= cpgdev::byte_perm(hi, 0u, 0xbbaau);
  } else {
    raw.x &= cpgdev::byte_perm(lo, 0u, 0x8888u);  // element 0
    raw.y &= cpgdev::byte_perm(lo, 0u, 0x9999u);
    raw.z &= cpgdev::byte_perm(lo, 0u, 0xaaaau);
    raw.w &= cpgdev::byte_perm(lo, 0u, 0xbbbbu);
  }
  return raw;
}

// The raw W piece of quad q, masked by one task's bit words (the uint4 of its
// row's chunk words) and made an mma operand.
template <typename T>
CPG_DEVICE uint4 masked_piece(uint4 raw, uint4 words, int q, int t) {
  // The piece's first column in the chunk is (4q + t) kV: word 4q kV / 32 of
  // the row's chunk words (a constant once q is unrolled), since t kV < 32.
  constexpr int kV = vec_elems<T>();
  const int quad_col = q * 4 * kV;
  const int word = quad_col / kBitsPerWord;
  const uint32_t bits = word == 0 ? words.x : word == 1 ? words.y : word == 2 ? words.z : words.w;
  return as_operand<T>(mask_piece<T>(raw, bits >> (quad_col % kBitsPerWord + t * kV)));
}

// Eight consecutive fp32 elements (two 16-byte copies, lo first) rounded to a
// 16-bit T as a cast rounds, and packed in their order into one 16-byte
// piece: the mixed form's operand, shared by the forward and grad streams.
template <typename T>
CPG_DEVICE uint4 rounded_piece(const uint4& lo, const uint4& hi) {
  auto f = [](uint32_t u) {
    float v;
    memcpy(&v, &u, 4);
    return v;
  };
  return uint4{cpgdev::pack2_rn<T>(f(lo.x), f(lo.y)), cpgdev::pack2_rn<T>(f(lo.z), f(lo.w)),
               cpgdev::pack2_rn<T>(f(hi.x), f(hi.y)), cpgdev::pack2_rn<T>(f(hi.z), f(hi.w))};
}

// The lane's raw operand piece of quad q, row half h (0: row g, 1: g + 8) from
// its stage's W slots: as copied, or (mixed form) its two fp32 copies rounded
// to T and packed, column order kept.
template <typename T, typename WT, typename Smem>
CPG_DEVICE uint4 raw_piece(Smem smem, int w_vec, int q, int h) {
  constexpr int kSources = source_vecs<T, WT>();
  if constexpr (kSources == 1) {
    return cpgdev::load16(&smem[w_vec + (q * 2 + h) * kWarpSize]);
  } else {
    return rounded_piece<T>(cpgdev::load16(&smem[w_vec + ((q * 2) * 2 + h) * kWarpSize]),
                            cpgdev::load16(&smem[w_vec + ((q * 2 + 1) * 2 + h) * kWarpSize]));
  }
}

// Where each n8 tile of the group reads x and (multi-task) whose bits: fixed
// for the whole kernel.
template <int kTiles>
struct TileRows {
  int x_vec[kTiles];      // uint4 index of this lane's x row at column t kV; -1: zeros
  int bits_task[kTiles];  // uint4 offset of the tile's task's bits, where a task begins
  int used;               // tiles holding the group's rows
};

template <typename T, int kTiles, typename WT>
CPG_DEVICE TileRows<kTiles> tile_rows(const MaskedGemm<T, WT>& g, const Shape& s, const Block& b) {
  TileRows<kTiles> r;
  const int tpt = s.tiles_per_task, M = static_cast<int>(g.M);
  r.used = b.tasks * tpt;
#pragma unroll
  for (int nt = 0; nt < kTiles; ++nt) {
    const int task = nt / tpt, row = (nt % tpt) * 8 + b.g;
    const bool valid = nt < r.used && row < M;
    r.x_vec[nt] = valid ? s.x_offset + ((task * M + row) * s.x_stride) / vec_elems<T>() + b.t : -1;
    r.bits_task[nt] = nt % tpt == 0 ? task * kBitsSlotVecs : -1;
  }
  return r;
}

// acc[tile] += W'[tile rows, chunk] . x[tile's rows, chunk] for the chunk at
// cursor c (landed and visible to the warp).
template <typename T, typename WT, int kTiles, bool kMultiTask, typename Smem>
CPG_DEVICE void multiply(const Shape& s, const Block& b, const TileRows<kTiles>& tiles,
                         const Cursor& c, Smem smem, float (&acc)[kTiles][4]) {
  const int w_vec = b.w_vec + c.stage * kWSlotVecs;
  const int bits_vec = b.bits_vec + c.stage * s.tasks_per_group * kBitsSlotVecs + b.g;
  const int x_col = c.local_col / vec_elems<T>();
#pragma unroll
  for (int q = 0; q < chunk_quads<T, WT>(); ++q) {
    const uint4 raw0 = raw_piece<T, WT>(smem, w_vec, q, 0);
    const uint4 raw1 = raw_piece<T, WT>(smem, w_vec, q, 1);
    uint4 w0 = {}, w1 = {};
    if constexpr (!kMultiTask) {
      w0 = masked_piece<T>(raw0, cpgdev::load16(&smem[bits_vec]), q, b.t);
      w1 = masked_piece<T>(raw1, cpgdev::load16(&smem[bits_vec + 8]), q, b.t);
    }
#pragma unroll
    for (int nt = 0; nt < kTiles; ++nt) {
      if (nt >= tiles.used) break;  // uniform: the group's rows end
      if constexpr (kMultiTask) {
        if (tiles.bits_task[nt] >= 0) {  // a task's first tile: its W'
          const int words = bits_vec + tiles.bits_task[nt];
          w0 = masked_piece<T>(raw0, cpgdev::load16(&smem[words]), q, b.t);
          w1 = masked_piece<T>(raw1, cpgdev::load16(&smem[words + 8]), q, b.t);
        }
      }
      uint4 xv = {};
      if (tiles.x_vec[nt] >= 0) xv = cpgdev::load16(&smem[tiles.x_vec[nt] + x_col + q * 4]);
      const uint32_t a0[4] = {w0.x, w1.x, w0.y, w1.y}, b0[2] = {xv.x, xv.y};
      const uint32_t a1[4] = {w0.z, w1.z, w0.w, w1.w}, b1[2] = {xv.z, xv.w};
      mma_step<T>(acc[nt], a0, b0);
      mma_step<T>(acc[nt], a1, b1);
    }
  }
}

// A tile's end: the warps' sums meet in shared memory and are added in warp
// order; y (+ bias) is written, or this split's fp32 partial sums.
template <typename T, typename WT, int kTiles, typename Smem>
CPG_DEVICE void finish_tile(const MaskedGemm<T, WT>& g, const Shape& s, const Block& b,
                            int64_t tile, const float (&acc)[kTiles][4], Smem smem,
                            float* partials) {
  constexpr int kCols = 8 * kTiles;  // sums per W row: x rows of the tiles
#pragma unroll
  for (int nt = 0; nt < kTiles; ++nt) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {  // c0 (g, 2t), c1 (g, 2t + 1), c2 (g + 8, 2t), c3 ...
      const int row = b.g + 8 * (r / 2), col = nt * 8 + 2 * b.t + r % 2;
      const int idx = (b.warp * kTileRows + row) * kCols + col;
      *word_at<float>(smem, s.sums_offset + idx / 4, idx % 4) = acc[nt][r];
    }
  }
  cpgdev::syncthreads();
  const int task_cols = 8 * s.tiles_per_task;
  for (int i = static_cast<int>(threadIdx.x); i < kTileRows * kCols; i += kThreads) {
    const int row = i % kTileRows, col = i / kTileRows;
    const int task = col / task_cols, m = col % task_cols;
    const int64_t n = tile * kTileRows + row;
    if (task >= b.tasks || m >= g.M || n >= g.N) continue;
    float sum = 0.0f;
    for (int w = 0; w < kWarps; ++w) {
      const int idx = (w * kTileRows + row) * kCols + col;
      sum += *word_at<float>(smem, s.sums_offset + idx / 4, idx % 4);
    }
    const int64_t t = b.first_task + task;
    if (partials != nullptr) {
      const int64_t split = blockIdx.y;
      partials[((split * g.tasks + t) * g.M + m) * g.N + n] = sum;
    } else {
      if (g.bias != nullptr) sum += cpgdev::to_float(g.bias[n]);
      g.out[t * g.out_task_stride + planar_offset(m, n, g.N, g.out_plane)] =
          cpgdev::from_float<T>(sum);
    }
  }
  cpgdev::syncthreads();  // the sums are read before the next tile writes them
}

// The kernels' body. Grid (row_blocks, splits, groups), kThreads threads,
// s.smem_bytes of dynamic shared memory `smem`. partials: null when splits == 1,
// else [splits][T * M][N].
template <typename T, typename WT, int kTiles, bool kMultiTask, typename Smem>
CPG_DEVICE void stream_body(const MaskedGemm<T, WT>& g, const Shape& s, float* partials,
                            Smem smem) {
  const Block b = block_of(g, s);
  const TileRows<kTiles> tiles = tile_rows<T, kTiles>(g, s, b);
  const uint64_t policy = cpgdev::l2_evict_first();

  IssueCursor<T, WT> ahead;  // the next position to issue
  static_cast<Cursor&>(ahead) = first_position<WT>(b);
  ahead.start_tile(g, s, b);
#pragma unroll
  for (int p = 0; p < kStages - 1; ++p) {
    if (p < b.positions) {
      issue<T, WT, kMultiTask, kTiles>(g, s, b, ahead, policy, smem);
      ahead.advance(g, s, b);
    }
    cpgdev::cp_async_commit();
  }
  Cursor now = first_position<WT>(b);  // the position multiplied
  for (int tile_i = 0; tile_i < b.tiles; ++tile_i) {
    float acc[kTiles][4] = {};
    for (int j = 0; j < b.warp_chunks; ++j) {
      cpgdev::cp_async_wait<kStages - 2>();  // the position has landed (for this lane)
      round_staged_x<T>(s, b, now, smem);
      cpgdev::syncwarp();  // ... and for the warp; the previous stage is no longer read
      if (ahead.tile_i < b.tiles) {
        issue<T, WT, kMultiTask, kTiles>(g, s, b, ahead, policy, smem);
        ahead.advance(g, s, b);
      }
      cpgdev::cp_async_commit();
      multiply<T, WT, kTiles, kMultiTask>(s, b, tiles, now, smem, acc);
      now.advance<WT>(b);
    }
    finish_tile<T, WT, kTiles>(g, s, b,
                               static_cast<int64_t>(blockIdx.x) + int64_t{tile_i} * s.row_blocks,
                               acc, smem, partials);
  }
  cpgdev::cp_async_wait<0>();
}

template <typename T, int kTiles, bool kMultiTask>
CPG_GLOBAL void CPG_LAUNCH_BOUNDS(kThreads)
    masked_linear_stream_kernel(MaskedGemm<T> g, Shape s, float* partials) {
  CPG_DYNAMIC_SHARED(uint4, smem);
  stream_body<T, T, kTiles, kMultiTask>(g, s, partials, smem);
}

// The mixed form: W stored as fp32, T 16-bit.
template <typename T, int kTiles, bool kMultiTask>
CPG_GLOBAL void CPG_LAUNCH_BOUNDS(kThreads)
    masked_linear_f32_weight_stream_kernel(MaskedGemm<T, float> g, Shape s, float* partials) {
  CPG_DYNAMIC_SHARED(uint4, smem);
  stream_body<T, float, kTiles, kMultiTask>(g, s, partials, smem);
}

// The kernel of the form: masked_linear_stream_kernel, or the mixed one.
template <typename T, typename WT, int kTiles, bool kMultiTask>
auto stream_kernel() {
  if constexpr (std::is_same<T, WT>::value) {
    return &masked_linear_stream_kernel<T, kTiles, kMultiTask>;
  } else {
    return &masked_linear_f32_weight_stream_kernel<T, kTiles, kMultiTask>;
  }
}

// y[t, m, n] = the splits' partial sums added in split order (+ bias), as T.
// (g's W is not read: the mixed form passes its problem without it, as_output_gemm.)
template <typename T>
CPG_GLOBAL void CPG_LAUNCH_BOUNDS(kThreads)
    sum_splits_kernel(MaskedGemm<T> g, const float* partials, int splits) {
  const int64_t count = g.tasks * g.M * g.N;
  for (int64_t i = global_thread_index(); i < count; i += global_thread_count()) {
    float sum = partials[i];
    for (int split = 1; split < splits; ++split) sum += partials[split * count + i];
    const int64_t row = i / g.N, n = i % g.N;
    if (g.bias != nullptr) sum += cpgdev::to_float(g.bias[n]);
    const int64_t t = row / g.M, m = row % g.M;
    g.out[t * g.out_task_stride + planar_offset(m, n, g.N, g.out_plane)] =
        cpgdev::from_float<T>(sum);
  }
}

// g's output side (a, bits, bias, out, shape) without its W, for the partial sums' kernel.
template <typename T, typename WT>
MaskedGemm<T> as_output_gemm(const MaskedGemm<T, WT>& g) {
  if constexpr (std::is_same<T, WT>::value) return g;
  MaskedGemm<T> o;
  o.a = g.a;
  o.w = nullptr;
  o.bits = g.bits;
  o.bias = g.bias;
  o.out = g.out;
  o.M = g.M;
  o.N = g.N;
  o.K = g.K;
  o.words = g.words;
  o.tasks = g.tasks;
  o.a_task_stride = g.a_task_stride;
  o.bits_task_stride = g.bits_task_stride;
  o.out_task_stride = g.out_task_stride;
  o.a_plane = g.a_plane;
  o.out_plane = g.out_plane;
  return o;
}

// How a group's rows sit in the mma tiles, and the shared memory a block
// needs besides its staged x.
struct Layout {
  int tiles_per_task;  // n8 tiles of one task's rows
  int tasks_per_group;
  int tiles;              // the kernel's kTiles: the group's tiles, rounded up to 1, 2, 4, 8
  int64_t group_rows;     // x rows of a full group
  int64_t fixed_bytes;    // W ring, bits ring, warps' sums
  int64_t x_chunk_bytes;  // of one staged x row per chunk
};

template <typename T, typename WT>
Layout layout_of(const MaskedGemm<T, WT>& g) {
  Layout l;
  l.tiles_per_task = static_cast<int>(ceil_div(g.M, 8));
  const int64_t per_group = kMaxTiles / l.tiles_per_task;
  l.tasks_per_group = static_cast<int>(g.tasks < per_group ? g.tasks : per_group);
  const int used = l.tasks_per_group * l.tiles_per_task;
  l.tiles = used <= 1 ? 1 : used <= 2 ? 2 : used <= 4 ? 4 : 8;
  l.group_rows = int64_t{l.tasks_per_group} * g.M;
  const int64_t w_bytes = int64_t{kWarps} * kStages * kWSlotVecs * kVecBytes;
  const int64_t bits_bytes =
      int64_t{kWarps} * kStages * l.tasks_per_group * kBitsSlotVecs * kVecBytes;
  const int64_t sums_bytes = int64_t{kWarps} * kTileRows * 8 * l.tiles * 4;
  l.fixed_bytes = w_bytes + bits_bytes + sums_bytes;
  l.x_chunk_bytes = int64_t{chunk_cols<WT>()} * static_cast<int64_t>(sizeof(T));
  return l;
}

// The most chunks of a split whose x a block can stage with blocks_per_sm
// blocks per multiprocessor (each then takes an even share; 0: it does not
// fit).
inline int64_t max_chunks_per_split(const Layout& l, const cpgdev::SmemLimits& smem,
                                    int blocks_per_sm) {
  const int64_t share = int64_t{smem.per_sm} / blocks_per_sm - smem.reserved_per_block;
  const int64_t limit = share < smem.per_block ? share : smem.per_block;
  if (limit <= l.fixed_bytes) return 0;
  const int64_t x_room = (limit - l.fixed_bytes) / l.group_rows - kXRowPadBytes;
  return x_room < 0 ? 0 : x_room / l.x_chunk_bytes;
}

// Whether the kernel takes g: tensor cores allowed (16-bit, or fp32 with
// TF32), at most kMaxRows rows per task, W rows and x rows in whole 16-byte
// vectors from 16-byte aligned operands, row-major x with the tasks' rows
// back to back (a group's rows are staged as one matrix), and one block of
// one chunk per split fitting the device's shared memory `smem`.
template <typename T, typename WT>
bool supports(const MaskedGemm<T, WT>& g, bool allow_tf32, const cpgdev::SmemLimits& smem) {
  return tensor_cores_allowed<T>(allow_tf32) && g.M >= 1 && g.M <= kMaxRows && g.K > 0 && g.N > 0 &&
         (g.K * static_cast<int64_t>(sizeof(T))) % kVecBytes == 0 &&
         (g.K * static_cast<int64_t>(sizeof(WT))) % kVecBytes == 0 && is_aligned16(g.w) &&
         is_aligned16(g.a) && g.a_plane == 1 && g.a_task_stride == g.M * g.K &&
         max_chunks_per_split(layout_of(g), smem, 1) >= 1;
}

// A launch: the kernel's kTiles and kMultiTask, its shape and grid, and the
// fp32 partial sums when K is split.
struct Plan {
  int tiles;
  bool multitask;
  Shape shape;
  dim3 grid;
  int64_t partials_bytes;  // 0 without splits
};

// The split of K and the blocks that stream W with the least work on the
// most loaded multiprocessor (in chunks), plus the splits' partial sums, for
// sm_count multiprocessors with shared memory `smem` (one block per SM may
// take all a block may, two take half each). Requires supports(g, ...).
template <typename T, typename WT>
Plan plan(const MaskedGemm<T, WT>& g, int sm_count, const cpgdev::SmemLimits& smem) {
  Plan p;
  Shape& s = p.shape;
  const Layout l = layout_of(g);
  s.tiles_per_task = l.tiles_per_task;
  s.tasks_per_group = l.tasks_per_group;
  p.tiles = l.tiles;
  p.multitask = s.tasks_per_group > 1;
  const int64_t groups = ceil_div(g.tasks, s.tasks_per_group);
  const int64_t group_rows = l.group_rows;
  s.row_tiles = ceil_div(g.N, kTileRows);
  s.chunks = ceil_div(g.K, chunk_cols<WT>());
  const int64_t rows_total = g.tasks * g.M;

  int64_t best_cost = -1;
  for (int blocks_per_sm = 2; blocks_per_sm >= 1; --blocks_per_sm) {
    const int64_t max_cps = max_chunks_per_split(l, smem, blocks_per_sm);
    if (max_cps < 1) continue;
    const int64_t slots = int64_t{blocks_per_sm} * sm_count;
    // Beyond two waves' worth of blocks more splits cannot help.
    const int64_t min_splits = ceil_div(s.chunks, max_cps);
    const int64_t wave_splits = ceil_div(2 * slots, groups * s.row_tiles) + 1;
    const int64_t max_splits = min_splits > wave_splits ? min_splits : wave_splits;
    int64_t last_cps = 0;
    for (int64_t splits = min_splits; splits <= max_splits && splits <= s.chunks; ++splits) {
      const int64_t cps = ceil_div(s.chunks, splits);
      if (cps == last_cps) continue;
      last_cps = cps;
      const int64_t real_splits = ceil_div(s.chunks, cps);
      int64_t row_blocks = slots / (groups * real_splits);
      row_blocks = row_blocks < 1 ? 1 : row_blocks > s.row_tiles ? s.row_tiles : row_blocks;
      const int64_t blocks = row_blocks * real_splits * groups;
      const int64_t per_block = ceil_div(s.row_tiles, row_blocks) * ceil_div(cps, kWarps) * kWarps;
      int64_t cost = ceil_div(blocks, sm_count) * per_block;
      if (real_splits > 1) {
        const int64_t partial_bytes = 2 * real_splits * rows_total * g.N * 4;
        cost += ceil_div(partial_bytes, int64_t{kTileRows} * kChunkBytes * sm_count) +
                kSplitLaunchChunks;
      }
      if (best_cost < 0 || cost < best_cost) {
        best_cost = cost;
        s.splits = static_cast<int>(real_splits);
        s.chunks_per_split = static_cast<int>(cps);
        s.row_blocks = static_cast<int>(row_blocks);
        s.blocks_per_sm = blocks_per_sm;
      }
    }
  }
  const int64_t x_cols = int64_t{s.chunks_per_split} * chunk_cols<WT>();
  s.x_stride = static_cast<int>(x_cols + kXRowPadBytes / static_cast<int64_t>(sizeof(T)));
  s.bits_offset = kWarps * kStages * kWSlotVecs;
  s.sums_offset = s.bits_offset + kWarps * kStages * s.tasks_per_group * kBitsSlotVecs;
  s.x_offset = static_cast<int>(l.fixed_bytes / kVecBytes);
  s.smem_bytes = static_cast<int>(l.fixed_bytes + group_rows * s.x_stride * sizeof(T));
  p.grid = dim3(static_cast<unsigned>(s.row_blocks), static_cast<unsigned>(s.splits),
                static_cast<unsigned>(groups));
  p.partials_bytes = s.splits > 1 ? int64_t{4} * s.splits * rows_total * g.N : 0;
  return p;
}

template <typename T, typename WT>
void launch(const MaskedGemm<T, WT>& g, cpgdev::stream_t stream) {
  const Plan p = plan(g, cpgdev::sm_count(), cpgdev::smem_limits());
  DeviceWorkspace partials(static_cast<size_t>(p.partials_bytes), stream);
  float* sums = p.shape.splits > 1 ? partials.as<float>() : nullptr;
  auto run = [&](auto kernel) {
    cpgdev::set_max_dynamic_smem(kernel, p.shape.smem_bytes);
    if constexpr (std::is_same<T, WT>::value) {
      CPG_LAUNCH(kernel, p.grid, kThreads, p.shape.smem_bytes, stream, g, p.shape, sums);
    } else {  // its own name in the emulator's launch log
      auto f32_weight_kernel = kernel;
      CPG_LAUNCH(f32_weight_kernel, p.grid, kThreads, p.shape.smem_bytes, stream, g, p.shape, sums);
    }
  };
  if (p.multitask) {
    switch (p.tiles) {
      case 2: run(stream_kernel<T, WT, 2, true>()); break;
      case 4: run(stream_kernel<T, WT, 4, true>()); break;
      default: run(stream_kernel<T, WT, 8, true>()); break;
    }
  } else {
    switch (p.tiles) {
      case 1: run(stream_kernel<T, WT, 1, false>()); break;
      case 2: run(stream_kernel<T, WT, 2, false>()); break;
      case 4: run(stream_kernel<T, WT, 4, false>()); break;
      default: run(stream_kernel<T, WT, 8, false>()); break;
    }
  }
  if (p.shape.splits > 1) {
    auto* sum_kernel = &sum_splits_kernel<T>;
    CPG_LAUNCH(sum_kernel, grid_stride_blocks(g.tasks * g.M * g.N, kThreads), kThreads, 0, stream,
               as_output_gemm(g), sums, p.shape.splits);
  }
  partials.release();
}

// The launches launch(g, ...) makes on sm_count multiprocessors, appended to
// `out`.
template <typename T, typename WT>
void describe(const MaskedGemm<T, WT>& g, int sm_count, LaunchPlan& out) {
  const Plan p = plan(g, sm_count, kSm90Smem);
  const Shape& s = p.shape;
  const char* kernel = std::is_same<T, WT>::value
                           ? "weight_stream::masked_linear_stream_kernel<"
                           : "weight_stream::masked_linear_f32_weight_stream_kernel<";
  out.push_back(planned_launch(kernel + type_name<T>() + ", " + std::to_string(p.tiles) + ", " +
                                   (p.multitask ? "true" : "false") + ">",
                               p.grid, kThreads, s.smem_bytes,
                               {{"M", g.M},
                                {"N", g.N},
                                {"K", g.K},
                                {"tasks", g.tasks},
                                {"tiles", p.tiles},
                                {"tasks_per_group", s.tasks_per_group},
                                {"tiles_per_task", s.tiles_per_task},
                                {"row_tiles", s.row_tiles},
                                {"row_blocks", s.row_blocks},
                                {"splits", s.splits},
                                {"chunks", s.chunks},
                                {"chunks_per_split", s.chunks_per_split},
                                {"chunk_bytes", kChunkBytes},
                                {"weight_bytes", static_cast<int64_t>(sizeof(WT))},
                                {"quads", chunk_quads<T, WT>()},
                                {"stages", kStages},
                                {"warps", kWarps},
                                {"blocks_per_sm", s.blocks_per_sm}},
                               p.partials_bytes));
  if (s.splits == 1) return;
  const int64_t count = g.tasks * g.M * g.N;
  out.push_back(planned_launch("weight_stream::sum_splits_kernel<" + type_name<T>() + ">",
                               dim3(grid_stride_blocks(count, kThreads, sm_count)), kThreads, 0,
                               {{"elements", count}, {"splits", s.splits}}));
}

}  // namespace weight_stream
}  // namespace CPG_KERNEL_NS
}  // namespace cpg
