// "Shared base + per-ticket masked delta" linear on CPU: the plain C++ interface between the
// torch binding and the per-ISA kernels (no torch here). Ticket k's weight is
//   W_k[n, c] = base[n, c] + scales[k] * (mask_k[n, c] ? delta[n, c] : 0)
// with the packed mask layout of routed_cpu.h. The forward takes float32 or bfloat16 x, base and
// delta (`dtype`, a routed_cpu.h DType; bf16 stored as uint16_t) and accumulates in float32; the
// other kernels (backward, materialise) are float32 only.
#pragma once
#include <cstdint>

namespace rtl_cpu {

struct DeltaProblem {
  int64_t M, N, C;         // rows, out features, in features
  int64_t K, words;        // tickets, int32 words per mask row (= ceil(C / 32))
  int dtype;               // DType of x, base and delta (routed_cpu.h): kFloat32 or kBFloat16
  const void* x;           // [M, C]
  const void* base;        // [N, C]
  const void* delta;       // [N, C]
  const float* scales;     // [K] float32 whatever the dtype
  const uint32_t* bits;    // [K, N, words]
  const int64_t* perm;     // [M] row ids sorted by ticket
  const int64_t* offsets;  // [K + 1]
  const float* bias;       // [K, N] (bias_stride N) or [N] (bias_stride 0), or null; float32
  int64_t bias_stride;
};

struct DeltaOps {
  const char* name;
  // y[m, n] += x[m] . W_route(m)[n] + bias[route(m)][n] for n in [n0, n1) (y zeroed by the caller): each block of base
  // and delta is read from memory once and reused from cache by every active ticket. y is float32 for
  // either dtype (the binding rounds it to bf16 once, as the routed bf16 forward does).
  void (*forward)(const DeltaProblem&, float* y, int64_t n0, int64_t n1);
  // out[n, :] = W_k[n, :] for n in [n0, n1)
  void (*materialize)(const DeltaProblem&, int64_t k, float* out, int64_t n0, int64_t n1);
  // out[n, c] += mask_k[n, c] ? s * g[n, c] : 0 for n in [n0, n1)
  void (*masked_axpy)(const DeltaProblem&, int64_t k, float s, const float* g, float* out, int64_t n0, int64_t n1);
  // rowsum[n] = sum_c (mask_k[n, c] ? delta[n, c] * g[n, c] : 0) for n in [n0, n1)
  void (*masked_dot)(const DeltaProblem&, int64_t k, const float* g, double* rowsum, int64_t n0, int64_t n1);
};

extern const DeltaOps kDeltaOpsGeneric;
#if defined(__x86_64__) || defined(_M_X64)
extern const DeltaOps kDeltaOpsAvx2;
extern const DeltaOps kDeltaOpsAvx512;
#endif

}  // namespace rtl_cpu
