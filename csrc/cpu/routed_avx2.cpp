// AVX2 + FMA instance of the routed kernels (8 lanes): a mask byte is expanded to a lane mask
// with one broadcast, AND and compare.
#include <immintrin.h>

#include "masked_delta_cpu.h"
#include "routed_cpu.h"

#if defined(__x86_64__) || defined(_M_X64)

RTL_TARGET_BEGIN("avx2,fma")

namespace rtl_cpu::avx2 {

struct V {
  static constexpr int L = 8, RT = 4, GR = 4, GCB = 2, WRN = 2, WCB = 2;
  typedef uint32_t mask;
  // W rows per forward register tile of rt rows
  static constexpr int fwd_rn(int) { return 2; }
  static inline mask mask_at(const uint32_t* mrow, int64_t c) { return (mrow[c >> 5] >> (c & 31)) & 0xffu; }
  static inline mask to_mask(uint32_t m) { return m; }
  typedef __m256 vec;
  static inline __m256i lanes(uint32_t m) {
    const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(m)), sel), sel);
  }
  static inline vec from_bf16(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }
  static inline vec zero() { return _mm256_setzero_ps(); }
  static inline vec bcast(float f) { return _mm256_set1_ps(f); }
  static inline vec fmadd(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
  static inline vec mask_fmadd(vec acc, uint32_t m, vec a, vec b) { return _mm256_fmadd_ps(a, _mm256_and_ps(b, _mm256_castsi256_ps(lanes(m))), acc); }
  static inline vec load(const float* p) { return _mm256_loadu_ps(p); }
  static inline vec load(const uint16_t* p) { return from_bf16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static inline vec load_keep(const float* p, uint32_t keep) { return _mm256_and_ps(load(p), _mm256_castsi256_ps(lanes(keep))); }
  static inline vec load_keep(const uint16_t* p, uint32_t keep) { return _mm256_and_ps(load(p), _mm256_castsi256_ps(lanes(keep))); }
  static inline vec load_masked(const float* p, uint32_t m) { return _mm256_maskload_ps(p, lanes(m)); }
  static inline vec load_masked(const uint16_t* p, uint32_t m) {
    alignas(16) uint16_t tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int i = 0; i < 8; ++i)
      if ((m >> i) & 1u) tmp[i] = p[i];
    return from_bf16(_mm_load_si128(reinterpret_cast<const __m128i*>(tmp)));
  }
  static inline vec mask_add(vec acc, uint32_t m, vec s) { return _mm256_add_ps(acc, _mm256_and_ps(s, _mm256_castsi256_ps(lanes(m)))); }
  static inline float reduce(vec v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static inline void store(float* p, vec v) { _mm256_storeu_ps(p, v); }
  static inline void store_stream(float* p, vec v) { _mm256_stream_ps(p, v); }
  static inline void store_fence() { _mm_sfence(); }
  static inline void store_masked(float* p, vec v, uint32_t m) { _mm256_maskstore_ps(p, lanes(m), v); }
  static inline void copy_keep(float* o, const float* w, uint32_t keep) { store(o, load_keep(w, keep)); }
  static inline void copy_keep(uint16_t* o, const uint16_t* w, uint32_t keep) {
    const __m128i sel = _mm_setr_epi16(1, 2, 4, 8, 16, 32, 64, 128);
    const __m128i m = _mm_cmpeq_epi16(_mm_and_si128(_mm_set1_epi16(static_cast<short>(keep)), sel), sel);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o), _mm_and_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)), m));
  }
};

}  // namespace rtl_cpu::avx2

#define RTL_ISA_NS rtl_cpu::avx2
#include "routed_cpu_impl.h"
#include "masked_delta_impl.h"
#undef RTL_ISA_NS

const rtl_cpu::Ops rtl_cpu::kOpsAvx2 = {"avx2", avx2::forward, avx2::grad_x, avx2::grad_w, avx2::materialize, avx2::masked_add};
const rtl_cpu::DeltaOps rtl_cpu::kDeltaOpsAvx2 = {"avx2", avx2::delta_forward, avx2::delta_materialize, avx2::delta_masked_axpy, avx2::delta_masked_dot};

RTL_TARGET_END

#endif  // x86-64
