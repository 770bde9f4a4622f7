// AVX-512 instance of the seeded-weight kernels: 16 Philox blocks per vector (vpmuludq on even
// and odd lanes), a 16-bit slice of the sign stream is directly the blend mask.
#include <immintrin.h>

#include "seeded_cpu.h"

#if defined(__x86_64__) || defined(_M_X64)

RTL_TARGET_BEGIN("avx512f,avx512bw,avx512vl,avx512dq,fma,avx2")

namespace rtl_seeded::avx512 {

struct V {
  static constexpr int L = 16;
  typedef __m512 vec;
  static inline vec zero() { return _mm512_setzero_ps(); }
  static inline vec bcast(float f) { return _mm512_set1_ps(f); }
  static inline vec fmadd(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
  static inline vec load_lim(const float* p, uint32_t lim) { return _mm512_maskz_loadu_ps(static_cast<__mmask16>(lim), p); }
  static inline vec load_bits(const float* p, uint32_t m) { return _mm512_maskz_loadu_ps(static_cast<__mmask16>(m), p); }
  static inline void store_lim(float* p, vec v, uint32_t lim) { _mm512_mask_storeu_ps(p, static_cast<__mmask16>(lim), v); }
  static inline float reduce(vec v) { return _mm512_reduce_add_ps(v); }
  static inline void signs(uint32_t bits, float s, float* out) {
    _mm512_storeu_ps(out, _mm512_mask_blend_ps(static_cast<__mmask16>(bits), _mm512_set1_ps(-s), _mm512_set1_ps(s)));
  }
  static inline void mulhilo(__m512i a, __m512i b, __m512i& hi, __m512i& lo) {
    const __m512i pe = _mm512_mul_epu32(a, b), po = _mm512_mul_epu32(a, _mm512_srli_epi64(b, 32));
    lo = _mm512_mask_blend_epi32(0xAAAA, pe, _mm512_slli_epi64(po, 32));
    hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(pe, 32), po);
  }
  // blocks b .. b + 15, written in stream order: out[4 * lane + word]
  static inline void philox(uint32_t key_lo, uint32_t key_hi, uint64_t b, uint32_t* out) {
    alignas(64) uint32_t lo[16], hi[16];
    for (int l = 0; l < 16; ++l) {
      lo[l] = static_cast<uint32_t>(b + l);
      hi[l] = static_cast<uint32_t>((b + l) >> 32);
    }
    __m512i c0 = _mm512_load_si512(lo), c1 = _mm512_load_si512(hi), c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
    __m512i k0 = _mm512_set1_epi32(static_cast<int>(key_lo)), k1 = _mm512_set1_epi32(static_cast<int>(key_hi));
    const __m512i A = _mm512_set1_epi32(static_cast<int>(kRoundA)), B = _mm512_set1_epi32(static_cast<int>(kRoundB));
    const __m512i KA = _mm512_set1_epi32(static_cast<int>(kKeyA)), KB = _mm512_set1_epi32(static_cast<int>(kKeyB));
    for (int r = 0; r < 10; ++r) {
      __m512i hb, lb, ha, la;
      mulhilo(B, c2, hb, lb);
      mulhilo(A, c0, ha, la);
      c0 = _mm512_xor_si512(_mm512_xor_si512(hb, c1), k0);
      c2 = _mm512_xor_si512(_mm512_xor_si512(ha, c3), k1);
      c1 = lb;
      c3 = la;
      k0 = _mm512_add_epi32(k0, KA);
      k1 = _mm512_add_epi32(k1, KB);
    }
    // transpose 4 x 16 -> 16 x 4 (stream order) with two unpack levels and a lane permute
    const __m512i t0 = _mm512_unpacklo_epi32(c0, c1), t1 = _mm512_unpackhi_epi32(c0, c1);
    const __m512i t2 = _mm512_unpacklo_epi32(c2, c3), t3 = _mm512_unpackhi_epi32(c2, c3);
    const __m512i u0 = _mm512_unpacklo_epi64(t0, t2), u1 = _mm512_unpackhi_epi64(t0, t2);
    const __m512i u2 = _mm512_unpacklo_epi64(t1, t3), u3 = _mm512_unpackhi_epi64(t1, t3);
    // u0 holds blocks (0, 4, 8, 12), u1 (1, 5, 9, 13), u2 (2, 6, 10, 14), u3 (3, 7, 11, 15), 128 bits each
    alignas(64) uint32_t tmp[64];
    _mm512_store_si512(tmp, u0);
    _mm512_store_si512(tmp + 16, u1);
    _mm512_store_si512(tmp + 32, u2);
    _mm512_store_si512(tmp + 48, u3);
    for (int q = 0; q < 4; ++q)        // 128-bit lane q of each u holds block 4 q + (which u)
      for (int which = 0; which < 4; ++which)
        for (int j = 0; j < 4; ++j) out[(4 * q + which) * 4 + j] = tmp[which * 16 + q * 4 + j];
  }
};

}  // namespace rtl_seeded::avx512

#define RTL_SEEDED_NS rtl_seeded::avx512
#include "seeded_impl.h"
#undef RTL_SEEDED_NS

const rtl_seeded::Ops rtl_seeded::kOpsAvx512 = {"avx512", avx512::forward, avx512::grad_x, avx512::generate};

RTL_TARGET_END

#endif  // x86-64
