// Seeded-weight kernels written once against a small traits class `V`, compiled per ISA (see
// seeded_cpu.h for the stream layout). Each seeded_<isa>.cpp defines RTL_SEEDED_NS and `V` with
// its target options active, then includes this file. No standard headers here.
//
// Traits `V`: L (lanes, divides 32), NR (weight rows per panel), RT (most rows per register tile),
// vec, mask, zero, bcast, add, load, load_lim (first `lim` lanes, others 0), window (the mask bits of
// L columns of a mask row), clip (a mask and `lim`), load_bits (lanes whose mask bit is set, others 0), store, store_lim, fmadd, reduce, philox (L consecutive blocks = 4 L words, in
// stream order), signs (L lanes of +s / -s from the low L bits), uniform (L words -> L values), and
// for normal_values: sub, mul, div, sqrt, lt, select, an integer vector I with set_i, add_i, sub_i,
// and_i, or_i, srl<n>, select_i, cvt (int32 -> float), as_i / as_f (bit casts) and deinterleave.
//
// Forward (weight-stationary): a panel of NR weight rows x kChunk columns is generated once in L1
// and every active ticket's rows multiply it in register tiles of RT rows x NR outputs, the mask
// bits of each (ticket, output row) applied as a masked load of the panel. Accumulators persist
// across the chunks of a row (parked in a small buffer), so each output is reduced once.

namespace RTL_SEEDED_NS {

using rtl_seeded::Problem;
typedef typename V::vec vec;
static constexpr int L = V::L, NR = V::NR, RTM = V::RT;
static constexpr uint32_t kFull = L == 32 ? 0xFFFFFFFFu : ((1u << L) - 1u);
static constexpr int64_t kChunk = 512;      // columns of a generated panel row (2 KiB)
static constexpr int64_t kStride = kChunk + L;
static constexpr int64_t kWindow = 64;      // forward: sorted rows whose accumulators are parked at once
static constexpr int64_t kWords = 2 * kChunk + 8 * L + 8;  // stream words of one generated panel row chunk

static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

// stream words of blocks [b0, b0 + count) into out (count rounded up to a multiple of L blocks)
static inline void blocks(const Problem& p, uint64_t b0, int64_t count, uint32_t* out) {
  for (int64_t i = 0; i < count; i += L) V::philox(p.key_lo, p.key_hi, b0 + static_cast<uint64_t>(i), out + 4 * i);
}

// L normal values from 2 L stream words (element i: words 2 i, 2 i + 1): Box-Muller with the same
// float32 log / cos polynomials, operation for operation, as rtl_kernels/init/philox.py (no FMA
// contraction: every product and sum is its own rounded intrinsic), so the bits match the reference.
static inline void normal_values(const uint32_t* w, float s, float* out) {
  typedef typename V::I I;
  I w0, w1;
  V::deinterleave(w, w0, w1);
  const vec one = V::bcast(1.0f), two = V::bcast(2.0f), half = V::bcast(0.5f), ulp = V::bcast(0x1p-24f);
  const vec u1 = V::mul(V::cvt(V::add_i(V::template srl<8>(w0), V::set_i(1))), ulp);  // (0, 1]
  const vec u2 = V::mul(V::cvt(V::template srl<8>(w1)), ulp);                         // [0, 1)
  // log(u1): frexp split (u1 is normal and positive), m in [sqrt(1/2), sqrt(2)), atanh series
  const I ub = V::as_i(u1);
  vec m = V::as_f(V::or_i(V::and_i(ub, V::set_i(0x807FFFFF)), V::set_i(0x3F000000)));
  I e = V::sub_i(V::template srl<23>(ub), V::set_i(126));
  const auto small = V::lt(m, V::bcast(static_cast<float>(0.70710677)));
  m = V::select(small, V::mul(m, two), m);
  e = V::select_i(small, V::sub_i(e, V::set_i(1)), e);
  const vec sv = V::div(V::sub(m, one), V::add(m, one)), s2 = V::mul(sv, sv);
  vec p = V::add(V::mul(s2, V::bcast(static_cast<float>(1.0 / 9.0))), V::bcast(static_cast<float>(1.0 / 7.0)));
  p = V::add(V::mul(p, s2), V::bcast(static_cast<float>(1.0 / 5.0)));
  p = V::add(V::mul(p, s2), V::bcast(static_cast<float>(1.0 / 3.0)));
  p = V::add(V::mul(p, s2), one);
  const vec lg = V::add(V::mul(V::cvt(e), V::bcast(static_cast<float>(0.6931472))), V::mul(V::mul(sv, two), p));
  const vec radius = V::sqrt(V::mul(lg, V::bcast(-2.0f)));
  // cos(2 pi u2): symmetry to [0, 1/4], Taylor series to x^14
  const vec a = V::select(V::lt(half, u2), V::sub(one, u2), u2);
  const auto neg = V::lt(V::bcast(0.25f), a);
  const vec x = V::mul(V::select(neg, V::sub(half, a), a), V::bcast(static_cast<float>(6.2831855))), x2 = V::mul(x, x);
  vec c = V::add(V::mul(x2, V::bcast(static_cast<float>(-1.0 / 87178291200.0))), V::bcast(static_cast<float>(1.0 / 479001600.0)));
  c = V::add(V::mul(c, x2), V::bcast(static_cast<float>(-1.0 / 3628800.0)));
  c = V::add(V::mul(c, x2), V::bcast(static_cast<float>(1.0 / 40320.0)));
  c = V::add(V::mul(c, x2), V::bcast(static_cast<float>(-1.0 / 720.0)));
  c = V::add(V::mul(c, x2), V::bcast(static_cast<float>(1.0 / 24.0)));
  c = V::add(V::mul(c, x2), V::bcast(-0.5f));
  c = V::add(V::mul(c, x2), one);
  c = V::select(neg, V::mul(c, V::bcast(-1.0f)), c);
  V::store(out, V::mul(V::mul(radius, c), V::bcast(s)));
}

// W[n, c0 : c0 + cnt) (unmasked, scaled) into out[0 : cnt rounded up to L) (lanes past cnt: finite filler)
static void gen_chunk(const Problem& p, int64_t n, int64_t c0, int64_t cnt, float* out) {
  const int64_t e0 = (n + p.row0) * p.C + c0;
  const float s = p.row_scale[n];
  uint32_t w[kWords];
  if (p.dist == rtl_seeded::kSignedConstant) {
    // element i is bit i & 31 of stream word i >> 5; word g of the buffer is stream word 4 b0 + g
    const int64_t b0 = e0 >> 7, last_word = ((e0 + cnt - 1) >> 5) + 1;
    blocks(p, static_cast<uint64_t>(b0), (last_word >> 2) - b0 + 1, w);
    for (int64_t j = 0; j < cnt; j += L) {
      const int64_t bit = e0 + j - 128 * b0, g = bit >> 5;
      const uint64_t two = static_cast<uint64_t>(w[g]) | (static_cast<uint64_t>(w[g + 1]) << 32);
      V::signs(static_cast<uint32_t>(two >> (bit & 31)) & kFull, s, out + j);
    }
  } else if (p.dist == rtl_seeded::kNormal) {
    // element i is stream words 2 i, 2 i + 1; the buffer starts at stream word 4 b0
    const int64_t b0 = e0 >> 1, off = 2 * e0 - 4 * b0, span = off + 2 * ((cnt + L - 1) / L * L);
    blocks(p, static_cast<uint64_t>(b0), (span + 3) / 4, w);
    for (int64_t j = 0; j < cnt; j += L) normal_values(w + off + 2 * j, s, out + j);
  } else {
    // element i is stream word i; the buffer starts at stream word 4 b0
    const int64_t b0 = e0 >> 2, off = e0 - 4 * b0, span = off + (cnt + L - 1) / L * L;
    blocks(p, static_cast<uint64_t>(b0), (span + 3) / 4, w);
    for (int64_t j = 0; j < cnt; j += L) V::uniform(w + off + j, s, out + j);
  }
}

// rows[0 : RT) (one ticket) x NR panel rows over columns [c0, c1); accumulators come from and go
// back to `park` unless this is the row's first / last chunk
template <int RT>
static void fwd_tile(const Problem& p, const int64_t* rows, const uint32_t* const* mrow, const float* panel, int64_t c0, int64_t c1, vec* park,
                     bool first, bool last, int64_t n, int rn, float* y) {
  vec acc[RT][NR];
  const float* xr[RT];
  RTL_UNROLL
  for (int t = 0; t < RT; ++t) {
    xr[t] = p.x + rows[t] * p.C;
    RTL_UNROLL
    for (int r = 0; r < NR; ++r) acc[t][r] = first ? V::zero() : park[t * NR + r];
  }
  const int64_t cf = c0 + (c1 - c0) / L * L;
  for (int64_t c = c0; c < cf; c += L) {
    vec xv[RT];
    RTL_UNROLL
    for (int t = 0; t < RT; ++t) xv[t] = V::load(xr[t] + c);
    RTL_UNROLL
    for (int r = 0; r < NR; ++r) {
      const vec wv = V::load_bits(panel + r * kStride + (c - c0), V::window(mrow[r], c));
      RTL_UNROLL
      for (int t = 0; t < RT; ++t) acc[t][r] = V::fmadd(xv[t], wv, acc[t][r]);
    }
  }
  if (cf < c1) {  // tail: lanes past C are neither read nor counted
    const uint32_t lim = (1u << (c1 - cf)) - 1u;
    vec xv[RT];
    RTL_UNROLL
    for (int t = 0; t < RT; ++t) xv[t] = V::load_lim(xr[t] + cf, lim);
    RTL_UNROLL
    for (int r = 0; r < NR; ++r) {
      const vec wv = V::load_bits(panel + r * kStride + (cf - c0), V::clip(V::window(mrow[r], cf), lim));
      RTL_UNROLL
      for (int t = 0; t < RT; ++t) acc[t][r] = V::fmadd(xv[t], wv, acc[t][r]);
    }
  }
  RTL_UNROLL
  for (int t = 0; t < RT; ++t) {
    if (last) {
      RTL_UNROLL
      for (int r = 0; r < NR; ++r)  // constant bounds keep acc in registers
        if (r < rn) y[rows[t] * p.N + n + r] += V::reduce(acc[t][r]);
    } else {
      RTL_UNROLL
      for (int r = 0; r < NR; ++r) park[t * NR + r] = acc[t][r];
    }
  }
}

// y[m, n] = x[m] . (W[n] & mask[route(m)][n]) for n in [n0, n1) (y zeroed by the caller)
static void forward(const Problem& p, float* y, int64_t n0, int64_t n1) {
  alignas(64) float panel[NR * kStride] = {};  // rows past the last output row stay finite filler
  alignas(64) vec park[kWindow * NR];
  const uint32_t* mrow[NR];
  for (int64_t q0 = 0; q0 < p.M; q0 += kWindow) {
    const int64_t q1 = imin(p.M, q0 + kWindow);
    for (int64_t n = n0; n < n1; n += NR) {
      const int rn = static_cast<int>(imin(NR, n1 - n));
      for (int64_t c0 = 0; c0 < p.C; c0 += kChunk) {
        const int64_t c1 = imin(c0 + kChunk, p.C);
        const bool first = c0 == 0, last = c1 == p.C;
        for (int r = 0; r < rn; ++r) gen_chunk(p, n + r, c0, c1 - c0, panel + r * kStride);
        for (int64_t k = 0; k < p.K; ++k) {
          const int64_t lo = p.offsets[k] > q0 ? p.offsets[k] : q0, hi = imin(p.offsets[k + 1], q1);
          if (lo >= hi) continue;
          for (int r = 0; r < NR; ++r) mrow[r] = p.bits + (k * p.N + n + (r < rn ? r : 0)) * p.words;  // rows past rn: computed, not stored
          for (int64_t r = n + NR; r < imin(n + 2 * NR, n1); ++r)  // the next panel's mask bits of this chunk
            __builtin_prefetch(p.bits + (k * p.N + r) * p.words + (c0 >> 5));
          for (int64_t q = lo; q < hi;) {
            vec* pk = park + (q - q0) * NR;
            const int64_t rem = hi - q;
            if (RTM >= 3 && rem >= 3) {
              fwd_tile<(RTM >= 3 ? 3 : 1)>(p, p.perm + q, mrow, panel, c0, c1, pk, first, last, n, rn, y);
              q += RTM >= 3 ? 3 : 1;
            } else if (rem >= 2) {
              fwd_tile<2>(p, p.perm + q, mrow, panel, c0, c1, pk, first, last, n, rn, y);
              q += 2;
            } else {
              fwd_tile<1>(p, p.perm + q, mrow, panel, c0, c1, pk, first, last, n, rn, y);
              q += 1;
            }
          }
        }
      }
    }
  }
}

// dx[rows[t], c] += sum over the panel's rows r of dy[rows[t], n + r] * (W[n + r, c] & mask[k][n + r, c]) for
// the columns [cb, ce) of the panel, rows[0 : RT) of one ticket k (each masked panel vector serves all RT rows)
template <int RT>
static void dx_tile(const Problem& p, const int64_t* rows, const uint32_t* const* mrow, const float* panel, int64_t cb, int64_t ce, int64_t n, int rn,
                    float* dx) {
  vec dyv[RT][NR];
  float* out[RT];
  RTL_UNROLL
  for (int t = 0; t < RT; ++t) {
    out[t] = dx + rows[t] * p.C;
    RTL_UNROLL
    for (int r = 0; r < NR; ++r) dyv[t][r] = r < rn ? V::bcast(p.dy[rows[t] * p.N + n + r]) : V::zero();  // past rn: adds 0 * finite
  }
  const int64_t cf = cb + (ce - cb) / L * L;
  for (int64_t c = cb; c < cf; c += L) {
    vec acc[RT];
    RTL_UNROLL
    for (int t = 0; t < RT; ++t) acc[t] = V::load(out[t] + c);
    RTL_UNROLL
    for (int r = 0; r < NR; ++r) {
      const vec wv = V::load_bits(panel + r * kStride + (c - cb), V::window(mrow[r], c));
      RTL_UNROLL
      for (int t = 0; t < RT; ++t) acc[t] = V::fmadd(dyv[t][r], wv, acc[t]);
    }
    RTL_UNROLL
    for (int t = 0; t < RT; ++t) V::store(out[t] + c, acc[t]);
  }
  if (cf < ce) {
    const uint32_t lim = (1u << (ce - cf)) - 1u;
    vec acc[RT];
    RTL_UNROLL
    for (int t = 0; t < RT; ++t) acc[t] = V::load_lim(out[t] + cf, lim);
    RTL_UNROLL
    for (int r = 0; r < NR; ++r) {
      const vec wv = V::load_bits(panel + r * kStride + (cf - cb), V::clip(V::window(mrow[r], cf), lim));
      RTL_UNROLL
      for (int t = 0; t < RT; ++t) acc[t] = V::fmadd(dyv[t][r], wv, acc[t]);
    }
    RTL_UNROLL
    for (int t = 0; t < RT; ++t) V::store_lim(out[t] + cf, acc[t], lim);
  }
}

// dx over columns [c0, c1) (c0 a multiple of 32): each panel of NR weight rows is generated once and
// added into every row's dx under that row's ticket mask; the caller zeroes dx.
static void grad_x(const Problem& p, float* dx, int64_t c0, int64_t c1) {
  alignas(64) float panel[NR * kStride] = {};
  const uint32_t* mrow[NR];
  for (int64_t cb = c0; cb < c1; cb += kChunk) {
    const int64_t ce = imin(cb + kChunk, c1);
    for (int64_t n = 0; n < p.N; n += NR) {
      const int rn = static_cast<int>(imin(NR, p.N - n));
      for (int r = 0; r < rn; ++r) gen_chunk(p, n + r, cb, ce - cb, panel + r * kStride);
      for (int64_t k = 0; k < p.K; ++k) {
        const int64_t lo = p.offsets[k], hi = p.offsets[k + 1];
        if (lo == hi) continue;
        for (int r = 0; r < NR; ++r) mrow[r] = p.bits + (k * p.N + n + (r < rn ? r : 0)) * p.words;
        for (int64_t r = n + NR; r < imin(n + 2 * NR, p.N); ++r) __builtin_prefetch(p.bits + (k * p.N + r) * p.words + (cb >> 5));
        for (int64_t q = lo; q < hi;) {
          if (hi - q >= 2) {
            dx_tile<2>(p, p.perm + q, mrow, panel, cb, ce, n, rn, dx);
            q += 2;
          } else {
            dx_tile<1>(p, p.perm + q, mrow, panel, cb, ce, n, rn, dx);
            q += 1;
          }
        }
      }
    }
  }
}

// out[n, c] = W[n, c] (unmasked) for n in [n0, n1)
static void generate(const Problem& p, float* out, int64_t n0, int64_t n1) {
  alignas(64) float row[kStride];
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t c0 = 0; c0 < p.C; c0 += kChunk) {
      const int64_t c1 = imin(c0 + kChunk, p.C);
      gen_chunk(p, n, c0, c1 - c0, row);
      for (int64_t j = 0; j < c1 - c0; ++j) out[n * p.C + c0 + j] = row[j];
    }
}

}  // namespace RTL_SEEDED_NS
