// The routed masked linear kernels, written once against a small vector-traits class `V` and
// compiled once per ISA: each routed_<isa>.cpp defines RTL_ISA_NS and `V` (with its target
// options active) and then includes this file. No standard headers are included here, so
// nothing inline from a shared header is compiled with a wider ISA than the CPU may have.
//
// Traits `V` provide: L (lanes), RT / RN / CB (register tile: rows x W-rows, rows x column
// chunks), vec, mask (lane mask type), mask_at (mask bits of the L columns at c of a mask row),
// to_mask (from uint32 bits), zero, bcast, fmadd, mul, load (L readable lanes), load_keep (L readable lanes,
// zero outside a `mask`), load_masked (only lanes in `m` are read), mask_add (acc + (m ? s : 0)),
// reduce (horizontal sum), store, store_masked, copy_keep (raw copy of L lanes, zero outside
// `keep`). Lane i of a chunk starting at column c is column c + i; a chunk never straddles a
// mask word because L divides 32.

namespace RTL_ISA_NS {

using rtl_cpu::Problem;
typedef uint16_t bf16_t;
typedef typename V::vec vec;

static constexpr int L = V::L;
static constexpr uint32_t kFull = (1u << L) - 1u;
// forward column block (4 KiB of each row): the W block and the x slices it meets stay in cache
// across tickets, and each partial sum is reduced once per block (L divides it)
template <typename T>
static constexpr int64_t kColChunk = 4096 / sizeof(T);

static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
// rows handled by one register tile: 4, 2 or 1 (capped by V::RT), so few tile shapes are compiled
static inline int row_tile(int64_t left) { return left >= 4 && V::RT >= 4 ? 4 : (left >= 2 && V::RT >= 2 ? 2 : 1); }

static inline float to_f32(float v) { return v; }
static inline float to_f32(bf16_t v) {
  const uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  __builtin_memcpy(&f, &u, sizeof f);
  return f;
}

// mask bits of columns [c, c + L) of one mask row (c is a multiple of L)
static inline uint32_t chunk_mask(const uint32_t* mrow, int64_t c) { return (mrow[c >> 5] >> (c & 31)) & kFull; }
// lanes of a chunk at column c that lie inside a row of C columns
static inline uint32_t limit_mask(int64_t c, int64_t C) { return C - c >= L ? kFull : ((1u << (C - c)) - 1u); }

// ------------------------------------------------------------------------------- forward

// columns [c0, c1) of rows `rows` x W rows n..n+RN-1, added to y (bias added with the first block)
template <typename T, int RT, int RN>
static void fwd_tile(const Problem& p, const int64_t* rows, const uint32_t* const* mrow, int64_t n, int64_t c0, int64_t c1, const float* bias, float* y) {
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.w);
  const int64_t C = p.C;
  const T* xr[RT];
  const T* wr[RN];
  RTL_UNROLL
  for (int t = 0; t < RT; ++t) xr[t] = x + rows[t] * C;
  RTL_UNROLL
  for (int r = 0; r < RN; ++r) wr[r] = w + (n + r) * C;
  vec acc[RT][RN];
  RTL_UNROLL
  for (int t = 0; t < RT; ++t)
    RTL_UNROLL
    for (int r = 0; r < RN; ++r) acc[t][r] = V::zero();
  int64_t c = c0;
  for (; c + L <= c1; c += L) {
    vec xv[RT];
    RTL_UNROLL
    for (int t = 0; t < RT; ++t) xv[t] = V::load(xr[t] + c);
    RTL_UNROLL
    for (int r = 0; r < RN; ++r) {
      const vec wv = V::load_keep(wr[r] + c, V::mask_at(mrow[r], c));
      RTL_UNROLL
      for (int t = 0; t < RT; ++t) acc[t][r] = V::fmadd(xv[t], wv, acc[t][r]);
    }
  }
  if (c < c1) {  // only the last block of a row is partial (c1 = C)
    const uint32_t lim = limit_mask(c, C);
    vec xv[RT];
    RTL_UNROLL
    for (int t = 0; t < RT; ++t) xv[t] = V::load_masked(xr[t] + c, lim);
    RTL_UNROLL
    for (int r = 0; r < RN; ++r) {
      const vec wv = V::load_masked(wr[r] + c, chunk_mask(mrow[r], c) & lim);
      RTL_UNROLL
      for (int t = 0; t < RT; ++t) acc[t][r] = V::fmadd(xv[t], wv, acc[t][r]);
    }
  }
  const bool first = c0 == 0 && bias != nullptr;
  RTL_UNROLL
  for (int t = 0; t < RT; ++t)
    RTL_UNROLL
    for (int r = 0; r < RN; ++r) y[rows[t] * p.N + n + r] += V::reduce(acc[t][r]) + (first ? bias[n + r] : 0.0f);
}

// W rows per register tile for RT rows: fewer rows leave registers for more W rows
template <int RT>
static constexpr int kFwdRN = V::fwd_rn(RT);

template <typename T, int RT>
static void fwd_rn(int rn, const Problem& p, const int64_t* rows, const uint32_t* const* mrow, int64_t n, int64_t c0, int64_t c1, const float* bias, float* y) {
  if (rn == kFwdRN<RT>)
    fwd_tile<T, RT, kFwdRN<RT>>(p, rows, mrow, n, c0, c1, bias, y);
  else
    for (int r = 0; r < rn; ++r) fwd_tile<T, RT, 1>(p, rows, mrow + r, n + r, c0, c1, bias, y);
}

// one row tile (rt rows of ticket k) against W rows [nb, nb_end)
template <typename T, int RT>
static void fwd_rows(const Problem& p, int64_t k, const int64_t* rows, int64_t nb, int64_t nb_end, int64_t c0, int64_t c1, const float* bias, float* y) {
  for (int64_t n = nb; n < nb_end; n += kFwdRN<RT>) {
    const int rn = static_cast<int>(imin(kFwdRN<RT>, nb_end - n));
    const uint32_t* mrow[kFwdRN<RT>];
    for (int r = 0; r < rn; ++r) mrow[r] = p.bits + (k * p.N + n + r) * p.words;
    fwd_rn<T, RT>(rn, p, rows, mrow, n, c0, c1, bias, y);
  }
}

// Ask for the next W block and its active tickets' mask rows ahead of time (into L2): many
// short per-row streams are more than the hardware prefetchers follow.
template <typename T>
static void prefetch_block(const Problem& p, int64_t n0, int64_t n1) {
  const char* w = static_cast<const char*>(p.w);
  const int64_t row_bytes = p.C * static_cast<int64_t>(sizeof(T));
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(w + n * row_bytes + b, 0, 1);
  for (int64_t k = 0; k < p.K; ++k) {
    if (p.offsets[k] == p.offsets[k + 1]) continue;
    for (int64_t n = n0; n < n1; ++n) {
      const char* m = reinterpret_cast<const char*>(p.bits + (k * p.N + n) * p.words);
      for (int64_t b = 0; b < p.words * 4; b += 64) __builtin_prefetch(m + b, 0, 1);
    }
  }
}

// Weight-stationary: a block of W (kRowBlock rows x kColChunk columns) is read from memory once
// and reused from L1 by every active ticket's rows, each applying its own mask bits while
// loading; y (zeroed by the caller) accumulates the column blocks.
template <typename T>
static void forward_t(const Problem& p, const float* bias, float* y, int64_t n0, int64_t n1) {
  for (int64_t nb = n0; nb < n1; nb += rtl_cpu::kRowBlock) {
    const int64_t nb_end = imin(nb + rtl_cpu::kRowBlock, n1);
    prefetch_block<T>(p, nb_end, imin(nb_end + rtl_cpu::kRowBlock, n1));
    for (int64_t c0 = 0; c0 < p.C || c0 == 0; c0 += kColChunk<T>) {
      const int64_t c1 = imin(c0 + kColChunk<T>, p.C);
      for (int64_t k = 0; k < p.K; ++k) {
        const int64_t lo = p.offsets[k], hi = p.offsets[k + 1];
        for (int64_t q = lo; q < hi;) {
          const int rt = row_tile(hi - q);
          if constexpr (V::RT >= 4)
            if (rt == 4) fwd_rows<T, 4>(p, k, p.perm + q, nb, nb_end, c0, c1, bias, y);
          if constexpr (V::RT >= 2)
            if (rt == 2) fwd_rows<T, 2>(p, k, p.perm + q, nb, nb_end, c0, c1, bias, y);
          if (rt == 1) fwd_rows<T, 1>(p, k, p.perm + q, nb, nb_end, c0, c1, bias, y);
          q += rt;
        }
      }
      if (c1 >= p.C) break;
    }
  }
}

static void forward(const Problem& p, const float* bias, float* y, int64_t n0, int64_t n1) {
  if (p.dtype == rtl_cpu::kBFloat16)
    forward_t<bf16_t>(p, bias, y, n0, n1);
  else
    forward_t<float>(p, bias, y, n0, n1);
}

// ------------------------------------------------------------------------------- grad x

template <typename T, int RT, int CB>
static void dx_tile(const Problem& p, const int64_t* rows, int64_t k, int64_t c, float* dx) {
  const T* w = static_cast<const T*>(p.w);
  const T* dy = static_cast<const T*>(p.dy);
  const int64_t N = p.N, C = p.C;
  uint32_t lim[CB];
  RTL_UNROLL
  for (int b = 0; b < CB; ++b) lim[b] = limit_mask(c + b * L, C);
  const bool full = lim[CB - 1] == kFull;
  const T* dyr[RT];
  RTL_UNROLL
  for (int t = 0; t < RT; ++t) dyr[t] = dy + rows[t] * N;
  vec acc[RT][CB];
  RTL_UNROLL
  for (int t = 0; t < RT; ++t)
    RTL_UNROLL
    for (int b = 0; b < CB; ++b) acc[t][b] = V::zero();
  const uint32_t* mrow = p.bits + k * N * p.words;
  for (int64_t n = 0; n < N; ++n, mrow += p.words) {
    vec d[RT];
    RTL_UNROLL
    for (int t = 0; t < RT; ++t) d[t] = V::bcast(to_f32(dyr[t][n]));
    const T* wr = w + n * C + c;
    RTL_UNROLL
    for (int b = 0; b < CB; ++b) {
      const vec wv = full ? V::load_keep(wr + b * L, V::mask_at(mrow, c + b * L)) : V::load_masked(wr + b * L, chunk_mask(mrow, c + b * L) & lim[b]);
      RTL_UNROLL
      for (int t = 0; t < RT; ++t) acc[t][b] = V::fmadd(d[t], wv, acc[t][b]);
    }
  }
  RTL_UNROLL
  for (int t = 0; t < RT; ++t)
    RTL_UNROLL
    for (int b = 0; b < CB; ++b) V::store_masked(dx + rows[t] * C + c + b * L, acc[t][b], lim[b]);
}

template <typename T, int RT>
static void dx_cb(int cb, const Problem& p, const int64_t* rows, int64_t k, int64_t c, float* dx) {
  if (cb == V::CB)
    dx_tile<T, RT, V::CB>(p, rows, k, c, dx);
  else
    for (int b = 0; b < cb; ++b) dx_tile<T, RT, 1>(p, rows, k, c + b * L, dx);
}

template <typename T>
static void dx_rt(int rt, int cb, const Problem& p, const int64_t* rows, int64_t k, int64_t c, float* dx) {
  if constexpr (V::RT >= 4)
    if (rt == 4) dx_cb<T, 4>(cb, p, rows, k, c, dx);
  if constexpr (V::RT >= 2)
    if (rt == 2) dx_cb<T, 2>(cb, p, rows, k, c, dx);
  if (rt == 1) dx_cb<T, 1>(cb, p, rows, k, c, dx);
}

// A column strip of W (kColBlock wide, all N rows) stays in cache while every active ticket's
// rows accumulate their dx columns from it.
template <typename T>
static void grad_x_t(const Problem& p, float* dx, int64_t c0, int64_t c1) {
  for (int64_t cs = c0; cs < c1; cs += rtl_cpu::kColBlock) {
    const int64_t cs_end = imin(cs + rtl_cpu::kColBlock, c1);
    for (int64_t k = 0; k < p.K; ++k) {
      const int64_t lo = p.offsets[k], hi = p.offsets[k + 1];
      for (int64_t q = lo; q < hi;) {
        const int rt = row_tile(hi - q);
        for (int64_t c = cs; c < cs_end; c += V::CB * L) {
          const int cb = static_cast<int>(imin(V::CB, (cs_end - c + L - 1) / L));
          dx_rt<T>(rt, cb, p, p.perm + q, k, c, dx);
        }
        q += rt;
      }
    }
  }
}

static void grad_x(const Problem& p, float* dx, int64_t c0, int64_t c1) {
  if (p.dtype == rtl_cpu::kBFloat16)
    grad_x_t<bf16_t>(p, dx, c0, c1);
  else
    grad_x_t<float>(p, dx, c0, c1);
}

// ------------------------------------------------------------------------------- grad w

template <typename T, int RT, int RN>
static void dw_tile(const Problem& p, const int64_t* rows, const uint32_t* const* mrow, int64_t n, float* dw) {
  const T* x = static_cast<const T*>(p.x);
  const T* dy = static_cast<const T*>(p.dy);
  const int64_t C = p.C;
  const T* xr[RT];
  vec d[RT][RN];
  RTL_UNROLL
  for (int t = 0; t < RT; ++t) {
    xr[t] = x + rows[t] * C;
    RTL_UNROLL
    for (int r = 0; r < RN; ++r) d[t][r] = V::bcast(to_f32(dy[rows[t] * p.N + n + r]));
  }
  int64_t c = 0;
  for (; c + L <= C; c += L) {
    vec xv[RT];
    RTL_UNROLL
    for (int t = 0; t < RT; ++t) xv[t] = V::load(xr[t] + c);
    RTL_UNROLL
    for (int r = 0; r < RN; ++r) {
      vec s = V::mul(d[0][r], xv[0]);
      RTL_UNROLL
      for (int t = 1; t < RT; ++t) s = V::fmadd(d[t][r], xv[t], s);
      float* o = dw + (n + r) * C + c;
      V::store(o, V::mask_add(V::load(o), V::mask_at(mrow[r], c), s));
    }
  }
  if (c < C) {
    const uint32_t lim = limit_mask(c, C);
    vec xv[RT];
    RTL_UNROLL
    for (int t = 0; t < RT; ++t) xv[t] = V::load_masked(xr[t] + c, lim);
    RTL_UNROLL
    for (int r = 0; r < RN; ++r) {
      vec s = V::mul(d[0][r], xv[0]);
      RTL_UNROLL
      for (int t = 1; t < RT; ++t) s = V::fmadd(d[t][r], xv[t], s);
      float* o = dw + (n + r) * C + c;
      V::store_masked(o, V::mask_add(V::load_masked(o, lim), V::to_mask(chunk_mask(mrow[r], c) & lim), s), lim);
    }
  }
}

template <typename T, int RT>
static void dw_rn(int rn, const Problem& p, const int64_t* rows, const uint32_t* const* mrow, int64_t n, float* dw) {
  if (rn == V::RN)
    dw_tile<T, RT, V::RN>(p, rows, mrow, n, dw);
  else
    for (int r = 0; r < rn; ++r) dw_tile<T, RT, 1>(p, rows, mrow + r, n + r, dw);
}

template <typename T>
static void dw_rt(int rt, int rn, const Problem& p, const int64_t* rows, const uint32_t* const* mrow, int64_t n, float* dw) {
  if constexpr (V::RT >= 4)
    if (rt == 4) dw_rn<T, 4>(rn, p, rows, mrow, n, dw);
  if constexpr (V::RT >= 2)
    if (rt == 2) dw_rn<T, 2>(rn, p, rows, mrow, n, dw);
  if (rt == 1) dw_rn<T, 1>(rn, p, rows, mrow, n, dw);
}

// dw rows are owned by one thread: they are zeroed, then every active ticket adds its masked
// outer-product contribution while the rows are hot in cache.
template <typename T>
static void grad_w_t(const Problem& p, float* dw, int64_t n0, int64_t n1) {
  for (int64_t i = n0 * p.C; i < n1 * p.C; ++i) dw[i] = 0.0f;
  for (int64_t nb = n0; nb < n1; nb += rtl_cpu::kRowBlock) {
    const int64_t nb_end = imin(nb + rtl_cpu::kRowBlock, n1);
    for (int64_t k = 0; k < p.K; ++k) {
      const int64_t lo = p.offsets[k], hi = p.offsets[k + 1];
      for (int64_t n = nb; n < nb_end; n += V::RN) {
        const int rn = static_cast<int>(imin(V::RN, nb_end - n));
        const uint32_t* mrow[V::RN];
        for (int r = 0; r < rn; ++r) mrow[r] = p.bits + (k * p.N + n + r) * p.words;
        for (int64_t q = lo; q < hi;) {
          const int rt = row_tile(hi - q);
          dw_rt<T>(rt, rn, p, p.perm + q, mrow, n, dw);
          q += rt;
        }
      }
    }
  }
}

static void grad_w(const Problem& p, float* dw, int64_t n0, int64_t n1) {
  if (p.dtype == rtl_cpu::kBFloat16)
    grad_w_t<bf16_t>(p, dw, n0, n1);
  else
    grad_w_t<float>(p, dw, n0, n1);
}

// ------------------------------------------------------------------------------- helpers for the GEMM path

template <typename T>
static void materialize_t(const Problem& p, int64_t k, T* out, int64_t n0, int64_t n1) {
  const T* w = static_cast<const T*>(p.w);
  const int64_t C = p.C;
  for (int64_t n = n0; n < n1; ++n) {
    const uint32_t* mrow = p.bits + (k * p.N + n) * p.words;
    const T* wr = w + n * C;
    T* o = out + n * C;
    int64_t c = 0;
    for (; c + L <= C; c += L) V::copy_keep(o + c, wr + c, V::mask_at(mrow, c));
    for (; c < C; ++c) o[c] = ((mrow[c >> 5] >> (c & 31)) & 1u) ? wr[c] : T(0);
  }
}

static void materialize(const Problem& p, int64_t k, void* out, int64_t n0, int64_t n1) {
  if (p.dtype == rtl_cpu::kBFloat16)
    materialize_t<bf16_t>(p, k, static_cast<bf16_t*>(out), n0, n1);
  else
    materialize_t<float>(p, k, static_cast<float*>(out), n0, n1);
}

static void masked_add(const Problem& p, int64_t k, const float* g, float* dw, int64_t n0, int64_t n1) {
  const int64_t C = p.C;
  for (int64_t n = n0; n < n1; ++n) {
    const uint32_t* mrow = p.bits + (k * p.N + n) * p.words;
    const float* gr = g + n * C;
    float* o = dw + n * C;
    int64_t c = 0;
    for (; c + L <= C; c += L) V::store(o + c, V::mask_add(V::load(o + c), V::mask_at(mrow, c), V::load(gr + c)));
    for (; c < C; ++c)
      if ((mrow[c >> 5] >> (c & 31)) & 1u) o[c] += gr[c];
  }
}

}  // namespace RTL_ISA_NS
