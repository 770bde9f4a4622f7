// AVX-512 instance of the seeded-weight kernels: 16 Philox blocks per call (seeded_simd.h), a
// 16-bit slice of the sign or mask stream is directly a lane mask.
#include <immintrin.h>

#include "seeded_cpu.h"

#if defined(__x86_64__) || defined(_M_X64)

RTL_TARGET_BEGIN("avx512f,avx512bw,avx512vl,avx512dq,fma,avx2")

#include "seeded_simd.h"  // inside the target region: its template is compiled for this ISA

namespace rtl_seeded::avx512 {

struct V {
  static constexpr int L = 16, NR = 8, RT = 3;
  typedef __m512 vec;
  typedef __m512i I;
  static inline vec zero() { return _mm512_setzero_ps(); }
  static inline vec bcast(float f) { return _mm512_set1_ps(f); }
  static inline vec add(vec a, vec b) { return _mm512_add_ps(a, b); }
  static inline vec fmadd(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
  static inline vec load(const float* p) { return _mm512_loadu_ps(p); }
  static inline vec load_lim(const float* p, uint32_t lim) { return _mm512_maskz_loadu_ps(static_cast<__mmask16>(lim), p); }
  typedef __mmask16 mask;
  // the 16 bits of columns [c, c + 16) of a mask row, read straight into a mask register
  static inline mask window(const uint32_t* row, int64_t c) { return _load_mask16(const_cast<__mmask16*>(reinterpret_cast<const __mmask16*>(row)) + (c >> 4)); }
  static inline mask clip(mask m, uint32_t lim) { return _kand_mask16(m, static_cast<__mmask16>(lim)); }
  static inline vec load_bits(const float* p, mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static inline void store(float* p, vec v) { _mm512_storeu_ps(p, v); }
  static inline void store_lim(float* p, vec v, uint32_t lim) { _mm512_mask_storeu_ps(p, static_cast<__mmask16>(lim), v); }
  static inline float reduce(vec v) { return _mm512_reduce_add_ps(v); }
  static inline void signs(uint32_t bits, float s, float* out) {
    _mm512_storeu_ps(out, _mm512_mask_blend_ps(static_cast<__mmask16>(bits), _mm512_set1_ps(-s), _mm512_set1_ps(s)));
  }
  // (2 (w >> 9) + 1 - 2^23) 2^-23 s: ((w >> 8) & ~1) | 1 is 2 (w >> 9) + 1
  static inline void uniform(const uint32_t* w, float s, float* out) {
    const I odd = _mm512_ternarylogic_epi32(_mm512_srli_epi32(_mm512_loadu_si512(w), 8), _mm512_set1_epi32(0xFFFFFE), _mm512_set1_epi32(1), 0xEA);
    const vec u = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(odd, _mm512_set1_epi32(1 << 23))), _mm512_set1_ps(0x1p-23f));
    _mm512_storeu_ps(out, _mm512_mul_ps(u, _mm512_set1_ps(s)));
  }
  // normal_values traits (seeded_impl.h)
  typedef __mmask16 cmask;
  static inline vec sub(vec a, vec b) { return _mm512_sub_ps(a, b); }
  static inline vec mul(vec a, vec b) { return _mm512_mul_ps(a, b); }
  static inline vec div(vec a, vec b) { return _mm512_div_ps(a, b); }
  static inline vec sqrt(vec a) { return _mm512_sqrt_ps(a); }
  static inline cmask lt(vec a, vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static inline vec select(cmask m, vec a, vec b) { return _mm512_mask_blend_ps(m, b, a); }
  static inline I set_i(int v) { return _mm512_set1_epi32(v); }
  static inline I add_i(I a, I b) { return _mm512_add_epi32(a, b); }
  static inline I sub_i(I a, I b) { return _mm512_sub_epi32(a, b); }
  static inline I and_i(I a, I b) { return _mm512_and_si512(a, b); }
  static inline I or_i(I a, I b) { return _mm512_or_si512(a, b); }
  template <int S>
  static inline I srl(I a) { return _mm512_srli_epi32(a, S); }
  static inline I select_i(cmask m, I a, I b) { return _mm512_mask_blend_epi32(m, b, a); }
  static inline vec cvt(I a) { return _mm512_cvtepi32_ps(a); }
  static inline I as_i(vec a) { return _mm512_castps_si512(a); }
  static inline vec as_f(I a) { return _mm512_castsi512_ps(a); }
  static inline void deinterleave(const uint32_t* w, I& even, I& odd) {
    const I a = _mm512_loadu_si512(w), b = _mm512_loadu_si512(w + 16);
    even = _mm512_permutex2var_epi32(a, _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), b);
    odd = _mm512_permutex2var_epi32(a, _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31), b);
  }
  // Philox traits (seeded_simd.h)
  static inline I set1_64(uint64_t v) { return _mm512_set1_epi64(static_cast<long long>(v)); }
  static inline I load64(const uint64_t* p) { return _mm512_load_si512(p); }
  static inline I add64(I a, I b) { return _mm512_add_epi64(a, b); }
  static inline I mul32(I a, I b) { return _mm512_mul_epu32(a, b); }
  static inline I srl32(I a) { return _mm512_srli_epi64(a, 32); }
  static inline I sll32(I a) { return _mm512_slli_epi64(a, 32); }
  static inline I xor3(I a, I b, I c) { return _mm512_ternarylogic_epi64(a, b, c, 0x96); }
  static inline I odd(I a, I b) { return _mm512_mask_blend_epi32(0xAAAA, a, b); }
  static inline I unpacklo32(I a, I b) { return _mm512_unpacklo_epi32(a, b); }
  static inline I unpackhi32(I a, I b) { return _mm512_unpackhi_epi32(a, b); }
  static inline I unpacklo64(I a, I b) { return _mm512_unpacklo_epi64(a, b); }
  static inline I unpackhi64(I a, I b) { return _mm512_unpackhi_epi64(a, b); }
  static inline void store(uint32_t* p, I v) { _mm512_storeu_si512(p, v); }
  static inline void philox(uint32_t key_lo, uint32_t key_hi, uint64_t b, uint32_t* out) { philox_simd<V>(key_lo, key_hi, b, out); }
};

}  // namespace rtl_seeded::avx512

#define RTL_SEEDED_NS rtl_seeded::avx512
#include "seeded_impl.h"
#undef RTL_SEEDED_NS

const rtl_seeded::Ops rtl_seeded::kOpsAvx512 = {"avx512", avx512::forward, avx512::grad_x, avx512::generate};

RTL_TARGET_END

#endif  // x86-64
