// Routed masked linear on CPU: the plain C++ interface between the torch binding and the
// per-ISA kernels. Nothing here includes torch, so the ISA translation units can be compiled
// with their own target options without touching inline torch code.
//
// Mask layout (see rtl_kernels/masks/packed.py): bit (c % 32) of word bits[k][n][c / 32] is
// ticket k's mask of weight element (n, c); padding bits past C are zero (kernels mask them
// again with the tail mask, so non-zero padding cannot cause reads past a row).
#pragma once
#include <cstdint>

// full unrolling of the register-tile loops lets the compiler keep every accumulator in a register
#if defined(__clang__)
#define RTL_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define RTL_UNROLL _Pragma("GCC unroll 16")
#else
#define RTL_UNROLL
#endif

// Compile the functions between RTL_TARGET_BEGIN("isa,...") and RTL_TARGET_END for that ISA (the
// rest of the file stays baseline, so the library loads on any x86-64 CPU and picks at run time).
// GCC 12 headers trip -Wuninitialized on their own `__Y = __Y` idiom under a target pragma.
#define RTL_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define RTL_TARGET_BEGIN(isa) RTL_PRAGMA(clang attribute push(__attribute__((target(isa))), apply_to = function))
#define RTL_TARGET_END RTL_PRAGMA(clang attribute pop)
#elif defined(__GNUC__)
#define RTL_TARGET_BEGIN(isa)                         \
  RTL_PRAGMA(GCC push_options)                        \
  RTL_PRAGMA(GCC target(isa))                         \
  RTL_PRAGMA(GCC diagnostic ignored "-Wuninitialized") \
  RTL_PRAGMA(GCC diagnostic ignored "-Wmaybe-uninitialized")
#define RTL_TARGET_END RTL_PRAGMA(GCC pop_options)
#else
#define RTL_TARGET_BEGIN(isa)
#define RTL_TARGET_END
#endif

namespace rtl_cpu {

enum DType : int { kFloat32 = 0, kBFloat16 = 1 };

struct Problem {
  int dtype;          // DType of x, weight and dy (bf16 is stored as uint16_t)
  int64_t M, N, C;    // rows, out features, in features
  int64_t K, words;   // tickets, int32 words per mask row (= ceil(C / 32))
  const void* x;      // [M, C]
  const void* w;      // [N, C]
  const void* dy;     // [M, N] (backward only)
  const uint32_t* bits;    // [K, N, words]
  const int64_t* perm;     // [M] row ids sorted by ticket
  const int64_t* offsets;  // [K + 1] ticket k owns perm[offsets[k] : offsets[k + 1]]
};

// Column ranges handed to grad_x must start at a multiple of kColBlock.
constexpr int64_t kColBlock = 64;
// Row ranges handed to forward / grad_w should start at a multiple of kRowBlock.
constexpr int64_t kRowBlock = 8;

struct Ops {
  const char* name;
  // y[m, n] (fp32) for n in [n0, n1): x[m] . (w[n] & mask[route(m)][n]) + bias[n]; bias may be null.
  void (*forward)(const Problem&, const float* bias, float* y, int64_t n0, int64_t n1);
  // dx[m, c] (fp32) for c in [c0, c1): sum_n dy[m, n] * (w[n, c] & mask[route(m)][n, c]).
  void (*grad_x)(const Problem&, float* dx, int64_t c0, int64_t c1);
  // dw[n, c] (fp32) for n in [n0, n1): sum_k mask[k][n, c] * sum_{m in k} dy[m, n] * x[m, c].
  void (*grad_w)(const Problem&, float* dw, int64_t n0, int64_t n1);
  // out[n, c] (problem dtype) = w[n, c] & mask[k][n, c] for n in [n0, n1).
  void (*materialize)(const Problem&, int64_t k, void* out, int64_t n0, int64_t n1);
  // dw[n, c] += mask[k][n, c] ? g[n, c] : 0 (both fp32 [N, C]) for n in [n0, n1).
  void (*masked_add)(const Problem&, int64_t k, const float* g, float* dw, int64_t n0, int64_t n1);
};

// Fused large-batch GEMM (AVX-512, fp32 x and weight): block sizes, and the scratch floats one
// thread needs for C input features (packed rows, packed weight block, output tile).
constexpr int64_t kGemmKC = 256, kGemmMC = 384, kGemmNC = 256, kGemmNR = 32;
constexpr int64_t gemm_scratch_floats(int64_t C) { return kGemmMC * ((C + kGemmKC - 1) / kGemmKC) * kGemmKC + kGemmNC * kGemmKC + kGemmMC * (kGemmNC + 16); }

extern const Ops kOpsGeneric;
#if defined(__x86_64__) || defined(_M_X64)
extern const Ops kOpsAvx2;
extern const Ops kOpsAvx512;
extern const Ops kOpsAvx512Bf16;  // bf16 forward with vdpbf16ps, everything else as kOpsAvx512
// y[m, n] (fp32, for n in [n0, n1)) = x[m] . (w[n] & mask[route(m)][n]) + bias[n]; y need not be
// zeroed. Ranges should start at multiples of kGemmNR.
void forward_gemm_avx512(const Problem& p, const float* bias, float* y, int64_t n0, int64_t n1, float* scratch);
#endif

}  // namespace rtl_cpu
