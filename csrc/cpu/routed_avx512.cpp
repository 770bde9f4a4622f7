// AVX-512 (F/BW/VL) instance of the routed kernels: a 16-bit slice of a mask word is directly
// the __mmask16 of a masked load, so masking costs nothing beyond the load itself.
#include <immintrin.h>

#include "masked_delta_cpu.h"
#include "routed_cpu.h"

#if defined(__x86_64__) || defined(_M_X64)

RTL_TARGET_BEGIN("avx512f,avx512bw,avx512vl,avx512dq,fma,avx2")

namespace rtl_cpu::avx512 {

struct V {
  static constexpr int L = 16, RT = 4, GR = 8, GCB = 3, WRN = 2, WCB = 4;
  typedef __m512 vec;
  // W rows per forward register tile of rt rows
  static constexpr int fwd_rn(int) { return 4; }
  typedef __mmask16 mask;
  // a 16-bit slice of a mask row is the lane mask itself: one kmov from memory (little endian)
  static inline mask mask_at(const uint32_t* mrow, int64_t c) {
    return _load_mask16(const_cast<__mmask16*>(reinterpret_cast<const __mmask16*>(mrow) + (c >> 4)));
  }
  static inline mask to_mask(uint32_t m) { return static_cast<mask>(m); }
  static inline vec from_bf16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
  static inline vec zero() { return _mm512_setzero_ps(); }
  static inline vec bcast(float f) { return _mm512_set1_ps(f); }
  static inline vec fmadd(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
  static inline vec mask_fmadd(vec acc, mask m, vec a, vec b) { return _mm512_fmadd_ps(a, _mm512_maskz_mov_ps(m, b), acc); }
  static inline vec load(const float* p) { return _mm512_loadu_ps(p); }
  static inline vec load(const uint16_t* p) { return from_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static inline vec load_masked(const float* p, uint32_t m) { return _mm512_maskz_loadu_ps(static_cast<__mmask16>(m), p); }
  static inline vec load_masked(const uint16_t* p, uint32_t m) { return from_bf16(_mm256_maskz_loadu_epi16(static_cast<__mmask16>(m), p)); }
  static inline vec load_keep(const float* p, mask keep) { return _mm512_maskz_loadu_ps(keep, p); }
  static inline vec load_keep(const uint16_t* p, mask keep) { return from_bf16(_mm256_maskz_loadu_epi16(keep, p)); }
  static inline vec mask_add(vec acc, mask m, vec s) { return _mm512_mask_add_ps(acc, m, acc, s); }
  static inline float reduce(vec v) { return _mm512_reduce_add_ps(v); }
  static inline void store(float* p, vec v) { _mm512_storeu_ps(p, v); }
  static inline void store_stream(float* p, vec v) { _mm512_stream_ps(p, v); }
  static inline void store_fence() { _mm_sfence(); }
  static inline void store_masked(float* p, vec v, uint32_t m) { _mm512_mask_storeu_ps(p, static_cast<__mmask16>(m), v); }
  static inline void copy_keep(float* o, const float* w, mask keep) { _mm512_storeu_ps(o, _mm512_maskz_loadu_ps(keep, w)); }
  static inline void copy_keep(uint16_t* o, const uint16_t* w, mask keep) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), _mm256_maskz_loadu_epi16(keep, w));
  }
};

}  // namespace rtl_cpu::avx512

#define RTL_ISA_NS rtl_cpu::avx512
#include "routed_cpu_impl.h"
#include "masked_delta_impl.h"
#undef RTL_ISA_NS

const rtl_cpu::Ops rtl_cpu::kOpsAvx512 = {"avx512", avx512::forward, avx512::grad_x, avx512::grad_w, avx512::materialize, avx512::masked_add};
const rtl_cpu::DeltaOps rtl_cpu::kDeltaOpsAvx512 = {"avx512", avx512::delta_forward, avx512::delta_materialize, avx512::delta_masked_axpy, avx512::delta_masked_dot};

RTL_TARGET_END

#endif  // x86-64
