// Portable instance of the routed kernels (plain C++ on 8-lane arrays that the compiler may
// vectorise): used on CPUs without AVX2 and as a cross-check of the SIMD instances in tests.
#include "masked_delta_cpu.h"
#include "portable_vec8.h"
#include "routed_cpu.h"

namespace rtl_cpu::generic {

struct V : PortableVec8 {
  static constexpr int RT = 2, GR = 2, GCB = 2, WRN = 2, WCB = 2;
  typedef uint32_t mask;
  // W rows per forward register tile of rt rows
  static constexpr int fwd_rn(int) { return 2; }
  static inline mask mask_at(const uint32_t* mrow, int64_t c) { return (mrow[c >> 5] >> (c & 31)) & 0xffu; }
  static inline mask to_mask(uint32_t m) { return m; }
  static inline vec mask_fmadd(vec acc, uint32_t m, vec a, vec b) {
    for (int i = 0; i < 8; ++i)
      acc.v[i] += a.v[i] * (((m >> i) & 1u) ? b.v[i] : 0.0f);
    return acc;
  }
  template <typename T>
  static inline vec load_keep(const T* p, uint32_t keep) { return load_masked(p, keep); }
  static inline vec mask_add(vec acc, uint32_t m, vec s) {
    for (int i = 0; i < 8; ++i)
      if ((m >> i) & 1u) acc.v[i] += s.v[i];
    return acc;
  }
  static inline float reduce(vec v) {
    float s = 0.0f;
    for (int i = 0; i < 8; ++i) s += v.v[i];
    return s;
  }
  static inline void store_stream(float* p, vec v) { store(p, v); }
  static inline void store_fence() {}
  template <typename T>
  static inline void copy_keep(T* o, const T* w, uint32_t keep) {
    for (int i = 0; i < 8; ++i) o[i] = ((keep >> i) & 1u) ? w[i] : T(0);
  }
};

}  // namespace rtl_cpu::generic

#define RTL_ISA_NS rtl_cpu::generic
#include "routed_cpu_impl.h"
#include "masked_delta_impl.h"
#undef RTL_ISA_NS

const rtl_cpu::Ops rtl_cpu::kOpsGeneric = {"generic", generic::forward, generic::grad_x, generic::grad_w, generic::materialize, generic::masked_add};
const rtl_cpu::DeltaOps rtl_cpu::kDeltaOpsGeneric = {"generic", generic::delta_forward, generic::delta_materialize, generic::delta_masked_axpy, generic::delta_masked_dot};
