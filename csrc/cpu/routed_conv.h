// Routed masked conv2d on CPU: the plain C++ interface between the torch binding and the per-ISA
// conv kernels (no torch here, as in routed_cpu.h).
//
// Layouts: activations are float32 NHWC (x [B, H, W, C], y and dy [B, Ho, Wo, N]); the weight is
// float32 [N, Cg, kh, kw] with Cg = C / groups and Ng = N / groups, so its mask row n covers
// R = Cg * kh * kw bits in (c, ky, kx) order (rtl_kernels/masks/packed.py). Images are sorted by
// ticket (perm / offsets of the routing plan).
//
// Every output element is formed as an implicit GEMM whose rows are pixels: for row pixel p and
// tap t, a tap table gives the source pixel (or -1 outside the image, read as zeros), so padding,
// stride and dilation live in the table and the kernels only gather rows. The forward gathers
// input pixels of x; dX gathers output pixels of dy (the transposed conv written as a gather, so
// each dX element is computed once and stored, never scattered). A ticket's masked weight is
// packed once per call into panels (mask applied by selection while packing: a weight outside the
// mask is never used), so a weight NaN outside a ticket's mask cannot reach that ticket.
#pragma once
#include <cstdint>

namespace rtl_cpu {

struct ConvProblem {
  int64_t B, H, W, C;      // input images (NHWC)
  int64_t Ho, Wo, N;       // output (NHWC)
  int64_t kh, kw, groups;  // kernel and groups
  int64_t Cg, Ng;          // channels per group in and out
  int64_t sh, sw, ph, pw, dh, dw;
  int64_t K, words;        // tickets, int32 words per mask row (= ceil(Cg * kh * kw / 32))
  const float* w;          // [N, Cg, kh, kw]
  const uint32_t* bits;    // [K, N, words]
  const int64_t* perm;     // [B] image ids sorted by ticket
  const int64_t* offsets;  // [K + 1]
  int64_t taps() const { return kh * kw; }
  int64_t R() const { return Cg * kh * kw; }
};

// Source pixel of every (row pixel, tap): forward rows are output pixels reading input pixels;
// `transposed` rows are input pixels reading the output pixels whose window covers them (-1: none).
void conv_tap_table(const ConvProblem& p, bool transposed, int32_t* out);

// One gathered implicit GEMM (the forward, or dX), run over work items (image q in sorted order,
// group g, chunk of row pixels) in [i0, i1). out[b, row, g * nout + j] = sum over taps and the cr
// source channels of group g of src[b, table[row, t], g * cr + c] * packed(slot(q), g)[t, c, j].
struct Gather {
  const float* src;
  int64_t src_pixels, src_channels, cr;  // pixels per source image, channels per pixel, per group
  const int32_t* table;                  // [rows, taps]
  int64_t rows, taps;
  float* out;
  int64_t out_channels, nout;  // channels per output pixel, per group
  const float* bias;           // [out_channels] or null
  const float* packed;         // panels of ticket slot s, group g at packed + (s * groups + g) * pack_floats
  int64_t pack_floats;
  const int64_t* perm;
  const int64_t* slot;  // [B]: packed slot of the image at sorted position q
  int64_t groups, chunk_rows;
  const float* zeros;  // at least cr zeros (padding rows read these)
};

struct ConvOps {
  const char* name;
  int64_t lanes;  // panel width multiple (vector lanes)
  // floats of one packed (ticket, group) block for the forward (nout = Ng) or dX (nout = Cg)
  int64_t (*pack_floats)(const ConvProblem&, bool dx);
  // packed masked weight of ticket k, group g for the forward (dx = false) or dX (dx = true)
  void (*pack)(const ConvProblem&, bool dx, int64_t k, int64_t g, float* out);
  // the gathered GEMM over items [i0, i1) (depthwise: one group of all channels, cr = 1)
  void (*gather)(const Gather&, int64_t i0, int64_t i1);
  void (*gather_depthwise)(const Gather&, int64_t i0, int64_t i1);
  // dW (zeroed by the caller) for items [i0, i1) of grad_w_items: every item owns a disjoint
  // block of dW and adds each ticket's sum under that ticket's mask
  int64_t (*grad_w_items)(const ConvProblem&);
  void (*grad_w)(const ConvProblem&, const int32_t* table, const float* x, const float* dy, float* dw, int64_t i0, int64_t i1);
};

// depthwise: one input and one output channel per group (the packed weight is [taps][C rounded up])
inline bool conv_is_depthwise(const ConvProblem& p) { return p.groups > 1 && p.Cg == 1 && p.Ng == 1; }

extern const ConvOps kConvGeneric;
#if defined(__x86_64__) || defined(_M_X64)
extern const ConvOps kConvAvx512;
#endif

}  // namespace rtl_cpu
