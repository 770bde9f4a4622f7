// AVX2 instance of the seeded-weight kernels: 8 Philox blocks per call (seeded_simd.h); a lane
// mask vector is built from 8 bits (broadcast, and, compare) for the masked loads and sign blend.
#include <immintrin.h>

#include "seeded_cpu.h"

#if defined(__x86_64__) || defined(_M_X64)

RTL_TARGET_BEGIN("avx2,fma")

#include "seeded_simd.h"  // inside the target region: its template is compiled for this ISA

namespace rtl_seeded::avx2 {

struct V {
  static constexpr int L = 8, NR = 4, RT = 2;
  typedef __m256 vec;
  typedef __m256i I;
  static inline I lanes(uint32_t bits) {
    const I bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits)), bit), bit);
  }
  static inline vec zero() { return _mm256_setzero_ps(); }
  static inline vec bcast(float f) { return _mm256_set1_ps(f); }
  static inline vec add(vec a, vec b) { return _mm256_add_ps(a, b); }
  static inline vec fmadd(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
  static inline vec load(const float* p) { return _mm256_loadu_ps(p); }
  static inline vec load_lim(const float* p, uint32_t lim) { return _mm256_maskload_ps(p, lanes(lim)); }
  typedef uint32_t mask;
  static inline mask window(const uint32_t* row, int64_t c) { return reinterpret_cast<const unsigned char*>(row)[c >> 3]; }
  static inline mask clip(mask m, uint32_t lim) { return m & lim; }
  static inline vec load_bits(const float* p, mask m) { return _mm256_and_ps(_mm256_loadu_ps(p), _mm256_castsi256_ps(lanes(m))); }
  static inline void store(float* p, vec v) { _mm256_storeu_ps(p, v); }
  static inline void store_lim(float* p, vec v, uint32_t lim) { _mm256_maskstore_ps(p, lanes(lim), v); }
  static inline float reduce(vec v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static inline void signs(uint32_t bits, float s, float* out) {
    _mm256_storeu_ps(out, _mm256_blendv_ps(_mm256_set1_ps(-s), _mm256_set1_ps(s), _mm256_castsi256_ps(lanes(bits))));
  }
  // (2 (w >> 9) + 1 - 2^23) 2^-23 s: ((w >> 8) & ~1) | 1 is 2 (w >> 9) + 1
  static inline void uniform(const uint32_t* w, float s, float* out) {
    const I sh = _mm256_srli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)), 8);
    const I odd = _mm256_or_si256(_mm256_and_si256(sh, _mm256_set1_epi32(0xFFFFFE)), _mm256_set1_epi32(1));
    const vec u = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(odd, _mm256_set1_epi32(1 << 23))), _mm256_set1_ps(0x1p-23f));
    _mm256_storeu_ps(out, _mm256_mul_ps(u, _mm256_set1_ps(s)));
  }
  // normal_values traits (seeded_impl.h)
  typedef __m256 cmask;
  static inline vec sub(vec a, vec b) { return _mm256_sub_ps(a, b); }
  static inline vec mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
  static inline vec div(vec a, vec b) { return _mm256_div_ps(a, b); }
  static inline vec sqrt(vec a) { return _mm256_sqrt_ps(a); }
  static inline cmask lt(vec a, vec b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static inline vec select(cmask m, vec a, vec b) { return _mm256_blendv_ps(b, a, m); }
  static inline I set_i(int v) { return _mm256_set1_epi32(v); }
  static inline I add_i(I a, I b) { return _mm256_add_epi32(a, b); }
  static inline I sub_i(I a, I b) { return _mm256_sub_epi32(a, b); }
  static inline I and_i(I a, I b) { return _mm256_and_si256(a, b); }
  static inline I or_i(I a, I b) { return _mm256_or_si256(a, b); }
  template <int S>
  static inline I srl(I a) { return _mm256_srli_epi32(a, S); }
  static inline I select_i(cmask m, I a, I b) { return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(b), _mm256_castsi256_ps(a), m)); }
  static inline vec cvt(I a) { return _mm256_cvtepi32_ps(a); }
  static inline I as_i(vec a) { return _mm256_castps_si256(a); }
  static inline vec as_f(I a) { return _mm256_castsi256_ps(a); }
  static inline void deinterleave(const uint32_t* w, I& even, I& odd) {
    const __m256 a = _mm256_loadu_ps(reinterpret_cast<const float*>(w)), b = _mm256_loadu_ps(reinterpret_cast<const float*>(w + 8));
    even = _mm256_permute4x64_epi64(_mm256_castps_si256(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0))), _MM_SHUFFLE(3, 1, 2, 0));
    odd = _mm256_permute4x64_epi64(_mm256_castps_si256(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1))), _MM_SHUFFLE(3, 1, 2, 0));
  }
  // Philox traits (seeded_simd.h)
  static inline I set1_64(uint64_t v) { return _mm256_set1_epi64x(static_cast<long long>(v)); }
  static inline I load64(const uint64_t* p) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(p)); }
  static inline I add64(I a, I b) { return _mm256_add_epi64(a, b); }
  static inline I mul32(I a, I b) { return _mm256_mul_epu32(a, b); }
  static inline I srl32(I a) { return _mm256_srli_epi64(a, 32); }
  static inline I sll32(I a) { return _mm256_slli_epi64(a, 32); }
  static inline I xor3(I a, I b, I c) { return _mm256_xor_si256(_mm256_xor_si256(a, b), c); }
  static inline I odd(I a, I b) { return _mm256_blend_epi32(a, b, 0xAA); }
  static inline I unpacklo32(I a, I b) { return _mm256_unpacklo_epi32(a, b); }
  static inline I unpackhi32(I a, I b) { return _mm256_unpackhi_epi32(a, b); }
  static inline I unpacklo64(I a, I b) { return _mm256_unpacklo_epi64(a, b); }
  static inline I unpackhi64(I a, I b) { return _mm256_unpackhi_epi64(a, b); }
  static inline void store(uint32_t* p, I v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  static inline void philox(uint32_t key_lo, uint32_t key_hi, uint64_t b, uint32_t* out) { philox_simd<V>(key_lo, key_hi, b, out); }
};

}  // namespace rtl_seeded::avx2

#define RTL_SEEDED_NS rtl_seeded::avx2
#include "seeded_impl.h"
#undef RTL_SEEDED_NS

const rtl_seeded::Ops rtl_seeded::kOpsAvx2 = {"avx2", avx2::forward, avx2::grad_x, avx2::generate};

RTL_TARGET_END

#endif  // x86-64
