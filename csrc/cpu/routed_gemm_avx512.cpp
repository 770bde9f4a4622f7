// Large-batch routed masked linear on AVX-512, fp32: one BLIS-style GEMM per ticket in which the
// ticket's mask is applied while the weight panel is packed (a 16-bit slice of a mask word is the
// lane mask of the load), so no masked weight copy is ever written to memory. The rows of a
// ticket are gathered while their panel is packed and the results go straight to their rows of y,
// so neither the sort nor the scatter back costs a pass of its own.
//
// Blocking: rows in blocks of kMC (packed once for all columns, transposed to [c][kMR] per
// register tile); weight rows in blocks of kNC, packed per c-block of kKC columns (transposed to
// [c][kNR], L2); a kMR x kNR register tile (24 zmm accumulators) whose packed rows (kKC x kMR =
// 12 KiB) stay in L1 while the weight micro-panels stream past it.
#include <immintrin.h>

#include "routed_cpu.h"

#if defined(__x86_64__) || defined(_M_X64)

RTL_TARGET_BEGIN("avx512f,avx512bw,avx512vl,avx512dq,fma,avx2")

#include "routed_avx512_transpose.h"

namespace rtl_cpu::avx512gemm {

using rtl_cpu::Problem;
using rtl_cpu::kGemmKC;
using rtl_cpu::kGemmMC;
using rtl_cpu::kGemmNC;
using rtl_cpu::kGemmNR;

constexpr int kMR = 12;  // rows per register tile
constexpr int64_t kTileStride = kGemmNC + 16;  // row stride of the output tile (not a multiple of 4 KiB)
static_assert(kGemmNR == 32, "the register tile holds two zmm vectors per row");
static_assert(kGemmKC % 16 == 0 && kGemmNC % kGemmNR == 0 && kGemmMC % kMR == 0, "block sizes must nest");

static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
static inline __mmask16 lanes_below(int64_t n) { return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (n > 0 ? n : 0)) - 1u); }

// transpose 16 loaded rows and store column j (its first lanes of 16 rows) at out + j * stride, j < cols
static inline void store_transposed(__m512 r[16], int64_t cols, float* out, int64_t stride, __mmask16 lanes) {
  transpose16(r);
  for (int64_t j = 0; j < cols; ++j) _mm512_mask_storeu_ps(out + j * stride, lanes, r[j]);
}

// out[(n - nb) / NR][c][(n - nb) % NR] = mask_k(n, c0 + c) ? W[n, c0 + c] : 0 for n in [nb, nb + ncols),
// c in [0, kc); weight rows at or past n_end (the caller's range) are packed as zeros
static void pack_weight(const Problem& p, int64_t k, int64_t nb, int64_t ncols, int64_t n_end, int64_t c0, int64_t kc, float* out) {
  const float* w = static_cast<const float*>(p.w);
  for (int64_t g = 0; g < ncols; g += 16) {  // 16 weight rows at a time: half of a micro-panel
    float* panel = out + (g / kGemmNR) * kGemmKC * kGemmNR + g % kGemmNR;
    const float* wr[16];
    const uint16_t* mr[16];
    int live = 0;
    for (int i = 0; i < 16; ++i) {
      const int64_t n = nb + g + i;
      if (n < n_end) {
        wr[i] = w + n * p.C + c0;
        mr[i] = reinterpret_cast<const uint16_t*>(p.bits + (k * p.N + n) * p.words) + (c0 >> 4);
        live = i + 1;
      }
    }
    for (int64_t cc = 0; cc < kc; cc += 16) {
      const __mmask16 lim = lanes_below(kc - cc);
      __m512 r[16];
      RTL_UNROLL
      for (int i = 0; i < 16; ++i)
        r[i] = i < live ? _mm512_maskz_loadu_ps(static_cast<__mmask16>(mr[i][cc >> 4] & lim), wr[i] + cc) : _mm512_setzero_ps();
      store_transposed(r, imin(16, kc - cc), panel + cc * kGemmNR, kGemmNR, static_cast<__mmask16>(0xffff));
    }
  }
}

// rows perm[q0 .. q0 + rows) of x, columns [c0, c0 + kc), packed as out[(i / kMR) * kKC * kMR + c * kMR + i % kMR]:
// the kMR rows of a register tile side by side for each column, so its broadcasts read one cache
// line; rows past `rows` up to a multiple of kMR are zero (their results are never stored)
static void pack_rows(const Problem& p, int64_t q0, int64_t rows, int64_t c0, int64_t kc, float* out) {
  const float* x = static_cast<const float*>(p.x);
  for (int64_t i0 = 0; i0 < rows; i0 += kMR) {
    const float* src[kMR];
    const int live = static_cast<int>(imin(kMR, rows - i0));
    for (int t = 0; t < live; ++t) src[t] = x + p.perm[q0 + i0 + t] * p.C + c0;
    float* panel = out + (i0 / kMR) * kGemmKC * kMR;
    for (int64_t cc = 0; cc < kc; cc += 16) {
      const __mmask16 lim = lanes_below(kc - cc);
      __m512 r[16];
      RTL_UNROLL
      for (int t = 0; t < 16; ++t) r[t] = t < live ? _mm512_maskz_loadu_ps(lim, src[t] + cc) : _mm512_setzero_ps();
      store_transposed(r, imin(16, kc - cc), panel + cc * kMR, kMR, static_cast<__mmask16>((1u << kMR) - 1u));
    }
  }
}

// one register tile (kMR packed rows x kNR packed weight rows) over kc columns into the tile
// buffer rows `out` (stride kTileStride): the first c-block stores, later ones add
template <int MR>  // MR <= kMR rows: a ticket's last rows run a shorter tile instead of padding rows
static void micro_tile(const float* a, const float* b, int64_t kc, float* out, bool first) {
  __m512 acc[MR][2];
  RTL_UNROLL
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t c = 0; c < kc; ++c) {
    const __m512 b0 = _mm512_loadu_ps(b + c * kGemmNR);
    const __m512 b1 = _mm512_loadu_ps(b + c * kGemmNR + 16);
    RTL_UNROLL
    for (int i = 0; i < MR; ++i) {
      const __m512 av = _mm512_set1_ps(a[c * kMR + i]);
      acc[i][0] = _mm512_fmadd_ps(av, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(av, b1, acc[i][1]);
    }
  }
  RTL_UNROLL
  for (int i = 0; i < MR; ++i) {
    float* o = out + i * kTileStride;
    _mm512_storeu_ps(o, first ? acc[i][0] : _mm512_add_ps(_mm512_loadu_ps(o), acc[i][0]));
    _mm512_storeu_ps(o + 16, first ? acc[i][1] : _mm512_add_ps(_mm512_loadu_ps(o + 16), acc[i][1]));
  }
}

// One block of a ticket's rows (packed in apack: all columns) times one block of kNC weight rows:
// the partial sums of every c-block gather in a contiguous tile, so the scattered output rows are
// written once, not once per c-block.
static void row_block(const Problem& p, const float* bias, float* y, int64_t k, int64_t q0, int64_t rows, int64_t nb, int64_t n1, const float* apack,
                      float* bpack, float* tile) {
  const int64_t cblocks = p.C > 0 ? (p.C + kGemmKC - 1) / kGemmKC : 0;
  const int64_t ncols = imin(kGemmNC, n1 - nb);
  if (cblocks == 0)
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < ncols; ++j) tile[i * kTileStride + j] = 0.0f;
  for (int64_t cb = 0; cb < cblocks; ++cb) {
    const int64_t c0 = cb * kGemmKC, kc = imin(kGemmKC, p.C - c0);
    pack_weight(p, k, nb, ncols, n1, c0, kc, bpack);
    const float* ablock = apack + cb * kGemmMC * kGemmKC;
    for (int64_t i = 0; i < rows; i += kMR) {
      const int64_t live = rows - i;
      const auto tile_fn = live > 8 ? micro_tile<kMR> : (live > 4 ? micro_tile<8> : micro_tile<4>);
      for (int64_t j = 0; j < ncols; j += kGemmNR)
        tile_fn(ablock + (i / kMR) * kGemmKC * kMR, bpack + (j / kGemmNR) * kGemmKC * kGemmNR, kc, tile + i * kTileStride + j, cb == 0);
    }
  }
  for (int64_t i = 0; i < rows; ++i) {
    float* o = y + p.perm[q0 + i] * p.N + nb;
    const float* t = tile + i * kTileStride;
    for (int64_t j = 0; j < ncols; j += 16) {
      const __mmask16 m = lanes_below(ncols - j);
      __m512 v = _mm512_maskz_loadu_ps(m, t + j);
      if (bias != nullptr) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bias + nb + j));
      _mm512_mask_storeu_ps(o + j, m, v);
    }
  }
}

// tickets with more rows than this run ticket by ticket (their rows packed once for all weight
// blocks); the others weight block by weight block (see forward_gemm)
constexpr int64_t kFewRows = kGemmMC / 2;

static void pack_row_block(const Problem& p, int64_t q0, int64_t rows, float* apack) {
  for (int64_t c0 = 0; c0 < p.C; c0 += kGemmKC) pack_rows(p, q0, rows, c0, imin(kGemmKC, p.C - c0), apack + (c0 / kGemmKC) * kGemmMC * kGemmKC);
}

// Per thread, for its weight rows [n0, n1). A ticket with many rows packs each block of its rows
// once and runs it against every weight block in turn (its weights stream once per ticket, paid
// for by many rows). Tickets with few rows go the other way round: one block of kNC weight rows at
// a time, every such ticket in turn, so the block's weights (kNC x C) stay in L2 across the
// tickets instead of streaming from memory once per ticket (their few rows are packed again per
// weight block, which costs little).
static void forward_gemm(const Problem& p, const float* bias, float* y, int64_t n0, int64_t n1, float* scratch) {
  const int64_t cblocks = p.C > 0 ? (p.C + kGemmKC - 1) / kGemmKC : 0;
  float* apack = scratch;                             // kMC rows x cblocks * kKC columns
  float* bpack = apack + kGemmMC * cblocks * kGemmKC;  // kNC x kKC
  float* tile = bpack + kGemmNC * kGemmKC;             // kMC x kTileStride
  for (int64_t k = 0; k < p.K; ++k) {
    const int64_t lo = p.offsets[k], hi = p.offsets[k + 1];
    if (hi - lo <= kFewRows) continue;
    for (int64_t q0 = lo; q0 < hi; q0 += kGemmMC) {
      const int64_t rows = imin(kGemmMC, hi - q0);
      pack_row_block(p, q0, rows, apack);
      for (int64_t nb = n0; nb < n1; nb += kGemmNC) row_block(p, bias, y, k, q0, rows, nb, n1, apack, bpack, tile);
    }
  }
  for (int64_t nb = n0; nb < n1; nb += kGemmNC)
    for (int64_t k = 0; k < p.K; ++k) {
      const int64_t lo = p.offsets[k], rows = p.offsets[k + 1] - lo;
      if (rows <= 0 || rows > kFewRows) continue;
      pack_row_block(p, lo, rows, apack);
      row_block(p, bias, y, k, lo, rows, nb, n1, apack, bpack, tile);
    }
}

}  // namespace rtl_cpu::avx512gemm

void rtl_cpu::forward_gemm_avx512(const Problem& p, const float* bias, float* y, int64_t n0, int64_t n1, float* scratch) {
  avx512gemm::forward_gemm(p, bias, y, n0, n1, scratch);
}

RTL_TARGET_END

#endif  // x86-64
