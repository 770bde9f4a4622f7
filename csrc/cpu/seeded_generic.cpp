// Portable (scalar) instance of the seeded-weight kernels: any CPU, and the bit-exact check for the SIMD ones.
#include "seeded_cpu.h"

namespace rtl_seeded::generic {

struct V {
  static constexpr int L = 1, NR = 4, RT = 2;
  typedef float vec;
  static inline vec zero() { return 0.0f; }
  static inline vec bcast(float f) { return f; }
  static inline vec add(vec a, vec b) { return a + b; }
  static inline vec load(const float* p) { return *p; }
  static inline vec fmadd(vec a, vec b, vec c) { return a * b + c; }
  static inline vec load_lim(const float* p, uint32_t lim) { return lim ? *p : 0.0f; }
  typedef uint32_t mask;
  static inline mask window(const uint32_t* row, int64_t c) { return (row[c >> 5] >> (c & 31)) & 1u; }
  static inline mask clip(mask m, uint32_t lim) { return m & lim; }
  static inline vec load_bits(const float* p, mask m) { return m ? *p : 0.0f; }
  static inline void store_lim(float* p, vec v, uint32_t lim) {
    if (lim) *p = v;
  }
  static inline void store(float* p, vec v) { *p = v; }
  static inline float reduce(vec v) { return v; }
  static inline void signs(uint32_t bits, float s, float* out) { *out = bits ? s : -s; }
  static inline void uniform(const uint32_t* w, float s, float* out) {
    const int32_t t = static_cast<int32_t>((*w >> 9) * 2u + 1u) - (1 << 23);
    *out = (static_cast<float>(t) * 0x1p-23f) * s;
  }
  // normal_values traits (seeded_impl.h)
  typedef uint32_t I;
  typedef bool cmask;
  static inline vec sub(vec a, vec b) { return a - b; }
  static inline vec mul(vec a, vec b) { return a * b; }
  static inline vec div(vec a, vec b) { return a / b; }
  static inline vec sqrt(vec a) { return __builtin_sqrtf(a); }
  static inline cmask lt(vec a, vec b) { return a < b; }
  static inline vec select(cmask m, vec a, vec b) { return m ? a : b; }
  static inline I set_i(int v) { return static_cast<I>(v); }
  static inline I add_i(I a, I b) { return a + b; }
  static inline I sub_i(I a, I b) { return a - b; }
  static inline I and_i(I a, I b) { return a & b; }
  static inline I or_i(I a, I b) { return a | b; }
  template <int S>
  static inline I srl(I a) { return a >> S; }
  static inline I select_i(cmask m, I a, I b) { return m ? a : b; }
  static inline vec cvt(I a) { return static_cast<float>(static_cast<int32_t>(a)); }
  static inline I as_i(vec a) { return __builtin_bit_cast(I, a); }
  static inline vec as_f(I a) { return __builtin_bit_cast(float, a); }
  static inline void deinterleave(const uint32_t* w, I& even, I& odd) {
    even = w[0];
    odd = w[1];
  }
  static inline void philox(uint32_t key_lo, uint32_t key_hi, uint64_t b, uint32_t* out) { philox_block(key_lo, key_hi, b, out); }
};

}  // namespace rtl_seeded::generic

#define RTL_SEEDED_NS rtl_seeded::generic
#include "seeded_impl.h"
#undef RTL_SEEDED_NS

const rtl_seeded::Ops rtl_seeded::kOpsGeneric = {"generic", generic::forward, generic::grad_x, generic::generate};
