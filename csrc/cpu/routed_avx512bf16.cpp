// AVX512-BF16 forward for bf16 weights: a full 32-bit mask word is the __mmask32 of a masked
// 32 x bf16 load, and vdpbf16ps multiplies 32 bf16 pairs into 16 fp32 sums with no conversion.
// Other ops (and fp32) use the AVX-512 instance.
#include <immintrin.h>

#include "routed_cpu.h"

#if defined(__x86_64__) || defined(_M_X64)

RTL_TARGET_BEGIN("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,avx2")

namespace rtl_cpu::avx512bf16 {

using rtl_cpu::Problem;

constexpr int64_t kColChunk = 2048;  // 4 KiB of a row; a multiple of 32, so every block starts on a mask word
constexpr int kRN = 4;

static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

template <int RT, int RN>
static void tile(const Problem& p, const int64_t* rows, const uint32_t* const* mrow, int64_t n, int64_t c0, int64_t c1, const float* bias, float* y) {
  const uint16_t* x = static_cast<const uint16_t*>(p.x);
  const uint16_t* w = static_cast<const uint16_t*>(p.w);
  const uint16_t* xr[RT];
  const uint16_t* wr[RN];
  RTL_UNROLL
  for (int t = 0; t < RT; ++t) xr[t] = x + rows[t] * p.C;
  RTL_UNROLL
  for (int r = 0; r < RN; ++r) wr[r] = w + (n + r) * p.C;
  __m512 acc[RT][RN];
  RTL_UNROLL
  for (int t = 0; t < RT; ++t)
    RTL_UNROLL
    for (int r = 0; r < RN; ++r) acc[t][r] = _mm512_setzero_ps();
  int64_t c = c0;
  for (; c + 32 <= c1; c += 32) {
    __m512i xv[RT];
    RTL_UNROLL
    for (int t = 0; t < RT; ++t) xv[t] = _mm512_loadu_si512(xr[t] + c);
    RTL_UNROLL
    for (int r = 0; r < RN; ++r) {
      const __m512i wv = _mm512_maskz_loadu_epi16(_load_mask32(const_cast<__mmask32*>(reinterpret_cast<const __mmask32*>(mrow[r] + (c >> 5)))), wr[r] + c);
      RTL_UNROLL
      for (int t = 0; t < RT; ++t) acc[t][r] = _mm512_dpbf16_ps(acc[t][r], (__m512bh)xv[t], (__m512bh)wv);
    }
  }
  if (c < c1) {  // last block of a row: fewer than 32 columns left
    const __mmask32 lim = static_cast<__mmask32>((1u << (c1 - c)) - 1u);
    __m512i xv[RT];
    RTL_UNROLL
    for (int t = 0; t < RT; ++t) xv[t] = _mm512_maskz_loadu_epi16(lim, xr[t] + c);
    RTL_UNROLL
    for (int r = 0; r < RN; ++r) {
      const __m512i wv = _mm512_maskz_loadu_epi16(static_cast<__mmask32>(mrow[r][c >> 5]) & lim, wr[r] + c);
      RTL_UNROLL
      for (int t = 0; t < RT; ++t) acc[t][r] = _mm512_dpbf16_ps(acc[t][r], (__m512bh)xv[t], (__m512bh)wv);
    }
  }
  const bool first = c0 == 0 && bias != nullptr;
  RTL_UNROLL
  for (int t = 0; t < RT; ++t)
    RTL_UNROLL
    for (int r = 0; r < RN; ++r) y[rows[t] * p.N + n + r] += _mm512_reduce_add_ps(acc[t][r]) + (first ? bias[n + r] : 0.0f);
}

template <int RT>
static void rows_tile(const Problem& p, int64_t k, const int64_t* rows, int64_t nb, int64_t nb_end, int64_t c0, int64_t c1, const float* bias, float* y) {
  for (int64_t n = nb; n < nb_end; n += kRN) {
    const int rn = static_cast<int>(imin(kRN, nb_end - n));
    const uint32_t* mrow[kRN];
    for (int r = 0; r < rn; ++r) mrow[r] = p.bits + (k * p.N + n + r) * p.words;
    if (rn == kRN)
      tile<RT, kRN>(p, rows, mrow, n, c0, c1, bias, y);
    else
      for (int r = 0; r < rn; ++r) tile<RT, 1>(p, rows, mrow + r, n + r, c0, c1, bias, y);
  }
}

// same weight-stationary schedule as the generic forward (see routed_cpu_impl.h)
static void forward(const Problem& p, const float* bias, float* y, int64_t n0, int64_t n1) {
  if (p.dtype != rtl_cpu::kBFloat16) return rtl_cpu::kOpsAvx512.forward(p, bias, y, n0, n1);
  for (int64_t nb = n0; nb < n1; nb += rtl_cpu::kRowBlock) {
    const int64_t nb_end = imin(nb + rtl_cpu::kRowBlock, n1);
    for (int64_t c0 = 0;; c0 += kColChunk) {
      const int64_t c1 = imin(c0 + kColChunk, p.C);
      for (int64_t k = 0; k < p.K; ++k) {
        const int64_t lo = p.offsets[k], hi = p.offsets[k + 1];
        for (int64_t q = lo; q < hi;) {
          const int64_t left = hi - q;
          const int rt = left >= 4 ? 4 : (left >= 2 ? 2 : 1);
          if (rt == 4) rows_tile<4>(p, k, p.perm + q, nb, nb_end, c0, c1, bias, y);
          if (rt == 2) rows_tile<2>(p, k, p.perm + q, nb, nb_end, c0, c1, bias, y);
          if (rt == 1) rows_tile<1>(p, k, p.perm + q, nb, nb_end, c0, c1, bias, y);
          q += rt;
        }
      }
      if (c1 >= p.C) break;
    }
  }
}

static void grad_x(const Problem& p, float* dx, int64_t c0, int64_t c1) { rtl_cpu::kOpsAvx512.grad_x(p, dx, c0, c1); }
static void grad_w(const Problem& p, float* dw, int64_t n0, int64_t n1) { rtl_cpu::kOpsAvx512.grad_w(p, dw, n0, n1); }
static void materialize(const Problem& p, int64_t k, void* out, int64_t n0, int64_t n1) { rtl_cpu::kOpsAvx512.materialize(p, k, out, n0, n1); }
static void masked_add(const Problem& p, int64_t k, const float* g, float* dw, int64_t n0, int64_t n1) {
  rtl_cpu::kOpsAvx512.masked_add(p, k, g, dw, n0, n1);
}

}  // namespace rtl_cpu::avx512bf16

const rtl_cpu::Ops rtl_cpu::kOpsAvx512Bf16 = {"avx512_bf16", avx512bf16::forward, avx512bf16::grad_x, avx512bf16::grad_w, avx512bf16::materialize,
                                               avx512bf16::masked_add};

RTL_TARGET_END

#endif  // x86-64
