// Seeded-weight kernels written once against a small traits class `V`, compiled per ISA (see
// seeded_cpu.h for the stream layout). Each seeded_<isa>.cpp defines RTL_SEEDED_NS and `V` with
// its target options active, then includes this file. No standard headers here.
//
// Traits `V`: L (lanes, divides 32), vec, zero, fmadd, load_lim (first `lim` lanes, others 0),
// load_bits (lanes whose bit is set, others 0), reduce, store, philox (L consecutive blocks,
// written in stream order), signs (L lanes of +s / -s from the low L bits).

namespace RTL_SEEDED_NS {

using rtl_seeded::Problem;
typedef typename V::vec vec;
static constexpr int L = V::L;
static constexpr uint32_t kFull = L == 32 ? 0xFFFFFFFFu : ((1u << L) - 1u);
static constexpr int64_t kChunk = 512;     // forward: columns of a generated panel row (2 KiB)
static constexpr int kRows = 4;            // forward: weight rows per panel (8 KiB in L1)

static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

// stream words [g0, g0 + n) into out (n <= kChunk + 4 L)
static void stream_words(const Problem& p, int64_t g0, int64_t n, uint32_t* out) {
  if (n <= 0) return;
  uint32_t tmp[4 * L];
  const int64_t b_end = (g0 + n - 1) / 4 + 1;
  for (int64_t b = g0 / 4; b < b_end; b += L) {
    V::philox(p.key_lo, p.key_hi, static_cast<uint64_t>(b), tmp);
    const int64_t lo = imax(b * 4, g0), hi = imin((b + L) * 4, g0 + n);
    for (int64_t g = lo; g < hi; ++g) out[g - g0] = tmp[g - b * 4];
  }
}

// W[n, c0:c1) (unmasked, scaled) into out[0 : c1 - c0), padded with zeros to a multiple of L
static void gen_row(const Problem& p, int64_t n, int64_t c0, int64_t c1, float* out) {
  const int64_t e0 = n * p.C + c0, cnt = c1 - c0;
  const float s = p.row_scale[n];
  uint32_t w[kChunk + 4 * L + 8];
  if (p.dist == rtl_seeded::kSignedConstant) {
    const int64_t g0 = e0 >> 5, nw = ((e0 + cnt - 1) >> 5) - g0 + 2;
    stream_words(p, g0, nw, w);
    for (int64_t j = 0; j < cnt; j += L) {
      const int64_t i = e0 + j, gw = (i >> 5) - g0;
      const uint64_t two = static_cast<uint64_t>(w[gw]) | (static_cast<uint64_t>(w[gw + 1]) << 32);
      V::signs(static_cast<uint32_t>(two >> (i & 31)) & kFull, s, out + j);
    }
  } else {
    stream_words(p, e0, cnt, w);
    for (int64_t j = 0; j < cnt; ++j) {
      const int32_t t = static_cast<int32_t>((w[j] >> 9) * 2u + 1u) - (1 << 23);
      out[j] = (static_cast<float>(t) * 0x1p-23f) * s;
    }
  }
  for (int64_t j = cnt; j % L; ++j) out[j] = 0.0f;
}

static inline uint32_t chunk_bits(const uint32_t* mrow, int64_t c) { return (mrow[c >> 5] >> (c & 31)) & kFull; }
static inline uint32_t lim_bits(int64_t c, int64_t C) { return C - c >= L ? kFull : ((1u << (C - c)) - 1u); }

// RT rows (of one ticket) x kRows panel rows over the panel's columns [c0, c1)
template <int RT>
static void fwd_tile(const Problem& p, const int64_t* rows, const uint32_t* const* mrow, const float* panel, int64_t n, int rn, int64_t c0,
                     int64_t c1, float* y) {
  vec acc[RT][kRows];
  const float* xr[RT];
  RTL_UNROLL
  for (int t = 0; t < RT; ++t) {
    xr[t] = p.x + rows[t] * p.C;
    RTL_UNROLL
    for (int r = 0; r < kRows; ++r) acc[t][r] = V::zero();
  }
  for (int64_t c = c0; c < c1; c += L) {
    const uint32_t lim = lim_bits(c, p.C);
    vec xv[RT];
    RTL_UNROLL
    for (int t = 0; t < RT; ++t) xv[t] = V::load_lim(xr[t] + c, lim);
    RTL_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const vec wv = V::load_bits(panel + r * (kChunk + L) + (c - c0), chunk_bits(mrow[r], c) & lim);
      RTL_UNROLL
      for (int t = 0; t < RT; ++t) acc[t][r] = V::fmadd(xv[t], wv, acc[t][r]);
    }
  }
  RTL_UNROLL
  for (int t = 0; t < RT; ++t)
    for (int r = 0; r < rn; ++r) y[rows[t] * p.N + n + r] += V::reduce(acc[t][r]);
}

// weight-stationary: a panel of kRows x kChunk weights is generated once and used by every active ticket's rows
static void forward(const Problem& p, float* y, int64_t n0, int64_t n1) {
  alignas(64) float panel[kRows * (kChunk + L)] = {};
  const uint32_t* mrow[kRows];
  for (int64_t n = n0; n < n1; n += kRows) {
    const int rn = static_cast<int>(imin(kRows, n1 - n));
    for (int64_t c0 = 0; c0 < p.C; c0 += kChunk) {
      const int64_t c1 = imin(c0 + kChunk, p.C);
      for (int r = 0; r < rn; ++r) gen_row(p, n + r, c0, c1, panel + r * (kChunk + L));
      for (int64_t k = 0; k < p.K; ++k) {
        const int64_t lo = p.offsets[k], hi = p.offsets[k + 1];
        if (lo == hi) continue;
        for (int r = 0; r < kRows; ++r) mrow[r] = p.bits + (k * p.N + n + (r < rn ? r : 0)) * p.words;  // rows past rn: computed, not stored
        for (int64_t q = lo; q < hi;) {
          if (hi - q >= 4) {
            fwd_tile<4>(p, p.perm + q, mrow, panel, n, rn, c0, c1, y);
            q += 4;
          } else if (hi - q >= 2) {
            fwd_tile<2>(p, p.perm + q, mrow, panel, n, rn, c0, c1, y);
            q += 2;
          } else {
            fwd_tile<1>(p, p.perm + q, mrow, panel, n, rn, c0, c1, y);
            q += 1;
          }
        }
      }
    }
  }
}

// dx over columns [c0, c1): every weight row's slice is generated once and added into each row's dx
// under that row's ticket mask; dx rows accumulate in place (the caller zeroes dx).
static void grad_x(const Problem& p, float* dx, int64_t c0, int64_t c1) {
  alignas(64) float wrow[kChunk + L];
  for (int64_t cb = c0; cb < c1; cb += kChunk) {
    const int64_t ce = imin(cb + kChunk, c1);
    for (int64_t n = 0; n < p.N; ++n) {
      gen_row(p, n, cb, ce, wrow);
      for (int64_t k = 0; k < p.K; ++k) {
        const int64_t lo = p.offsets[k], hi = p.offsets[k + 1];
        if (lo == hi) continue;
        const uint32_t* mrow = p.bits + (k * p.N + n) * p.words;
        for (int64_t q = lo; q < hi; ++q) {
          const int64_t m = p.perm[q];
          const vec d = V::bcast(p.dy[m * p.N + n]);
          float* out = dx + m * p.C;
          for (int64_t c = cb; c < ce; c += L) {
            const uint32_t lim = lim_bits(c, p.C);
            const vec wv = V::load_bits(wrow + (c - cb), chunk_bits(mrow, c) & lim);
            V::store_lim(out + c, V::fmadd(d, wv, V::load_lim(out + c, lim)), lim);
          }
        }
      }
    }
  }
}

static void generate(const Problem& p, float* out, int64_t n0, int64_t n1) {
  alignas(64) float row[kChunk + L];
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t c0 = 0; c0 < p.C; c0 += kChunk) {
      const int64_t c1 = imin(c0 + kChunk, p.C);
      gen_row(p, n, c0, c1, row);
      for (int64_t j = 0; j < c1 - c0; ++j) out[n * p.C + c0 + j] = row[j];
    }
}

}  // namespace RTL_SEEDED_NS
