// The routed masked linear kernels, written once against a small vector-traits class `V` and
// compiled once per ISA: each routed_<isa>.cpp defines RTL_ISA_NS and `V` (with its target
// options active) and then includes this file. No standard headers are included here, so
// nothing inline from a shared header is compiled with a wider ISA than the CPU may have.
//
// Traits `V` provide: L (lanes), RT (forward rows per register tile), GR / GCB (grad x: rows x
// column vectors), WRN / WCB (grad w: weight rows x column vectors), vec, mask (lane mask type), mask_at (mask bits of the L columns at c of a mask row),
// to_mask (from uint32 bits), zero, bcast, fmadd, mask_fmadd (acc + a * (m ? b : 0): b is selected, so
// a NaN in b outside m is never read, while a NaN in a propagates as in the dense product with the
// masked weight, the same on every path: direct, gemm, grouped), load (L readable lanes), load_keep (L readable lanes,
// zero outside a `mask`), load_masked (only lanes in `m` are read), mask_add (acc + (m ? s : 0)),
// reduce (horizontal sum), store, store_masked, store_stream (aligned, bypassing the cache) and
// store_fence (orders streaming stores), copy_keep (raw copy of L lanes, zero outside
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
// the mask bit of column c of one mask row
static inline bool bit_at(const uint32_t* mrow, int64_t c) { return (mrow[c >> 5] >> (c & 31)) & 1u; }
// lanes of a chunk at column c that lie inside a row of C columns
static inline uint32_t limit_mask(int64_t c, int64_t C) { return C - c >= L ? kFull : ((1u << (C - c)) - 1u); }

// ------------------------------------------------------------------------------- forward

// The register-tile loop of every forward kernel here: acc[t][r] = x row t . weight row r over columns [c0, c1),
// where `w.full(r, c)` builds L lanes of weight row r at column c (a multiple of L) and `w.part(r, c, lim)` only
// the lanes in `lim`, the rest zero (only the last block of a row, c1 = C, is partial); then
// y[rows[t], n + r] += acc[t][r] (+ bias[n + r] unless `bias` is null). The weight is built in registers as it is
// loaded (a masked weight, or base + masked delta), so each caller only says how.
template <typename T, int RT, int RN, typename W>
static inline void tile_forward(const T* const* xr, int64_t C, int64_t c0, int64_t c1, const W& w, const int64_t* rows, int64_t N, int64_t n,
                                const float* bias, float* y) {
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
      const vec wv = w.full(r, c);
      RTL_UNROLL
      for (int t = 0; t < RT; ++t) acc[t][r] = V::fmadd(xv[t], wv, acc[t][r]);
    }
  }
  if (c < c1) {
    const uint32_t lim = limit_mask(c, C);
    vec xv[RT];
    RTL_UNROLL
    for (int t = 0; t < RT; ++t) xv[t] = V::load_masked(xr[t] + c, lim);
    RTL_UNROLL
    for (int r = 0; r < RN; ++r) {
      const vec wv = w.part(r, c, lim);
      RTL_UNROLL
      for (int t = 0; t < RT; ++t) acc[t][r] = V::fmadd(xv[t], wv, acc[t][r]);
    }
  }
  RTL_UNROLL
  for (int t = 0; t < RT; ++t)
    RTL_UNROLL
    for (int r = 0; r < RN; ++r) y[rows[t] * N + n + r] += V::reduce(acc[t][r]) + (bias != nullptr ? bias[n + r] : 0.0f);
}

// the routed weight: W row r's lanes kept where its ticket's mask bits are set
template <typename T>
struct MaskedRows {
  const T* const* wr;
  const uint32_t* const* mrow;
  vec full(int r, int64_t c) const { return V::load_keep(wr[r] + c, V::mask_at(mrow[r], c)); }
  vec part(int r, int64_t c, uint32_t lim) const { return V::load_masked(wr[r] + c, chunk_mask(mrow[r], c) & lim); }
};

// columns [c0, c1) of rows `rows` x W rows n..n+RN-1, added to y (bias added with the first block)
template <typename T, int RT, int RN>
static void fwd_tile(const Problem& p, const int64_t* rows, const uint32_t* const* mrow, int64_t n, int64_t c0, int64_t c1, const float* bias, float* y) {
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.w);
  const T* xr[RT];
  const T* wr[RN];
  RTL_UNROLL
  for (int t = 0; t < RT; ++t) xr[t] = x + rows[t] * p.C;
  RTL_UNROLL
  for (int r = 0; r < RN; ++r) wr[r] = w + (n + r) * p.C;
  tile_forward<T, RT, RN>(xr, p.C, c0, c1, MaskedRows<T>{wr, mrow}, rows, p.N, n, c0 == 0 ? bias : nullptr, y);
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

// a row-tile height as a type: what the forward driver passes to its row-tile callable
template <int RT>
struct RowTile {};

// The weight-stationary forward driver (routed and masked-delta kernels): weight rows [n0, n1) in
// blocks of kRowBlock rows x kColChunk<T> columns; within a block each ticket's rows (p.perm,
// p.offsets) go by in register tiles of 4, 2 or 1 rows, each a call
// tile(RowTile<rt>{}, k, rows, nb, nb_end, c0, c1). `ahead(nb_end, next_end)` runs before each
// block is computed (the routed forward prefetches the next block there). Kept out of line, one
// function per kernel and element type as the hand-written drivers were: GCC 12 otherwise inlines
// both element types' drivers into `forward`, and the AVX2 float32 forward ran ~1.9x slower so.
template <typename T, typename P, typename Ahead, typename Tile>
__attribute__((noinline)) static void forward_blocks(const P& p, int64_t n0, int64_t n1, const Ahead& ahead, const Tile& tile) {
  for (int64_t nb = n0; nb < n1; nb += rtl_cpu::kRowBlock) {
    const int64_t nb_end = imin(nb + rtl_cpu::kRowBlock, n1);
    ahead(nb_end, imin(nb_end + rtl_cpu::kRowBlock, n1));
    for (int64_t c0 = 0; c0 < p.C || c0 == 0; c0 += kColChunk<T>) {
      const int64_t c1 = imin(c0 + kColChunk<T>, p.C);
      for (int64_t k = 0; k < p.K; ++k) {
        const int64_t hi = p.offsets[k + 1];
        for (int64_t q = p.offsets[k]; q < hi;) {
          const int rt = row_tile(hi - q);
          if constexpr (V::RT >= 4)
            if (rt == 4) tile(RowTile<4>{}, k, p.perm + q, nb, nb_end, c0, c1);
          if constexpr (V::RT >= 2)
            if (rt == 2) tile(RowTile<2>{}, k, p.perm + q, nb, nb_end, c0, c1);
          if (rt == 1) tile(RowTile<1>{}, k, p.perm + q, nb, nb_end, c0, c1);
          q += rt;
        }
      }
      if (c1 >= p.C) break;
    }
  }
}

// forward_blocks' `ahead` for a kernel that prefetches nothing
struct NoPrefetch {
  void operator()(int64_t, int64_t) const {}
};

// the routed forward's row tiles and prefetch for forward_blocks (named functors, not lambdas:
// whether a target pragma reaches a lambda's body differs between compilers)
template <typename T>
struct MaskedForward {
  const Problem& p;
  const float* bias;
  float* y;
  template <int RT>
  void operator()(RowTile<RT>, int64_t k, const int64_t* rows, int64_t nb, int64_t nb_end, int64_t c0, int64_t c1) const {
    fwd_rows<T, RT>(p, k, rows, nb, nb_end, c0, c1, bias, y);
  }
};

template <typename T>
struct PrefetchBlock {
  const Problem& p;
  void operator()(int64_t n0, int64_t n1) const { prefetch_block<T>(p, n0, n1); }
};

// Weight-stationary: a block of W (kRowBlock rows x kColChunk columns) is read from memory once
// and reused from L1 by every active ticket's rows, each applying its own mask bits while
// loading; y (zeroed by the caller) accumulates the column blocks.
static void forward(const Problem& p, const float* bias, float* y, int64_t n0, int64_t n1) {
  if (p.dtype == rtl_cpu::kBFloat16)
    forward_blocks<bf16_t>(p, n0, n1, PrefetchBlock<bf16_t>{p}, MaskedForward<bf16_t>{p, bias, y});
  else
    forward_blocks<float>(p, n0, n1, PrefetchBlock<float>{p}, MaskedForward<float>{p, bias, y});
}

// ------------------------------------------------------------------------------- grad x

// dx for a group of up to V::GR consecutive rows of the sorted order (tickets may change inside
// the group) and CB column vectors at c: each weight vector is loaded once per group and every row
// adds it under its own ticket's mask bits (a masked multiply-add), so W is read once per group,
// not once per ticket. Rows past `nrows` repeat row 0 and are not stored.
template <typename T, int CB>
static void dx_group(const Problem& p, const int64_t* rows, const int64_t* tickets, int nrows, int64_t c, int64_t n0, int64_t n1, float* dx) {
  constexpr int G = V::GR;
  const T* w = static_cast<const T*>(p.w);
  const T* dy = static_cast<const T*>(p.dy);
  const int64_t N = p.N, C = p.C;
  uint32_t lim[CB];
  RTL_UNROLL
  for (int b = 0; b < CB; ++b) lim[b] = limit_mask(c + b * L, C);
  const bool full = lim[CB - 1] == kFull;
  const T* dyr[G];
  const uint32_t* mrow[G];
  RTL_UNROLL
  for (int t = 0; t < G; ++t) {
    const int u = t < nrows ? t : 0;
    dyr[t] = dy + rows[u] * N;
    mrow[t] = p.bits + tickets[u] * N * p.words;
  }
  vec acc[G][CB];
  RTL_UNROLL
  for (int t = 0; t < G; ++t)
    RTL_UNROLL
    for (int b = 0; b < CB; ++b) acc[t][b] = V::zero();
  const T* wr = w + n0 * C + c;
  for (int64_t n = n0; n < n1; ++n, wr += C) {
    vec wv[CB];
    RTL_UNROLL
    for (int b = 0; b < CB; ++b) wv[b] = full ? V::load(wr + b * L) : V::load_masked(wr + b * L, lim[b]);
    RTL_UNROLL
    for (int t = 0; t < G; ++t) {
      const vec d = V::bcast(to_f32(dyr[t][n]));
      const uint32_t* m = mrow[t] + n * p.words;
      RTL_UNROLL
      for (int b = 0; b < CB; ++b) acc[t][b] = V::mask_fmadd(acc[t][b], V::mask_at(m, c + b * L), d, wv[b]);
    }
  }
  RTL_UNROLL
  for (int t = 0; t < G; ++t)
    if (t < nrows)
      RTL_UNROLL
      for (int b = 0; b < CB; ++b) {
        float* o = dx + rows[t] * C + c + b * L;
        V::store_masked(o, V::mask_add(V::load_masked(o, lim[b]), V::to_mask(lim[b]), acc[t][b]), lim[b]);
      }
}

// W is walked in blocks of kDxRows rows (read from memory once, then from cache by every column
// strip of V::GCB vectors); within a strip the sorted rows go by in groups of V::GR and add their
// partial sums to dx (zeroed by the caller, small enough to stay in cache).
constexpr int64_t kDxRows = 64;

template <typename T>
static void grad_x_t(const Problem& p, float* dx, int64_t c0, int64_t c1) {
  constexpr int G = V::GR;
  for (int64_t nb = 0; nb < p.N; nb += kDxRows) {
    const int64_t nb_end = imin(nb + kDxRows, p.N);
    for (int64_t cs = c0; cs < c1; cs += V::GCB * L) {
      const int cb = static_cast<int>(imin(V::GCB, (c1 - cs + L - 1) / L));
      int64_t k = 0;
      for (int64_t q = 0; q < p.M; q += G) {
        const int nrows = static_cast<int>(imin(G, p.M - q));
        int64_t rows[G], tickets[G];
        for (int t = 0; t < nrows; ++t) {
          while (p.offsets[k + 1] <= q + t) ++k;
          rows[t] = p.perm[q + t];
          tickets[t] = k;
        }
        if (cb == V::GCB)
          dx_group<T, V::GCB>(p, rows, tickets, nrows, cs, nb, nb_end, dx);
        else
          for (int b = 0; b < cb; ++b) dx_group<T, 1>(p, rows, tickets, nrows, cs + b * L, nb, nb_end, dx);
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

// dW for RN weight rows x CB column vectors at (n, c): each active ticket's sum over its rows is
// formed in registers and added under its mask, so every dW element is written once.
template <typename T, int RN, int CB>
static void dw_tile(const Problem& p, int64_t n, int64_t c, float* dw) {
  const T* x = static_cast<const T*>(p.x);
  const T* dy = static_cast<const T*>(p.dy);
  const int64_t C = p.C;
  uint32_t lim[CB];
  RTL_UNROLL
  for (int b = 0; b < CB; ++b) lim[b] = limit_mask(c + b * L, C);
  const bool full = lim[CB - 1] == kFull;
  vec acc[RN][CB];
  RTL_UNROLL
  for (int r = 0; r < RN; ++r)
    RTL_UNROLL
    for (int b = 0; b < CB; ++b) acc[r][b] = V::zero();
  for (int64_t k = 0; k < p.K; ++k) {
    const int64_t lo = p.offsets[k], hi = p.offsets[k + 1];
    if (lo == hi) continue;
    vec s[RN][CB];
    RTL_UNROLL
    for (int r = 0; r < RN; ++r)
      RTL_UNROLL
      for (int b = 0; b < CB; ++b) s[r][b] = V::zero();
    for (int64_t q = lo; q < hi; ++q) {
      const int64_t row = p.perm[q];
      const T* xr = x + row * C + c;
      vec xv[CB];
      RTL_UNROLL
      for (int b = 0; b < CB; ++b) xv[b] = full ? V::load(xr + b * L) : V::load_masked(xr + b * L, lim[b]);
      RTL_UNROLL
      for (int r = 0; r < RN; ++r) {
        const vec d = V::bcast(to_f32(dy[row * p.N + n + r]));
        RTL_UNROLL
        for (int b = 0; b < CB; ++b) s[r][b] = V::fmadd(d, xv[b], s[r][b]);
      }
    }
    RTL_UNROLL
    for (int r = 0; r < RN; ++r) {
      const uint32_t* m = p.bits + (k * p.N + n + r) * p.words;
      RTL_UNROLL
      for (int b = 0; b < CB; ++b)
        acc[r][b] = V::mask_add(acc[r][b], full ? V::mask_at(m, c + b * L) : V::to_mask(chunk_mask(m, c + b * L) & lim[b]), s[r][b]);
    }
  }
  RTL_UNROLL
  for (int r = 0; r < RN; ++r)
    RTL_UNROLL
    for (int b = 0; b < CB; ++b) {
      float* o = dw + (n + r) * C + c + b * L;
      // dW is written once and not read back here: full aligned vectors bypass the cache
      if (full && (reinterpret_cast<uintptr_t>(o) & (sizeof(vec) - 1)) == 0)
        V::store_stream(o, acc[r][b]);
      else
        V::store_masked(o, acc[r][b], lim[b]);
    }
}

// dW in bands of kRowBlock rows written front to back (whole rows, so stores stream); within a
// band the column blocks go by with the rows' x slices in cache.
template <typename T>
static void grad_w_t(const Problem& p, float* dw, int64_t n0, int64_t n1) {
  for (int64_t nb = n0; nb < n1; nb += rtl_cpu::kRowBlock) {
    const int64_t nb_end = imin(nb + rtl_cpu::kRowBlock, n1);
    for (int64_t cs = 0; cs < p.C; cs += V::WCB * L) {
      const int cb = static_cast<int>(imin(V::WCB, (p.C - cs + L - 1) / L));
      for (int64_t n = nb; n < nb_end; n += V::WRN) {
        const int rn = static_cast<int>(imin(V::WRN, nb_end - n));
        if (rn == V::WRN && cb == V::WCB)
          dw_tile<T, V::WRN, V::WCB>(p, n, cs, dw);
        else
          for (int r = 0; r < rn; ++r)
            for (int b = 0; b < cb; ++b) dw_tile<T, 1, 1>(p, n + r, cs + b * L, dw);
      }
    }
  }
}

static void grad_w(const Problem& p, float* dw, int64_t n0, int64_t n1) {
  if (p.dtype == rtl_cpu::kBFloat16)
    grad_w_t<bf16_t>(p, dw, n0, n1);
  else
    grad_w_t<float>(p, dw, n0, n1);
  V::store_fence();  // streaming stores are visible to other threads after this
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
    for (; c < C; ++c) o[c] = bit_at(mrow, c) ? wr[c] : T(0);
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
      if (bit_at(mrow, c)) o[c] += gr[c];
  }
}

}  // namespace RTL_ISA_NS
