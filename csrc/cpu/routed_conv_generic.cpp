// Portable instance of the routed conv2d kernels (on PortableVec8) and
// the ISA-independent tap tables.
#include "portable_vec8.h"
#include "routed_conv.h"
#include "routed_cpu.h"

namespace rtl_cpu::conv_generic {

struct V : PortableVec8 {
  static constexpr int MR4 = 4, MR2 = 4, MR1 = 4, WMR = 4;
  static inline void transpose(vec r[8]) {
    for (int i = 0; i < 8; ++i)
      for (int j = i + 1; j < 8; ++j) {
        const float a = r[i].v[j];
        r[i].v[j] = r[j].v[i];
        r[j].v[i] = a;
      }
  }
  static inline vec gather_select(const float* w, const uint32_t* m, int64_t es, int64_t ws, int64_t b, int64_t bs, uint32_t live) {
    vec r{};
    for (int64_t i = 0; i < 8; ++i) {
      const int64_t pos = b + i * bs;
      if (((live >> i) & 1u) && ((m[i * ws + (pos >> 5)] >> (pos & 31)) & 1u)) r.v[i] = w[i * es];
    }
    return r;
  }
};

}  // namespace rtl_cpu::conv_generic

#define RTL_ISA_NS rtl_cpu::conv_generic
#include "routed_conv_impl.h"
#undef RTL_ISA_NS

const rtl_cpu::ConvOps rtl_cpu::kConvGeneric = {"generic",
                                                 8,
                                                 conv_generic::pack_floats,
                                                 conv_generic::pack,
                                                 conv_generic::gather,
                                                 conv_generic::gather_depthwise,
                                                 conv_generic::grad_w_items,
                                                 conv_generic::grad_w};

void rtl_cpu::conv_tap_table(const ConvProblem& p, bool transposed, int32_t* out) {
  const int64_t taps = p.taps();
  if (!transposed) {
    for (int64_t oy = 0; oy < p.Ho; ++oy)
      for (int64_t ox = 0; ox < p.Wo; ++ox)
        for (int64_t ky = 0; ky < p.kh; ++ky)
          for (int64_t kx = 0; kx < p.kw; ++kx) {
            const int64_t iy = oy * p.sh - p.ph + ky * p.dh, ix = ox * p.sw - p.pw + kx * p.dw;
            const bool in = iy >= 0 && iy < p.H && ix >= 0 && ix < p.W;
            out[(oy * p.Wo + ox) * taps + ky * p.kw + kx] = in ? static_cast<int32_t>(iy * p.W + ix) : -1;
          }
    return;
  }
  for (int64_t iy = 0; iy < p.H; ++iy)
    for (int64_t ix = 0; ix < p.W; ++ix)
      for (int64_t ky = 0; ky < p.kh; ++ky)
        for (int64_t kx = 0; kx < p.kw; ++kx) {
          // the output pixel whose tap (ky, kx) reads input pixel (iy, ix), if there is one
          const int64_t ny = iy + p.ph - ky * p.dh, nx = ix + p.pw - kx * p.dw;
          const bool in = ny >= 0 && nx >= 0 && ny % p.sh == 0 && nx % p.sw == 0 && ny / p.sh < p.Ho && nx / p.sw < p.Wo;
          out[(iy * p.W + ix) * taps + ky * p.kw + kx] = in ? static_cast<int32_t>((ny / p.sh) * p.Wo + nx / p.sw) : -1;
        }
}
