// Portable (scalar) instance of the seeded-weight kernels: any CPU, and the bit-exact check for the SIMD ones.
#include "seeded_cpu.h"

namespace rtl_seeded::generic {

struct V {
  static constexpr int L = 1;
  typedef float vec;
  static inline vec zero() { return 0.0f; }
  static inline vec bcast(float f) { return f; }
  static inline vec fmadd(vec a, vec b, vec c) { return a * b + c; }
  static inline vec load_lim(const float* p, uint32_t lim) { return lim ? *p : 0.0f; }
  static inline vec load_bits(const float* p, uint32_t m) { return m ? *p : 0.0f; }
  static inline void store_lim(float* p, vec v, uint32_t lim) {
    if (lim) *p = v;
  }
  static inline float reduce(vec v) { return v; }
  static inline void signs(uint32_t bits, float s, float* out) { *out = bits ? s : -s; }
  static inline void philox(uint32_t key_lo, uint32_t key_hi, uint64_t b, uint32_t* out) { philox_block(key_lo, key_hi, b, out); }
};

}  // namespace rtl_seeded::generic

#define RTL_SEEDED_NS rtl_seeded::generic
#include "seeded_impl.h"
#undef RTL_SEEDED_NS

const rtl_seeded::Ops rtl_seeded::kOpsGeneric = {"generic", generic::forward, generic::grad_x, generic::generate};
