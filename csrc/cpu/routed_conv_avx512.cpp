// AVX-512 instance of the routed conv2d kernels (16 fp32 lanes; lane masks straight from uint32).
#include <immintrin.h>

#include "routed_conv.h"
#include "routed_cpu.h"

#if defined(__x86_64__) || defined(_M_X64)

RTL_TARGET_BEGIN("avx512f,avx512bw,avx512vl,avx512dq,fma,avx2")

#include "routed_avx512_transpose.h"

namespace rtl_cpu::conv_avx512 {

struct V {
  // rows per register tile for panels of 4, 2 and 1 vectors (24, 24 and 12 accumulators), and dW
  // weight rows per tile (x 4 vectors of input channels)
  static constexpr int L = 16, MR4 = 6, MR2 = 12, MR1 = 12, WMR = 6;
  typedef __m512 vec;
  static inline vec zero() { return _mm512_setzero_ps(); }
  static inline vec bcast(float f) { return _mm512_set1_ps(f); }
  static inline vec fmadd(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
  static inline vec add(vec a, vec b) { return _mm512_add_ps(a, b); }
  static inline vec load(const float* p) { return _mm512_loadu_ps(p); }
  static inline vec load_masked(const float* p, uint32_t m) { return _mm512_maskz_loadu_ps(static_cast<__mmask16>(m), p); }
  static inline void store(float* p, vec v) { _mm512_storeu_ps(p, v); }
  static inline void store_masked(float* p, vec v, uint32_t m) { _mm512_mask_storeu_ps(p, static_cast<__mmask16>(m), v); }
  static inline void transpose(vec r[16]) { transpose16(r); }
  // two gathers: the lanes' mask words, then (under the set bits only) the weights
  static inline vec gather_select(const float* w, const uint32_t* m, int64_t es, int64_t ws, int64_t b, int64_t bs, uint32_t live) {
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __mmask16 lv = static_cast<__mmask16>(live);
    const __m512i pos = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(b)), _mm512_mullo_epi32(iota, _mm512_set1_epi32(static_cast<int>(bs))));
    const __m512i widx = _mm512_add_epi32(_mm512_mullo_epi32(iota, _mm512_set1_epi32(static_cast<int>(ws))), _mm512_srli_epi32(pos, 5));
    const __m512i words = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), lv, widx, m, 4);
    const __m512i shifted = _mm512_srlv_epi32(words, _mm512_and_si512(pos, _mm512_set1_epi32(31)));
    const __mmask16 keep = _mm512_mask_test_epi32_mask(lv, shifted, _mm512_set1_epi32(1));
    const __m512i eidx = _mm512_mullo_epi32(iota, _mm512_set1_epi32(static_cast<int>(es)));
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), keep, eidx, w, 4);
  }
};

}  // namespace rtl_cpu::conv_avx512

#define RTL_ISA_NS rtl_cpu::conv_avx512
#include "routed_conv_impl.h"
#undef RTL_ISA_NS

const rtl_cpu::ConvOps rtl_cpu::kConvAvx512 = {"avx512",
                                                16,
                                                conv_avx512::pack_floats,
                                                conv_avx512::pack,
                                                conv_avx512::gather,
                                                conv_avx512::gather_depthwise,
                                                conv_avx512::grad_w_items,
                                                conv_avx512::grad_w};

RTL_TARGET_END

#endif  // x86-64
