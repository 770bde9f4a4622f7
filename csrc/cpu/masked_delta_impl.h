// The masked-delta kernels, written once against the vector traits `V` of routed_cpu_impl.h and
// compiled per ISA: each routed_<isa>.cpp includes this after routed_cpu_impl.h (same namespace
// and target options). The forward takes float32 or bf16 (p.dtype) through the routed forward's
// tile_forward / forward_blocks; the rest is float32. A delta value outside a ticket's mask is loaded under that mask (AVX-512:
// not read at all; AVX2/generic: cleared bit-wise), so NaN or Inf stored there never reaches y.

namespace RTL_ISA_NS {

using rtl_cpu::DeltaProblem;

// ticket k's weight rows, base + s * (delta where the mask bits are set), built in float32 as they
// are loaded (T: float or bf16_t, widened by V::load*)
template <typename T>
struct DeltaRows {
  const T* const* br;
  const T* const* dr;
  const uint32_t* const* mrow;
  vec sv;
  vec full(int r, int64_t c) const { return V::fmadd(sv, V::load_keep(dr[r] + c, V::mask_at(mrow[r], c)), V::load(br[r] + c)); }
  vec part(int r, int64_t c, uint32_t lim) const {
    return V::fmadd(sv, V::load_masked(dr[r] + c, chunk_mask(mrow[r], c) & lim), V::load_masked(br[r] + c, lim));
  }
};

// rows `rows` (RT of them, one ticket with scale s) x weight rows n..n+RN-1 over columns [c0, c1)
template <typename T, int RT, int RN>
static void delta_tile(const DeltaProblem& p, const int64_t* rows, const uint32_t* const* mrow, float s, const float* bias, int64_t n, int64_t c0, int64_t c1,
                       float* y) {
  const T* x = static_cast<const T*>(p.x);
  const T* base = static_cast<const T*>(p.base);
  const T* delta = static_cast<const T*>(p.delta);
  const T* xr[RT];
  const T* br[RN];
  const T* dr[RN];
  RTL_UNROLL
  for (int t = 0; t < RT; ++t) xr[t] = x + rows[t] * p.C;
  RTL_UNROLL
  for (int r = 0; r < RN; ++r) {
    br[r] = base + (n + r) * p.C;
    dr[r] = delta + (n + r) * p.C;
  }
  // the ticket's bias joins the first column block
  tile_forward<T, RT, RN>(xr, p.C, c0, c1, DeltaRows<T>{br, dr, mrow, V::bcast(s)}, rows, p.N, n, c0 == 0 ? bias : nullptr, y);
}

template <typename T, int RT>
static void delta_rows(const DeltaProblem& p, int64_t k, const int64_t* rows, int64_t nb, int64_t nb_end, int64_t c0, int64_t c1, float* y) {
  const float s = p.scales[k];
  const float* bias = p.bias != nullptr ? p.bias + k * p.bias_stride : nullptr;
  for (int64_t n = nb; n < nb_end; n += 2) {
    const uint32_t* mrow[2] = {p.bits + (k * p.N + n) * p.words, nullptr};
    if (n + 1 < nb_end) {
      mrow[1] = mrow[0] + p.words;
      delta_tile<T, RT, 2>(p, rows, mrow, s, bias, n, c0, c1, y);
    } else {
      delta_tile<T, RT, 1>(p, rows, mrow, s, bias, n, c0, c1, y);
    }
  }
}

// delta_rows as forward_blocks' row-tile callable
template <typename T>
struct DeltaForward {
  const DeltaProblem& p;
  float* y;
  template <int RT>
  void operator()(RowTile<RT>, int64_t k, const int64_t* rows, int64_t nb, int64_t nb_end, int64_t c0, int64_t c1) const {
    delta_rows<T, RT>(p, k, rows, nb, nb_end, c0, c1, y);
  }
};

// the routed forward's weight-stationary schedule (forward_blocks), without its prefetch; float32
// or bf16 inputs, float32 accumulation and y
static void delta_forward(const DeltaProblem& p, float* y, int64_t n0, int64_t n1) {
  if (p.dtype == rtl_cpu::kBFloat16)
    forward_blocks<bf16_t>(p, n0, n1, NoPrefetch{}, DeltaForward<bf16_t>{p, y});
  else
    forward_blocks<float>(p, n0, n1, NoPrefetch{}, DeltaForward<float>{p, y});
}

// the kernels below are float32 only (the binding checks): the bf16 backward runs in the reference

static void delta_materialize(const DeltaProblem& p, int64_t k, float* out, int64_t n0, int64_t n1) {
  const vec sv = V::bcast(p.scales[k]);
  const float s = p.scales[k];
  for (int64_t n = n0; n < n1; ++n) {
    const uint32_t* mrow = p.bits + (k * p.N + n) * p.words;
    const float* br = static_cast<const float*>(p.base) + n * p.C;
    const float* dr = static_cast<const float*>(p.delta) + n * p.C;
    float* o = out + n * p.C;
    int64_t c = 0;
    for (; c + L <= p.C; c += L) V::store(o + c, V::fmadd(sv, V::load_keep(dr + c, V::mask_at(mrow, c)), V::load(br + c)));
    for (; c < p.C; ++c) o[c] = bit_at(mrow, c) ? br[c] + s * dr[c] : br[c];
  }
}

static void delta_masked_axpy(const DeltaProblem& p, int64_t k, float s, const float* g, float* out, int64_t n0, int64_t n1) {
  const vec sv = V::bcast(s);
  for (int64_t n = n0; n < n1; ++n) {
    const uint32_t* mrow = p.bits + (k * p.N + n) * p.words;
    const float* gr = g + n * p.C;
    float* o = out + n * p.C;
    int64_t c = 0;
    for (; c + L <= p.C; c += L) V::store(o + c, V::mask_add(V::load(o + c), V::mask_at(mrow, c), V::fmadd(sv, V::load(gr + c), V::zero())));
    for (; c < p.C; ++c)
      if (bit_at(mrow, c)) o[c] += s * gr[c];
  }
}

static void delta_masked_dot(const DeltaProblem& p, int64_t k, const float* g, double* rowsum, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint32_t* mrow = p.bits + (k * p.N + n) * p.words;
    const float* dr = static_cast<const float*>(p.delta) + n * p.C;
    const float* gr = g + n * p.C;
    vec acc = V::zero();
    int64_t c = 0;
    for (; c + L <= p.C; c += L) acc = V::fmadd(V::load_keep(dr + c, V::mask_at(mrow, c)), V::load(gr + c), acc);
    double sum = V::reduce(acc);
    for (; c < p.C; ++c)
      if (bit_at(mrow, c)) sum += static_cast<double>(dr[c]) * gr[c];
    rowsum[n] = sum;
  }
}

}  // namespace RTL_ISA_NS
