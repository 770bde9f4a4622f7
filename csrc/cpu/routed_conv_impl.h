// The routed conv2d kernels (see routed_conv.h), written once against a vector-traits class `V`
// and compiled once per ISA: routed_conv_<isa>.cpp defines RTL_ISA_NS and `V` with its target
// options active and then includes this file (no standard headers here, as in routed_cpu_impl.h).
//
// Traits `V`: L (lanes), vec, zero, bcast, fmadd, add, load (L lanes), load_masked / store_masked
// (lanes of a uint32 lane mask only), store, transpose (an L x L block in place), gather_select (lane i = w[i * es] if lane i is live
// and bit b + i * bs of mask row m + i * ws is set, else 0; nothing else is read), and the register
// tiles MR4 / MR2 / MR1 (row pixels of a tile whose panel is 4, 2 or 1 vectors wide), WMR (dW).

namespace RTL_ISA_NS {

using rtl_cpu::ConvProblem;
using rtl_cpu::Gather;
typedef typename V::vec vec;

static constexpr int L = V::L;
static constexpr uint32_t kFull = L >= 32 ? 0xffffffffu : (1u << L) - 1u;

static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
static inline uint32_t lanes_below(int64_t n) { return n >= L ? kFull : (n <= 0 ? 0u : (1u << n) - 1u); }
static inline bool bit(const uint32_t* mrow, int64_t r) { return (mrow[r >> 5] >> (r & 31)) & 1u; }

// panel width (vectors) for nout output lanes per group: wide panels read each source value once
static inline int panel_vectors(int64_t nout) { return nout > 2 * L ? 4 : (nout > L ? 2 : 1); }

// ------------------------------------------------------------------------------- packing

static int64_t pack_floats(const ConvProblem& p, bool dx) {
  if (rtl_cpu::conv_is_depthwise(p)) return p.taps() * ((p.C + L - 1) / L) * L;
  const int64_t nout = dx ? p.Cg : p.Ng, cr = dx ? p.Ng : p.Cg;
  const int64_t nr = panel_vectors(nout) * L;
  return (nout + nr - 1) / nr * nr * p.taps() * cr;
}

// Forward panels of ticket k, group g: out[j][t * Cg + c][l] = w[n, c, t] where n = g * Ng + j * NR + l
// is kept by the mask (else 0; lanes past Ng are 0). dX panels: out[j][t * Ng + n][l] = w[g * Ng + n, j * NR + l, t].
// Depthwise: out[t][c] = w[c, 0, t] for all C channels at once. Every output float is written once,
// in order; the weight rows a panel reads stay in L1 while it fills.
static void pack(const ConvProblem& p, bool dx, int64_t k, int64_t g, float* out) {
  const int64_t taps = p.taps(), R = p.R();
  const uint32_t* mbase = p.bits + k * p.N * p.words;
  if (rtl_cpu::conv_is_depthwise(p)) {
    const int64_t cpad = pack_floats(p, dx) / taps;
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t c = 0; c < cpad; ++c) out[t * cpad + c] = c < p.C && bit(mbase + c * p.words, t) ? p.w[c * R + t] : 0.0f;
    return;
  }
  const int64_t nout = dx ? p.Cg : p.Ng, cr = dx ? p.Ng : p.Cg;
  const int64_t nr = panel_vectors(nout) * L, panels = (nout + nr - 1) / nr;
  for (int64_t j = 0; j < panels; ++j) {
    float* panel = out + j * taps * cr * nr;
    for (int64_t lb = 0; lb < nr; lb += L) {
      const int64_t first = j * nr + lb;  // first output lane of this vector
      if (!dx) {
        // L weight rows at a time: L x L blocks loaded under their mask bits (16-bit slices are
        // lane masks), transposed in registers, each column stored to its (tap, channel) slot
        const int live = static_cast<int>(imin(L, p.Ng - first));
        const float* wr[L];
        const uint32_t* mr[L];
        for (int i = 0; i < live; ++i) {
          wr[i] = p.w + (g * p.Ng + first + i) * R;
          mr[i] = mbase + (g * p.Ng + first + i) * p.words;
        }
        int64_t c = 0, t = 0;  // (channel, tap) of column r0
        for (int64_t r0 = 0; r0 < R; r0 += L) {
          const uint32_t lim = lanes_below(R - r0);
          vec v[L];
          for (int i = 0; i < L; ++i) v[i] = i < live ? V::load_masked(wr[i] + r0, ((mr[i][r0 >> 5] >> (r0 & 31)) & kFull) & lim) : V::zero();
          if (live > 0) V::transpose(v);
          for (int64_t jj = 0; jj < L && r0 + jj < R; ++jj) {
            V::store(panel + (t * p.Cg + c) * nr + lb, v[jj]);
            if (++t == taps) t = 0, ++c;
          }
        }
        continue;
      }
      // dX: lane i is input channel first + i of weight row n, column (first + i) * taps + t
      const uint32_t live = lanes_below(nout - first);
      for (int64_t n = 0; n < p.Ng; ++n) {
        const int64_t row = g * p.Ng + n;
        const float* wr = p.w + row * R + first * taps;
        const uint32_t* mr = mbase + row * p.words;
        for (int64_t t = 0; t < taps; ++t) {
          const vec v = live ? V::gather_select(wr + t, mr, taps, 0, first * taps + t, taps, live) : V::zero();
          V::store(panel + (t * p.Ng + n) * nr + lb, v);
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------- gathered GEMM

// MR row pixels [r, r + live) of image b x one panel of NV vectors: the sum over taps and source
// channels, stored (plus bias) to the live rows' output lanes [j0, j0 + nlanes)
template <int MR, int NV>
static void tile(const Gather& a, int64_t b, int64_t g, int64_t r, int live, const float* panel, int64_t j0, int64_t nlanes) {
  vec acc[MR][NV];
  RTL_UNROLL
  for (int i = 0; i < MR; ++i)
    RTL_UNROLL
    for (int v = 0; v < NV; ++v) acc[i][v] = V::zero();
  const float* src_img = a.src + b * a.src_pixels * a.src_channels + g * a.cr;
  const int32_t* trow = a.table + r * a.taps;
  constexpr int64_t NR = NV * L;
  for (int64_t t = 0; t < a.taps; ++t) {
    const float* s[MR];
    bool any = false;
    RTL_UNROLL
    for (int i = 0; i < MR; ++i) {
      const int32_t src = i < live ? trow[i * a.taps + t] : -1;
      s[i] = src >= 0 ? src_img + static_cast<int64_t>(src) * a.src_channels : a.zeros;
      any |= src >= 0;
    }
    if (!any) continue;
    const float* bp = panel + t * a.cr * NR;
    for (int64_t c = 0; c < a.cr; ++c, bp += NR) {
      vec bv[NV];
      RTL_UNROLL
      for (int v = 0; v < NV; ++v) bv[v] = V::load(bp + v * L);
      RTL_UNROLL
      for (int i = 0; i < MR; ++i) {
        const vec x = V::bcast(s[i][c]);
        RTL_UNROLL
        for (int v = 0; v < NV; ++v) acc[i][v] = V::fmadd(x, bv[v], acc[i][v]);
      }
    }
  }
  const int64_t ch0 = g * a.nout + j0;
  for (int i = 0; i < live; ++i) {
    float* o = a.out + ((b * a.rows) + r + i) * a.out_channels + ch0;
    RTL_UNROLL
    for (int v = 0; v < NV; ++v) {
      const int64_t left = nlanes - v * L;
      if (left <= 0) break;
      vec y = acc[i][v];
      if (a.bias != nullptr) y = V::add(y, V::load_masked(a.bias + ch0 + v * L, lanes_below(left)));
      if (left >= L)
        V::store(o + v * L, y);
      else
        V::store_masked(o + v * L, y, lanes_below(left));
    }
  }
}

template <int NV>
static void rows_panels(const Gather& a, int64_t b, int64_t g, int64_t r0, int64_t r1, const float* packed) {
  constexpr int MR = NV == 4 ? V::MR4 : (NV == 2 ? V::MR2 : V::MR1);
  constexpr int64_t NR = NV * L;
  const int64_t panels = (a.nout + NR - 1) / NR;
  for (int64_t r = r0; r < r1; r += MR) {
    const int live = static_cast<int>(imin(MR, r1 - r));
    for (int64_t j = 0; j < panels; ++j)
      tile<MR, NV>(a, b, g, r, live, packed + j * a.taps * a.cr * NR, j * NR, imin(NR, a.nout - j * NR));
  }
}

// items: (sorted image q, group g, chunk of rows)
static void gather(const Gather& a, int64_t i0, int64_t i1) {
  const int64_t chunks = (a.rows + a.chunk_rows - 1) / a.chunk_rows;
  const int nv = panel_vectors(a.nout);
  for (int64_t item = i0; item < i1; ++item) {
    const int64_t ch = item % chunks, qg = item / chunks;
    const int64_t g = qg % a.groups, q = qg / a.groups;
    const int64_t b = a.perm[q];
    const float* packed = a.packed + (a.slot[q] * a.groups + g) * a.pack_floats;
    const int64_t r0 = ch * a.chunk_rows, r1 = imin(r0 + a.chunk_rows, a.rows);
    if (nv == 4)
      rows_panels<4>(a, b, g, r0, r1, packed);
    else if (nv == 2)
      rows_panels<2>(a, b, g, r0, r1, packed);
    else
      rows_panels<1>(a, b, g, r0, r1, packed);
  }
}

// depthwise: each channel convolved with its own taps; channels are the vector lanes, so the
// source row of a tap is loaded whole (a.src_channels = a.out_channels = C, packed [taps][cpad])
static void gather_depthwise(const Gather& a, int64_t i0, int64_t i1) {
  const int64_t chunks = (a.rows + a.chunk_rows - 1) / a.chunk_rows;
  const int64_t C = a.out_channels, cpad = (C + L - 1) / L * L;
  for (int64_t item = i0; item < i1; ++item) {
    const int64_t ch = item % chunks, q = item / chunks;
    const int64_t b = a.perm[q];
    const float* wd = a.packed + a.slot[q] * a.pack_floats;
    const float* src_img = a.src + b * a.src_pixels * C;
    const int64_t r1 = imin((ch + 1) * a.chunk_rows, a.rows);
    for (int64_t r = ch * a.chunk_rows; r < r1; ++r) {
      const int32_t* trow = a.table + r * a.taps;
      float* o = a.out + (b * a.rows + r) * C;
      for (int64_t c0 = 0; c0 < C; c0 += 4 * L) {
        vec acc[4] = {V::zero(), V::zero(), V::zero(), V::zero()};
        const int nv = static_cast<int>(imin(4, (C - c0 + L - 1) / L));
        const uint32_t tail = lanes_below(C - c0 - (nv - 1) * L);
        for (int64_t t = 0; t < a.taps; ++t) {
          if (trow[t] < 0) continue;
          const float* s = src_img + static_cast<int64_t>(trow[t]) * C + c0;
          const float* wt = wd + t * cpad + c0;
          for (int v = 0; v < nv; ++v) {
            const vec x = v == nv - 1 ? V::load_masked(s + v * L, tail) : V::load(s + v * L);
            acc[v] = V::fmadd(x, V::load(wt + v * L), acc[v]);
          }
        }
        for (int v = 0; v < nv; ++v) {
          const uint32_t m = v == nv - 1 ? tail : kFull;
          vec y = acc[v];
          if (a.bias != nullptr) y = V::add(y, V::load_masked(a.bias + c0 + v * L, m));
          V::store_masked(o + c0 + v * L, y, m);
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------- grad w

// dW tiles: WMR weight rows (output channels of one group) x WNV vectors of input channels, one tap
static constexpr int WMR = V::WMR, WNV = 4;

static int64_t grad_w_items(const ConvProblem& p) {
  if (rtl_cpu::conv_is_depthwise(p)) return p.taps() * ((p.C + WNV * L - 1) / (WNV * L));
  return p.groups * ((p.Ng + WMR - 1) / WMR) * p.taps() * ((p.Cg + WNV * L - 1) / (WNV * L));
}

// dw[n, c, t] += mask_k(n, c, t) ? sums[n][c] : 0 for one ticket's sums of a tile (sums: [WMR][WNV * L] floats)
static void masked_store(const ConvProblem& p, int64_t k, int64_t n0, int nrows, int64_t c0, int64_t nc, int64_t t, const float* sums, float* dw) {
  const int64_t taps = p.taps(), R = p.R();
  for (int i = 0; i < nrows; ++i) {
    const int64_t n = n0 + i;
    const uint32_t* mrow = p.bits + (k * p.N + n) * p.words;
    for (int64_t j = 0; j < nc; ++j) {
      const int64_t r = (c0 + j) * taps + t;
      if (bit(mrow, r)) dw[n * R + r] += sums[i * WNV * L + j];
    }
  }
}

// sorted images [qa, qb) of one ticket contribute to dW tile `item` (dense groups)
static void grad_w_dense_tile(const ConvProblem& p, const int32_t* table, const float* x, const float* dy, float* dw, int64_t item, int64_t k, int64_t qa,
                              int64_t qb) {
  const int64_t taps = p.taps(), rows = p.Ho * p.Wo, pix = p.H * p.W;
  const int64_t ntiles = (p.Ng + WMR - 1) / WMR, cblocks = (p.Cg + WNV * L - 1) / (WNV * L);
  int64_t rest = item;
  const int64_t cb = rest % cblocks;
  rest /= cblocks;
  const int64_t t = rest % taps;
  rest /= taps;
  const int64_t nt = rest % ntiles, g = rest / ntiles;
  const int64_t n0 = nt * WMR, c0 = cb * WNV * L;
  const int nrows = static_cast<int>(imin(WMR, p.Ng - n0));
  const int64_t nc = imin(WNV * L, p.Cg - c0);
  const int nv = static_cast<int>((nc + L - 1) / L);
  const uint32_t tail = lanes_below(nc - (nv - 1) * L);
  vec s[WMR][WNV];
  RTL_UNROLL
  for (int i = 0; i < WMR; ++i)
    RTL_UNROLL
    for (int v = 0; v < WNV; ++v) s[i][v] = V::zero();
  for (int64_t q = qa; q < qb; ++q) {
    const int64_t b = p.perm[q];
    const float* ximg = x + b * pix * p.C + g * p.Cg + c0;
    const float* dimg = dy + b * rows * p.N + g * p.Ng + n0;
    for (int64_t r = 0; r < rows; ++r) {
      const int32_t src = table[r * taps + t];
      if (src < 0) continue;
      const float* xs = ximg + static_cast<int64_t>(src) * p.C;
      const float* d = dimg + r * p.N;
      vec xv[WNV];
      RTL_UNROLL
      for (int v = 0; v < WNV; ++v) xv[v] = v < nv - 1 ? V::load(xs + v * L) : (v == nv - 1 ? V::load_masked(xs + v * L, tail) : V::zero());
      RTL_UNROLL
      for (int i = 0; i < WMR; ++i) {
        const vec dv = V::bcast(d[i < nrows ? i : 0]);
        RTL_UNROLL
        for (int v = 0; v < WNV; ++v) s[i][v] = V::fmadd(dv, xv[v], s[i][v]);
      }
    }
  }
  // through a plain buffer, so the accumulators' address never escapes (they stay in registers)
  float sums[WMR * WNV * L];
  RTL_UNROLL
  for (int i = 0; i < WMR; ++i)
    RTL_UNROLL
    for (int v = 0; v < WNV; ++v) V::store(sums + (i * WNV + v) * L, s[i][v]);
  masked_store(p, k, g * p.Ng + n0, nrows, c0, nc, t, sums, dw);
}

// depthwise: tile `item` = (tap, block of WNV vectors of channels); dw[c, 0, t] += mask ? sum_p dy[p, c] x[src(p, t), c] : 0
static void grad_w_depthwise_tile(const ConvProblem& p, const int32_t* table, const float* x, const float* dy, float* dw, int64_t item, int64_t k,
                                  int64_t qa, int64_t qb) {
  const int64_t taps = p.taps(), rows = p.Ho * p.Wo, pix = p.H * p.W, C = p.C;
  const int64_t cblocks = (C + WNV * L - 1) / (WNV * L);
  const int64_t t = item / cblocks, c0 = (item % cblocks) * WNV * L;
  const int64_t nc = imin(WNV * L, C - c0);
  const int nv = static_cast<int>((nc + L - 1) / L);
  const uint32_t tail = lanes_below(nc - (nv - 1) * L);
  vec s[WNV] = {V::zero(), V::zero(), V::zero(), V::zero()};
  for (int64_t q = qa; q < qb; ++q) {
    const int64_t b = p.perm[q];
    for (int64_t r = 0; r < rows; ++r) {
      const int32_t src = table[r * taps + t];
      if (src < 0) continue;
      const float* xs = x + (b * pix + src) * C + c0;
      const float* d = dy + (b * rows + r) * C + c0;
      for (int v = 0; v < nv; ++v) {
        const uint32_t m = v == nv - 1 ? tail : kFull;
        s[v] = V::fmadd(V::load_masked(d + v * L, m), V::load_masked(xs + v * L, m), s[v]);
      }
    }
  }
  for (int v = 0; v < nv; ++v) {
    float lanes[L];
    V::store(lanes, s[v]);
    for (int l = 0; l < L && v * L + l < nc; ++l) {
      const int64_t c = c0 + v * L + l;
      if (bit(p.bits + (k * p.N + c) * p.words, t)) dw[c * taps + t] += lanes[l];
    }
  }
}

// Tiles [i0, i1) over every ticket's images, a block of images at a time (x and dy of the block
// stay in cache for all the tiles instead of streaming from memory once per tile)
static void grad_w(const ConvProblem& p, const int32_t* table, const float* x, const float* dy, float* dw, int64_t i0, int64_t i1) {
  const bool depthwise = rtl_cpu::conv_is_depthwise(p);
  const int64_t image_bytes = (p.H * p.W * p.C + p.Ho * p.Wo * p.N) * static_cast<int64_t>(sizeof(float));
  const int64_t block = image_bytes > 0 ? (256 * 1024 + image_bytes - 1) / image_bytes : 1;
  for (int64_t k = 0; k < p.K; ++k)
    for (int64_t qa = p.offsets[k]; qa < p.offsets[k + 1]; qa += block) {
      const int64_t qb = imin(qa + block, p.offsets[k + 1]);
      for (int64_t item = i0; item < i1; ++item) {
        if (depthwise)
          grad_w_depthwise_tile(p, table, x, dy, dw, item, k, qa, qb);
        else
          grad_w_dense_tile(p, table, x, dy, dw, item, k, qa, qb);
      }
    }
}

}  // namespace RTL_ISA_NS
