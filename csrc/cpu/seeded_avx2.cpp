// AVX2 instance of the seeded-weight kernels: 8 Philox blocks per vector; a lane mask vector is
// built from 8 bits (broadcast, and, compare) for the masked weight loads and the sign blend.
#include <immintrin.h>

#include "seeded_cpu.h"

#if defined(__x86_64__) || defined(_M_X64)

RTL_TARGET_BEGIN("avx2,fma")

namespace rtl_seeded::avx2 {

struct V {
  static constexpr int L = 8;
  typedef __m256 vec;
  static inline __m256i lanes(uint32_t bits) {
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits)), bit), bit);
  }
  static inline vec zero() { return _mm256_setzero_ps(); }
  static inline vec bcast(float f) { return _mm256_set1_ps(f); }
  static inline vec fmadd(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
  static inline vec load_lim(const float* p, uint32_t lim) { return _mm256_maskload_ps(p, lanes(lim)); }
  static inline vec load_bits(const float* p, uint32_t m) { return _mm256_maskload_ps(p, lanes(m)); }
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
  static inline void mulhilo(__m256i a, __m256i b, __m256i& hi, __m256i& lo) {
    const __m256i pe = _mm256_mul_epu32(a, b), po = _mm256_mul_epu32(a, _mm256_srli_epi64(b, 32));
    lo = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
    hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
  }
  static inline void philox(uint32_t key_lo, uint32_t key_hi, uint64_t b, uint32_t* out) {
    alignas(32) uint32_t lo[8], hi[8];
    for (int l = 0; l < 8; ++l) {
      lo[l] = static_cast<uint32_t>(b + l);
      hi[l] = static_cast<uint32_t>((b + l) >> 32);
    }
    __m256i c0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo)), c1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi));
    __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
    __m256i k0 = _mm256_set1_epi32(static_cast<int>(key_lo)), k1 = _mm256_set1_epi32(static_cast<int>(key_hi));
    const __m256i A = _mm256_set1_epi32(static_cast<int>(kRoundA)), B = _mm256_set1_epi32(static_cast<int>(kRoundB));
    const __m256i KA = _mm256_set1_epi32(static_cast<int>(kKeyA)), KB = _mm256_set1_epi32(static_cast<int>(kKeyB));
    for (int r = 0; r < 10; ++r) {
      __m256i hb, lb, ha, la;
      mulhilo(B, c2, hb, lb);
      mulhilo(A, c0, ha, la);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hb, c1), k0);
      c2 = _mm256_xor_si256(_mm256_xor_si256(ha, c3), k1);
      c1 = lb;
      c3 = la;
      k0 = _mm256_add_epi32(k0, KA);
      k1 = _mm256_add_epi32(k1, KB);
    }
    alignas(32) uint32_t t[4][8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(t[0]), c0);
    _mm256_store_si256(reinterpret_cast<__m256i*>(t[1]), c1);
    _mm256_store_si256(reinterpret_cast<__m256i*>(t[2]), c2);
    _mm256_store_si256(reinterpret_cast<__m256i*>(t[3]), c3);
    for (int l = 0; l < 8; ++l)
      for (int j = 0; j < 4; ++j) out[4 * l + j] = t[j][l];
  }
};

}  // namespace rtl_seeded::avx2

#define RTL_SEEDED_NS rtl_seeded::avx2
#include "seeded_impl.h"
#undef RTL_SEEDED_NS

const rtl_seeded::Ops rtl_seeded::kOpsAvx2 = {"avx2", avx2::forward, avx2::grad_x, avx2::generate};

RTL_TARGET_END

#endif  // x86-64
