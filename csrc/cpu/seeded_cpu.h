// Seeded-weight routed linear on CPU: the weight is never read; each panel of it is regenerated
// in L1 from the layer's Philox4x32-10 stream (bit-identical to rtl_kernels/init/philox.py and
// Triton's tl.randint4x), masked by the ticket's bits, and multiplied in. Torch-free, like
// routed_cpu.h: the per-ISA translation units include seeded_impl.h under their target options.
//
// Stream: word g of a layer is word (g & 3) of Philox4x32-10(counter = (g >> 2 as lo, hi, 0, 0),
// key = (seed, layer_id)). signed_constant element i is bit (i & 31) of word i >> 5 (1 -> +s,
// 0 -> -s); uniform element i is word i: (2 * (w >> 9) + 1 - 2^23) * 2^-23 * s; normal element i is
// Box-Muller of words 2 i and 2 i + 1 (seeded_impl.h, normal_values). s is the row's float32 scale.
// Elements are numbered row-major over the seeded [rows, C] tensor; a call covers rows [row0, row0 + N).
#pragma once
#include <cstdint>

#include "routed_cpu.h"

// The generators must round every product and sum on its own, like the reference (normal's
// polynomials): no contraction of a multiply and an add into an FMA in the seeded translation
// units. Explicit FMA intrinsics (the matrix products) are unaffected.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace rtl_seeded {

enum Dist : int { kSignedConstant = 0, kUniform = 1, kNormal = 2 };

struct Problem {
  int64_t M, N, C;          // rows, out features, in features
  int64_t K, words;         // tickets, int32 mask words per row
  int dist;                 // Dist
  int64_t row0;             // stream row of weight row 0 (the call computes rows [row0, row0 + N) of a seeded tensor)
  uint32_t key_lo, key_hi;  // Philox key: (seed, layer id)
  const float* row_scale;   // [N]
  const float* x;           // [M, C]
  const float* dy;          // [M, N] (grad_x only)
  const uint32_t* bits;     // [K, N, words]
  const int64_t* perm;      // [M] rows sorted by ticket
  const int64_t* offsets;   // [K + 1]
};

struct Ops {
  const char* name;
  // y[m, n] += x[m] . (W[n] & mask[route(m)][n]) for n in [n0, n1) (y zeroed by the caller)
  void (*forward)(const Problem&, float* y, int64_t n0, int64_t n1);
  // dx[m, c] = sum_n dy[m, n] * (W[n, c] & mask[route(m)][n, c]) for c in [c0, c1) (c0 a multiple of 32)
  void (*grad_x)(const Problem&, float* dx, int64_t c0, int64_t c1);
  // out[n, c] = W[n, c] (unmasked) for n in [n0, n1)
  void (*generate)(const Problem&, float* out, int64_t n0, int64_t n1);
};

constexpr uint32_t kKeyA = 0x9E3779B9u, kKeyB = 0xBB67AE85u, kRoundA = 0xD2511F53u, kRoundB = 0xCD9E8D57u;

// one Philox4x32-10 block, scalar: out[0..3] for counter (lo, hi, 0, 0)
inline void philox_block(uint32_t k0, uint32_t k1, uint64_t counter, uint32_t* out) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = 0, c3 = 0;
  for (int r = 0; r < 10; ++r) {
    const uint64_t pb = static_cast<uint64_t>(kRoundB) * c2, pa = static_cast<uint64_t>(kRoundA) * c0;
    const uint32_t n0 = static_cast<uint32_t>(pb >> 32) ^ c1 ^ k0, n2 = static_cast<uint32_t>(pa >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(pb);
    c3 = static_cast<uint32_t>(pa);
    c0 = n0;
    c2 = n2;
    k0 += kKeyA;
    k1 += kKeyB;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

extern const Ops kOpsGeneric;
#if defined(__x86_64__) || defined(_M_X64)
extern const Ops kOpsAvx2;
extern const Ops kOpsAvx512;
#endif

}  // namespace rtl_seeded
