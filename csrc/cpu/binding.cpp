// Torch binding of the CPU routed-linear kernels: argument checks (before any pointer is
// read), ISA selection, threading over output blocks with at::parallel_for, and the GEMM path
// for large batches (per-ticket masked weight built by the kernel, product by torch.mm).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <atomic>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "binding_checks.h"
#include "masked_delta_cpu.h"
#include "routed_conv.h"
#include "routed_cpu.h"
#include "seeded_cpu.h"

namespace {

enum Isa : int64_t { kBest = -1, kGeneric = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };

bool isa_supported(int64_t isa) {
  if (isa == kGeneric) return true;
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
  if (isa == kAvx2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == kAvx512) return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (isa == kAvx512Bf16) return isa_supported(kAvx512) && __builtin_cpu_supports("avx512bf16");
#endif
  return false;
}

// detected once per process: the CPU does not change under a running program
int64_t best_isa() {
  static const int64_t best = [] {
    for (int64_t isa : {kAvx512Bf16, kAvx512, kAvx2})
      if (isa_supported(isa)) return isa;
    return int64_t{kGeneric};
  }();
  return best;
}

// an ISA id this CPU runs (-1 resolved to the best one); anything else is an error naming `isa`
int64_t checked_isa(int64_t isa) {
  if (isa == kBest) return best_isa();
  TORCH_CHECK_VALUE(isa >= kGeneric && isa <= kAvx512Bf16, "isa: expected -1 (best), 0 (generic), 1 (avx2), 2 (avx512) or 3 (avx512_bf16), got ", isa);
  TORCH_CHECK_VALUE(isa_supported(isa), "isa: ", isa, " is not supported by this CPU (best available: ", best_isa(), ")");
  return isa;
}

const rtl_cpu::Ops& ops_for(int64_t isa);

// the default kernels (isa = -1), chosen once
const rtl_cpu::Ops& best_ops() {
  static const rtl_cpu::Ops& ops = ops_for(best_isa());
  return ops;
}

const rtl_cpu::Ops& ops_for(int64_t isa) {
  if (isa == kBest) return best_ops();
  isa = checked_isa(isa);
#if defined(__x86_64__) || defined(_M_X64)
  if (isa == kAvx512Bf16) return rtl_cpu::kOpsAvx512Bf16;
  if (isa == kAvx512) return rtl_cpu::kOpsAvx512;
  if (isa == kAvx2) return rtl_cpu::kOpsAvx2;
#endif
  return rtl_cpu::kOpsGeneric;
}

const rtl_cpu::DeltaOps& delta_ops_for(int64_t isa) {
  isa = checked_isa(isa);
#if defined(__x86_64__) || defined(_M_X64)
  if (isa == kAvx512 || isa == kAvx512Bf16) return rtl_cpu::kDeltaOpsAvx512;
  if (isa == kAvx2) return rtl_cpu::kDeltaOpsAvx2;
#endif
  return rtl_cpu::kDeltaOpsGeneric;
}

using rtl_bind::check_common;
using rtl_bind::check_float;
using rtl_bind::check_shape;
using rtl_bind::parallel_blocks;
using rtl_bind::shape_of;

// packed masks [K >= 1, N, words] (int32): returns K and the mask words
std::pair<int64_t, const uint32_t*> check_bits(const at::Tensor& bits, int64_t N, int64_t words) {
  check_common(bits, "bits", 3);
  TORCH_CHECK_TYPE(bits.scalar_type() == at::kInt, "bits: expected dtype int32, got ", bits.scalar_type());
  const int64_t K = bits.size(0);
  TORCH_CHECK_VALUE(K >= 1, "bits: expected at least one ticket, got shape ", shape_of(bits));
  check_shape(bits, "bits", {K, N, words});
  return {K, reinterpret_cast<const uint32_t*>(bits.data_ptr<int32_t>())};
}

// weight, bits and dtype: everything a masked-weight problem needs
rtl_cpu::Problem weight_problem(const at::Tensor& weight, const at::Tensor& bits) {
  check_common(weight, "weight", 2);
  const auto dt = weight.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kBFloat16, "weight: expected dtype float32 or bfloat16, got ", dt);
  rtl_cpu::Problem p{};
  p.dtype = dt == at::kBFloat16 ? rtl_cpu::kBFloat16 : rtl_cpu::kFloat32;
  p.N = weight.size(0);
  p.C = weight.size(1);
  p.words = (p.C + 31) / 32;
  std::tie(p.K, p.bits) = check_bits(bits, p.N, p.words);
  p.w = weight.data_ptr();
  return p;
}

// routing plan: offsets must partition [0, M) and perm must index rows of x
void add_plan(rtl_cpu::Problem& p, int64_t M, const at::Tensor& perm, const at::Tensor& offsets) {
  const rtl_bind::Plan plan = rtl_bind::check_plan(p.K, M, perm, offsets);
  p.M = M;
  p.perm = plan.perm;
  p.offsets = plan.offsets;
}

rtl_cpu::Problem linear_problem(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bits, const at::Tensor& perm, const at::Tensor& offsets) {
  rtl_cpu::Problem p = weight_problem(weight, bits);
  check_float(x, "x", 2, weight.scalar_type());
  TORCH_CHECK_VALUE(x.size(1) == p.C, "x: expected shape [M, ", p.C, "] (in_features of weight), got ", shape_of(x));
  add_plan(p, x.size(0), perm, offsets);
  p.x = x.data_ptr();
  return p;
}

void check_dy(rtl_cpu::Problem& p, const at::Tensor& dy, at::ScalarType dt) {
  check_float(dy, "dy", 2, dt);
  check_shape(dy, "dy", {p.M, p.N});
  p.dy = dy.data_ptr();
}

// whether there is a bias; one must be [N] (N outputs) of dtype dt
bool check_bias(const c10::optional<at::Tensor>& bias, int64_t N, at::ScalarType dt) {
  if (!bias.has_value() || !bias->defined()) return false;
  check_float(*bias, "bias", 1, dt);
  check_shape(*bias, "bias", {N});
  return true;
}

// the checked bias as float32 (undefined when there is none)
at::Tensor bias_f32(const c10::optional<at::Tensor>& bias, int64_t N, at::ScalarType dt) {
  return check_bias(bias, N, dt) ? bias->to(at::kFloat).contiguous() : at::Tensor();
}

// fn(i0, i1) over [0, n) in chunks of `grain` that the team's threads claim one at a time. With
// at::parallel_for's fixed halves, a thread that loses its core on a busy machine holds the whole
// call up by its share; here the running threads take over the chunks it has not started.
template <typename F>
void parallel_claim(int64_t n, int64_t grain, const F& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t chunks = (n + grain - 1) / grain;
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), chunks);
  if (threads <= 1 || at::in_parallel_region()) {
    fn(0, n);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1, std::memory_order_relaxed); c < chunks; c = next.fetch_add(1, std::memory_order_relaxed))
      fn(c * grain, std::min(n, (c + 1) * grain));
  });
}

void materialize_into(const rtl_cpu::Ops& ops, const rtl_cpu::Problem& p, int64_t k, at::Tensor& out) {
  void* dst = out.data_ptr();
  parallel_blocks(p.N, 1, p.C, [&](int64_t n0, int64_t n1) { ops.materialize(p, k, dst, n0, n1); });
}

// ------------------------------------------------------------------------------- direct kernels

at::Tensor forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bits, const at::Tensor& perm, const at::Tensor& offsets,
                   const c10::optional<at::Tensor>& bias, int64_t isa) {
  const rtl_cpu::Ops& ops = ops_for(isa);
  rtl_cpu::Problem p = linear_problem(x, weight, bits, perm, offsets);
  const at::Tensor b = bias_f32(bias, p.N, x.scalar_type());
  at::Tensor y = at::zeros({p.M, p.N}, x.options().dtype(at::kFloat));
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  if (p.M > 0) parallel_blocks(p.N, rtl_cpu::kRowBlock, p.M * p.C, [&](int64_t n0, int64_t n1) { ops.forward(p, bp, yp, n0, n1); });
  return y.to(x.scalar_type());
}

at::Tensor grad_input(const at::Tensor& dy, const at::Tensor& weight, const at::Tensor& bits, const at::Tensor& perm, const at::Tensor& offsets, int64_t isa) {
  const rtl_cpu::Ops& ops = ops_for(isa);
  rtl_cpu::Problem p = weight_problem(weight, bits);
  check_common(dy, "dy", 2);
  add_plan(p, dy.size(0), perm, offsets);
  check_dy(p, dy, weight.scalar_type());
  at::Tensor dx = at::zeros({p.M, p.C}, dy.options().dtype(at::kFloat));
  float* dxp = dx.data_ptr<float>();
  if (p.M > 0) parallel_blocks(p.C, rtl_cpu::kColBlock, p.M * p.N, [&](int64_t c0, int64_t c1) { ops.grad_x(p, dxp, c0, c1); });
  return dx.to(dy.scalar_type());
}

at::Tensor grad_weight(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bits, const at::Tensor& perm,
                       const at::Tensor& offsets, int64_t isa) {
  const rtl_cpu::Ops& ops = ops_for(isa);
  rtl_cpu::Problem p = linear_problem(x, weight, bits, perm, offsets);
  check_dy(p, dy, x.scalar_type());
  at::Tensor dw = at::empty({p.N, p.C}, x.options().dtype(at::kFloat));
  float* dwp = dw.data_ptr<float>();
  parallel_blocks(p.N, rtl_cpu::kRowBlock, std::max<int64_t>(p.M, 1) * p.C, [&](int64_t n0, int64_t n1) { ops.grad_w(p, dwp, n0, n1); });
  return dw.to(x.scalar_type());
}

at::Tensor masked_weight(const at::Tensor& weight, const at::Tensor& bits, int64_t ticket, int64_t isa) {
  const rtl_cpu::Ops& ops = ops_for(isa);
  rtl_cpu::Problem p = weight_problem(weight, bits);
  TORCH_CHECK_VALUE(ticket >= 0 && ticket < p.K, "ticket: expected a value in [0, ", p.K, "), got ", ticket);
  at::Tensor out = at::empty_like(weight);
  materialize_into(ops, p, ticket, out);
  return out;
}

// ------------------------------------------------------------------------------- GEMM paths (large batches)

// whether forward_gemm runs with this ISA (it takes float32 inputs only)
bool gemm_supported(int64_t isa) {
  if (isa == kBest) isa = best_isa();
  return (isa == kAvx512 || isa == kAvx512Bf16) && isa_supported(isa);
}

// fused GEMM: the mask is applied while weight panels are packed, rows gathered and scattered in place
at::Tensor forward_gemm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bits, const at::Tensor& perm, const at::Tensor& offsets,
                        const c10::optional<at::Tensor>& bias, int64_t isa) {
  checked_isa(isa);  // validates isa
  rtl_cpu::Problem p = linear_problem(x, weight, bits, perm, offsets);
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, "x: forward_gemm expects float32 inputs, got ", x.scalar_type(), " (use forward or forward_grouped)");
  TORCH_CHECK_VALUE(gemm_supported(isa), "isa: forward_gemm needs AVX-512 (isa 2 or 3), got ", isa, " (use forward or forward_grouped)");
  const at::Tensor b = bias_f32(bias, p.N, x.scalar_type());
  at::Tensor y = at::empty({p.M, p.N}, x.options());
#if defined(__x86_64__) || defined(_M_X64)
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  if (p.M > 0)
    parallel_blocks(p.N, rtl_cpu::kGemmNR, p.M * p.C, [&](int64_t n0, int64_t n1) {
      std::vector<float> scratch(static_cast<size_t>(rtl_cpu::gemm_scratch_floats(p.C)));
      rtl_cpu::forward_gemm_avx512(p, bp, yp, n0, n1, scratch.data());
    });
#endif
  return y;
}

at::Tensor forward_grouped(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bits, const at::Tensor& perm, const at::Tensor& offsets,
                           const c10::optional<at::Tensor>& bias, int64_t isa) {
  const rtl_cpu::Ops& ops = ops_for(isa);
  rtl_cpu::Problem p = linear_problem(x, weight, bits, perm, offsets);
  const bool has_bias = check_bias(bias, p.N, x.scalar_type());
  const at::Tensor xs = x.index_select(0, perm);
  at::Tensor ys = at::empty({p.M, p.N}, x.options());
  at::Tensor wk = at::empty_like(weight);
  for (int64_t k = 0; k < p.K; ++k) {
    const int64_t lo = p.offsets[k], hi = p.offsets[k + 1];
    if (hi <= lo) continue;
    materialize_into(ops, p, k, wk);
    at::Tensor out = ys.narrow(0, lo, hi - lo);
    if (has_bias)
      at::addmm_out(out, *bias, xs.narrow(0, lo, hi - lo), wk.t());
    else
      at::mm_out(out, xs.narrow(0, lo, hi - lo), wk.t());
  }
  return at::empty_like(ys).index_copy_(0, perm, ys);
}

std::tuple<at::Tensor, at::Tensor> backward_grouped(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bits,
                                                    const at::Tensor& perm, const at::Tensor& offsets, bool need_dx, bool need_dw, int64_t isa) {
  const rtl_cpu::Ops& ops = ops_for(isa);
  rtl_cpu::Problem p = linear_problem(x, weight, bits, perm, offsets);
  check_dy(p, dy, x.scalar_type());
  const at::Tensor dys = dy.index_select(0, perm);
  const at::Tensor dys_f = need_dw ? dys.to(at::kFloat) : at::Tensor();
  const at::Tensor xs_f = need_dw ? x.index_select(0, perm).to(at::kFloat) : at::Tensor();
  at::Tensor dxs = need_dx ? at::empty({p.M, p.C}, x.options()) : at::Tensor();
  at::Tensor dw = need_dw ? at::zeros({p.N, p.C}, x.options().dtype(at::kFloat)) : at::Tensor();
  at::Tensor g = need_dw ? at::empty({p.N, p.C}, x.options().dtype(at::kFloat)) : at::Tensor();
  at::Tensor wk = need_dx ? at::empty_like(weight) : at::Tensor();
  for (int64_t k = 0; k < p.K; ++k) {
    const int64_t lo = p.offsets[k], hi = p.offsets[k + 1];
    if (hi <= lo) continue;
    if (need_dx) {
      materialize_into(ops, p, k, wk);
      at::Tensor out = dxs.narrow(0, lo, hi - lo);
      at::mm_out(out, dys.narrow(0, lo, hi - lo), wk);
    }
    if (need_dw) {
      at::mm_out(g, dys_f.narrow(0, lo, hi - lo).t(), xs_f.narrow(0, lo, hi - lo));
      const float* gp = g.data_ptr<float>();
      float* dwp = dw.data_ptr<float>();
      parallel_blocks(p.N, 1, p.C, [&](int64_t n0, int64_t n1) { ops.masked_add(p, k, gp, dwp, n0, n1); });
    }
  }
  at::Tensor dx = need_dx ? at::empty_like(dxs).index_copy_(0, perm, dxs) : at::Tensor();
  return {dx, need_dw ? dw.to(x.scalar_type()) : dw};
}

// ------------------------------------------------------------------------------- seeded weights (never read)

const rtl_seeded::Ops& seeded_ops_for(int64_t isa) {
  isa = checked_isa(isa);
#if defined(__x86_64__) || defined(_M_X64)
  if (isa == kAvx512 || isa == kAvx512Bf16) return rtl_seeded::kOpsAvx512;
  if (isa == kAvx2) return rtl_seeded::kOpsAvx2;
#endif
  return rtl_seeded::kOpsGeneric;
}

rtl_seeded::Problem seeded_problem(const at::Tensor& row_scale, int64_t in_features, int64_t seed, int64_t layer, int64_t dist, int64_t row0) {
  check_float(row_scale, "row_scale", 1, at::kFloat);
  TORCH_CHECK_VALUE(in_features >= 0, "in_features: expected a non-negative int, got ", in_features);
  TORCH_CHECK_VALUE(seed >= 0 && seed <= 0xFFFFFFFFLL, "seed: expected an int in [0, 2**32 - 1], got ", seed);
  TORCH_CHECK_VALUE(layer >= 0 && layer <= 0xFFFFFFFFLL, "layer: expected an int in [0, 2**32 - 1], got ", layer);
  TORCH_CHECK_VALUE(dist >= rtl_seeded::kSignedConstant && dist <= rtl_seeded::kNormal, "dist: expected 0 (signed_constant), 1 (uniform) or 2 (normal), got ", dist);
  TORCH_CHECK_VALUE(row0 >= 0, "row0: expected a non-negative int, got ", row0);
  rtl_seeded::Problem p{};
  p.row0 = row0;
  p.N = row_scale.size(0);
  p.C = in_features;
  p.words = (p.C + 31) / 32;
  p.dist = static_cast<int>(dist);
  p.key_lo = static_cast<uint32_t>(seed);
  p.key_hi = static_cast<uint32_t>(layer);
  p.row_scale = row_scale.data_ptr<float>();
  return p;
}

void add_seeded_masks(rtl_seeded::Problem& p, int64_t M, const at::Tensor& bits, const at::Tensor& perm, const at::Tensor& offsets) {
  std::tie(p.K, p.bits) = check_bits(bits, p.N, p.words);
  const rtl_bind::Plan plan = rtl_bind::check_plan(p.K, M, perm, offsets);
  p.M = M;
  p.perm = plan.perm;
  p.offsets = plan.offsets;
}

at::Tensor seeded_forward(const at::Tensor& x, const at::Tensor& bits, const at::Tensor& perm, const at::Tensor& offsets, const at::Tensor& row_scale,
                          const c10::optional<at::Tensor>& bias, int64_t seed, int64_t layer, int64_t dist, int64_t isa, int64_t row0) {
  const rtl_seeded::Ops& ops = seeded_ops_for(isa);
  check_float(x, "x", 2, at::kFloat);
  rtl_seeded::Problem p = seeded_problem(row_scale, x.size(1), seed, layer, dist, row0);
  add_seeded_masks(p, x.size(0), bits, perm, offsets);
  const at::Tensor b = bias_f32(bias, p.N, at::kFloat);
  p.x = x.data_ptr<float>();
  at::Tensor y = at::zeros({p.M, p.N}, x.options());
  float* yp = y.data_ptr<float>();
  if (p.M > 0) parallel_blocks(p.N, 8, p.M * p.C, [&](int64_t n0, int64_t n1) { ops.forward(p, yp, n0, n1); });
  if (b.defined()) y.add_(b);
  return y;
}

at::Tensor seeded_grad_input(const at::Tensor& dy, const at::Tensor& bits, const at::Tensor& perm, const at::Tensor& offsets, const at::Tensor& row_scale,
                             int64_t in_features, int64_t seed, int64_t layer, int64_t dist, int64_t isa, int64_t row0) {
  const rtl_seeded::Ops& ops = seeded_ops_for(isa);
  check_float(dy, "dy", 2, at::kFloat);
  rtl_seeded::Problem p = seeded_problem(row_scale, in_features, seed, layer, dist, row0);
  check_shape(dy, "dy", {dy.size(0), p.N});
  add_seeded_masks(p, dy.size(0), bits, perm, offsets);
  p.dy = dy.data_ptr<float>();
  at::Tensor dx = at::zeros({p.M, p.C}, dy.options());
  float* dxp = dx.data_ptr<float>();
  if (p.M > 0) parallel_blocks(p.C, rtl_cpu::kColBlock, p.M * p.N, [&](int64_t c0, int64_t c1) { ops.grad_x(p, dxp, c0, c1); });
  return dx;
}

at::Tensor seeded_generate(const at::Tensor& row_scale, int64_t in_features, int64_t seed, int64_t layer, int64_t dist, int64_t isa, int64_t row0) {
  const rtl_seeded::Ops& ops = seeded_ops_for(isa);
  rtl_seeded::Problem p = seeded_problem(row_scale, in_features, seed, layer, dist, row0);
  at::Tensor out = at::empty({p.N, p.C}, row_scale.options());
  float* op = out.data_ptr<float>();
  parallel_blocks(p.N, 1, p.C, [&](int64_t n0, int64_t n1) { ops.generate(p, op, n0, n1); });
  return out;
}

// ------------------------------------------------------------------------------- routed conv2d

const rtl_cpu::ConvOps& conv_ops_for(int64_t isa) {
  isa = checked_isa(isa);
#if defined(__x86_64__) || defined(_M_X64)
  if (isa == kAvx512 || isa == kAvx512Bf16) return rtl_cpu::kConvAvx512;
#endif
  return rtl_cpu::kConvGeneric;
}

int64_t conv_pair(const std::vector<int64_t>& v, int i, const char* name, int64_t minimum) {
  TORCH_CHECK_VALUE(v.size() == 2, name, ": expected 2 values, got ", v.size());
  TORCH_CHECK_VALUE(v[i] >= minimum, name, ": expected values >= ", minimum, ", got ", v[i]);
  return v[i];
}

// A checked conv problem with float32 NHWC copies (or views) of what the kernels read.
struct ConvCall {
  rtl_cpu::ConvProblem p{};
  at::Tensor w32;
  std::vector<int64_t> slot;    // [B]: packed slot of the image at sorted position q
  std::vector<int64_t> active;  // tickets with images, in slot order
};

// x [B, C, H, W] (its shape here; nhwc_f32 checks its dtype where it is read), weight, bits and the
// plan, all checked before any pointer is read
ConvCall conv_call(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bits, const at::Tensor& perm, const at::Tensor& offsets,
                   const std::vector<int64_t>& stride, const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation, int64_t groups) {
  TORCH_CHECK_VALUE(x.defined() && x.dim() == 4, "x: expected a 4-D tensor [B, C, H, W], got ", x.defined() ? shape_of(x) : "None");
  check_common(weight, "weight", 4);
  const auto dt = weight.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kBFloat16, "weight: expected dtype float32 or bfloat16, got ", dt);
  TORCH_CHECK_VALUE(groups >= 1, "groups: expected a positive value, got ", groups);
  ConvCall call;
  rtl_cpu::ConvProblem& p = call.p;
  p.B = x.size(0), p.C = x.size(1), p.H = x.size(2), p.W = x.size(3);
  p.N = weight.size(0), p.Cg = weight.size(1), p.kh = weight.size(2), p.kw = weight.size(3), p.groups = groups;
  TORCH_CHECK_VALUE(p.N % groups == 0, "weight: expected out_channels ", p.N, " divisible by groups = ", groups);
  TORCH_CHECK_VALUE(p.C == p.Cg * groups, "x: expected ", p.Cg * groups, " input channels (weight.shape[1] * groups), got ", p.C);
  p.Ng = p.N / groups;
  p.sh = conv_pair(stride, 0, "stride", 1), p.sw = conv_pair(stride, 1, "stride", 1);
  p.ph = conv_pair(padding, 0, "padding", 0), p.pw = conv_pair(padding, 1, "padding", 0);
  p.dh = conv_pair(dilation, 0, "dilation", 1), p.dw = conv_pair(dilation, 1, "dilation", 1);
  p.Ho = (p.H + 2 * p.ph - p.dh * (p.kh - 1) - 1) / p.sh + 1;
  p.Wo = (p.W + 2 * p.pw - p.dw * (p.kw - 1) - 1) / p.sw + 1;
  TORCH_CHECK_VALUE(p.H + 2 * p.ph >= p.dh * (p.kh - 1) + 1 && p.W + 2 * p.pw >= p.dw * (p.kw - 1) + 1 && p.Ho >= 1 && p.Wo >= 1, "x: spatial size [", p.H,
                    ", ", p.W, "] is too small for the kernel, padding and dilation");
  TORCH_CHECK_VALUE(std::max(p.H * p.W, p.Ho * p.Wo) * p.kh * p.kw < (int64_t{1} << 31), "x: expected fewer than 2^31 pixel taps per image");
  TORCH_CHECK_VALUE(p.R() * 64 < (int64_t{1} << 31), "weight: expected fewer than 2^25 elements per output channel, got ", p.R());
  p.words = (p.R() + 31) / 32;
  std::tie(p.K, p.bits) = check_bits(bits, p.N, p.words);
  const rtl_bind::Plan plan = rtl_bind::check_plan(p.K, p.B, perm, offsets);
  p.perm = plan.perm;
  p.offsets = plan.offsets;
  call.w32 = weight.to(at::kFloat).contiguous();
  p.w = call.w32.data_ptr<float>();
  call.slot.assign(static_cast<size_t>(p.B), 0);
  for (int64_t k = 0; k < p.K; ++k) {
    if (p.offsets[k] == p.offsets[k + 1]) continue;
    for (int64_t q = p.offsets[k]; q < p.offsets[k + 1]; ++q) call.slot[q] = static_cast<int64_t>(call.active.size());
    call.active.push_back(k);
  }
  return call;
}

// float32 NHWC data of an NCHW-shaped tensor (a view when it already is channels_last float32)
at::Tensor nhwc_f32(const at::Tensor& t, const char* name, at::ScalarType like) {
  TORCH_CHECK_VALUE(t.defined() && t.device().is_cpu() && t.dim() == 4, name, ": expected a 4-D CPU tensor");
  TORCH_CHECK_TYPE(t.scalar_type() == like, name, ": expected dtype ", like, ", got ", t.scalar_type());
  return t.permute({0, 2, 3, 1}).to(at::kFloat).contiguous();
}

// every active ticket's masked weight, packed once for the whole call (forward or dX panels)
at::Tensor conv_pack(const rtl_cpu::ConvOps& ops, const ConvCall& call, bool dx, int64_t* floats) {
  const rtl_cpu::ConvProblem& p = call.p;
  const int64_t groups = rtl_cpu::conv_is_depthwise(p) ? 1 : p.groups;
  *floats = ops.pack_floats(p, dx);
  const int64_t blocks = static_cast<int64_t>(call.active.size()) * groups;
  at::Tensor packed = at::empty({std::max<int64_t>(blocks * *floats, 1)}, at::kFloat);
  float* out = packed.data_ptr<float>();
  const int64_t n = *floats;
  parallel_claim(blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) ops.pack(p, dx, call.active[b / groups], b % groups, out + b * n);
  });
  return packed;
}

at::Tensor conv_table(const rtl_cpu::ConvProblem& p, bool transposed) {
  at::Tensor table = at::empty({(transposed ? p.H * p.W : p.Ho * p.Wo) * p.taps()}, at::kInt);
  rtl_cpu::conv_tap_table(p, transposed, table.data_ptr<int32_t>());
  return table;
}

constexpr int64_t kConvChunkRows = 48;  // row pixels per work item (a multiple of every tile height)

// one gathered GEMM (forward: src = x; dX: src = dy) into a fresh float32 NHWC tensor
at::Tensor conv_gather(const rtl_cpu::ConvOps& ops, const ConvCall& call, bool dx, const at::Tensor& src, const float* bias) {
  const rtl_cpu::ConvProblem& p = call.p;
  const bool depthwise = rtl_cpu::conv_is_depthwise(p);
  int64_t floats = 0;
  const at::Tensor packed = conv_pack(ops, call, dx, &floats);
  const at::Tensor table = conv_table(p, dx);
  const int64_t rows = dx ? p.H * p.W : p.Ho * p.Wo;
  const int64_t out_channels = dx ? p.C : p.N;
  at::Tensor out = at::empty({p.B, dx ? p.H : p.Ho, dx ? p.W : p.Wo, out_channels}, at::kFloat);
  at::Tensor zeros = at::zeros({std::max(p.Cg, p.Ng) + 16}, at::kFloat);
  rtl_cpu::Gather a{};
  a.src = src.data_ptr<float>();
  a.src_pixels = dx ? p.Ho * p.Wo : p.H * p.W;
  a.src_channels = dx ? p.N : p.C;
  a.cr = depthwise ? 1 : (dx ? p.Ng : p.Cg);
  a.table = table.data_ptr<int32_t>();
  a.rows = rows;
  a.taps = p.taps();
  a.out = out.data_ptr<float>();
  a.out_channels = out_channels;
  a.nout = depthwise ? out_channels : (dx ? p.Cg : p.Ng);
  a.bias = bias;
  a.packed = packed.data_ptr<float>();
  a.pack_floats = floats;
  a.perm = p.perm;
  a.slot = call.slot.data();
  a.groups = depthwise ? 1 : p.groups;
  a.chunk_rows = kConvChunkRows;
  a.zeros = zeros.data_ptr<float>();
  const int64_t chunks = (rows + kConvChunkRows - 1) / kConvChunkRows;
  const int64_t items = p.B * a.groups * chunks;
  const int64_t work = std::max<int64_t>(1, kConvChunkRows * a.taps * a.cr * std::max<int64_t>(a.nout, 1));
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / work);
  auto fn = depthwise ? ops.gather_depthwise : ops.gather;
  parallel_claim(items, grain, [&](int64_t i0, int64_t i1) { fn(a, i0, i1); });
  return out;
}

// y = routed conv2d of x [B, C, H, W] (any memory format): a channels_last tensor of x's dtype
at::Tensor conv_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bits, const at::Tensor& perm, const at::Tensor& offsets,
                        const c10::optional<at::Tensor>& bias, const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                        const std::vector<int64_t>& dilation, int64_t groups, int64_t isa) {
  const rtl_cpu::ConvOps& ops = conv_ops_for(isa);
  const ConvCall call = conv_call(x, weight, bits, perm, offsets, stride, padding, dilation, groups);
  const at::Tensor x32 = nhwc_f32(x, "x", weight.scalar_type());
  const at::Tensor b32 = bias_f32(bias, call.p.N, x.scalar_type());
  const at::Tensor y = conv_gather(ops, call, false, x32, b32.defined() ? b32.data_ptr<float>() : nullptr);
  return y.permute({0, 3, 1, 2}).to(x.scalar_type());
}

// (dx, dW) of the routed conv2d: dx by the transposed gather, dW = sum_k mask_k * (per-ticket sums)
std::tuple<at::Tensor, at::Tensor> conv_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bits,
                                                 const at::Tensor& perm, const at::Tensor& offsets, const std::vector<int64_t>& stride,
                                                 const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation, int64_t groups, bool need_dx,
                                                 bool need_dw, int64_t isa) {
  const rtl_cpu::ConvOps& ops = conv_ops_for(isa);
  const ConvCall call = conv_call(x, weight, bits, perm, offsets, stride, padding, dilation, groups);
  const rtl_cpu::ConvProblem& p = call.p;
  TORCH_CHECK_VALUE(dy.defined() && dy.dim() == 4, "dy: expected a 4-D tensor, got ", dy.defined() ? shape_of(dy) : "None");
  check_shape(dy, "dy", {p.B, p.N, p.Ho, p.Wo});
  const at::Tensor dy32 = nhwc_f32(dy, "dy", weight.scalar_type());
  at::Tensor dx, dw;
  if (need_dx) dx = conv_gather(ops, call, true, dy32, nullptr).permute({0, 3, 1, 2}).to(x.scalar_type());
  if (need_dw) {
    const at::Tensor x32 = nhwc_f32(x, "x", weight.scalar_type());
    const at::Tensor table = conv_table(p, false);
    at::Tensor dw32 = at::zeros({p.N, p.Cg, p.kh, p.kw}, at::kFloat);
    const int64_t items = ops.grad_w_items(p);
    const int64_t work = std::max<int64_t>(1, p.B * p.Ho * p.Wo * 64);
    const float *xp = x32.data_ptr<float>(), *dyp = dy32.data_ptr<float>();
    const int32_t* tp = table.data_ptr<int32_t>();
    float* dwp = dw32.data_ptr<float>();
    if (p.B > 0)
      parallel_claim(items, std::max<int64_t>(1, (int64_t{1} << 18) / work), [&](int64_t i0, int64_t i1) { ops.grad_w(p, tp, xp, dyp, dwp, i0, i1); });
    dw = dw32.to(weight.scalar_type());
  }
  return {dx, dw};
}

std::vector<int64_t> supported_isas() {
  std::vector<int64_t> out;
  for (int64_t isa : {kGeneric, kAvx2, kAvx512, kAvx512Bf16})
    if (isa_supported(isa)) out.push_back(isa);
  return out;
}

std::string isa_name(int64_t isa) { return ops_for(isa).name; }

// threads at::parallel_for can use here: 1 when this file was compiled without OpenMP
int64_t max_threads() {
#if defined(_OPENMP)
  return at::get_num_threads();
#else
  return 1;
#endif
}

}  // namespace

void register_masked_delta(pybind11::module_& m, const rtl_cpu::DeltaOps& (*ops_for)(int64_t));  // masked_delta_binding.cpp

// the compute entry points release the GIL (as torch's own ops do), so other Python threads (a
// server's event loop accepting requests while a batch runs) keep running during a kernel
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rtl_kernels CPU kernels: routed masked linear (bit-packed masks, weight read once per call)";
  m.def("forward", &forward, "y = x @ (W & mask[route])^T + b, weight-stationary kernel", py::call_guard<py::gil_scoped_release>(), py::arg("x"), py::arg("weight"), py::arg("bits"), py::arg("perm"),
        py::arg("offsets"), py::arg("bias") = py::none(), py::arg("isa") = -1);
  m.def("grad_input", &grad_input, "dx = dy @ (W & mask[route])", py::call_guard<py::gil_scoped_release>(), py::arg("dy"), py::arg("weight"), py::arg("bits"), py::arg("perm"), py::arg("offsets"),
        py::arg("isa") = -1);
  m.def("grad_weight", &grad_weight, "dW = sum_k mask_k * (dY_k^T X_k)", py::call_guard<py::gil_scoped_release>(), py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("bits"), py::arg("perm"),
        py::arg("offsets"), py::arg("isa") = -1);
  m.def("masked_weight", &masked_weight, "W & mask[ticket] as a dense tensor", py::call_guard<py::gil_scoped_release>(), py::arg("weight"), py::arg("bits"), py::arg("ticket"), py::arg("isa") = -1);
  m.def("forward_gemm", &forward_gemm, "forward via a fused GEMM that masks weight panels while packing them (AVX-512, float32)", py::call_guard<py::gil_scoped_release>(), py::arg("x"),
        py::arg("weight"), py::arg("bits"), py::arg("perm"), py::arg("offsets"), py::arg("bias") = py::none(), py::arg("isa") = -1);
  m.def("gemm_supported", &gemm_supported, "whether forward_gemm runs with this ISA id (float32 only)", py::arg("isa") = -1);
  m.def("forward_grouped", &forward_grouped, "forward via per-ticket masked weight and torch.mm (large batches)", py::call_guard<py::gil_scoped_release>(), py::arg("x"), py::arg("weight"),
        py::arg("bits"), py::arg("perm"), py::arg("offsets"), py::arg("bias") = py::none(), py::arg("isa") = -1);
  m.def("backward_grouped", &backward_grouped, "(dx, dW) via per-ticket masked weight and torch.mm (large batches)", py::call_guard<py::gil_scoped_release>(), py::arg("dy"), py::arg("x"),
        py::arg("weight"), py::arg("bits"), py::arg("perm"), py::arg("offsets"), py::arg("need_dx"), py::arg("need_dw"), py::arg("isa") = -1);
  m.def("seeded_forward", &seeded_forward, "y = x @ (W(seed) & mask[route])^T + b with W regenerated in L1, never read", py::arg("x"), py::arg("bits"),
        py::arg("perm"), py::arg("offsets"), py::arg("row_scale"), py::arg("bias") = py::none(), py::arg("seed"), py::arg("layer"), py::arg("dist"),
        py::arg("isa") = -1, py::arg("row0") = 0);
  m.def("seeded_grad_input", &seeded_grad_input, "dx = dy @ (W(seed) & mask[route]) with W regenerated", py::arg("dy"), py::arg("bits"), py::arg("perm"),
        py::arg("offsets"), py::arg("row_scale"), py::arg("in_features"), py::arg("seed"), py::arg("layer"), py::arg("dist"), py::arg("isa") = -1,
        py::arg("row0") = 0);
  m.def("seeded_generate", &seeded_generate, "the seeded weight W(seed) [N, in_features] (float32)", py::arg("row_scale"), py::arg("in_features"),
        py::arg("seed"), py::arg("layer"), py::arg("dist"), py::arg("isa") = -1, py::arg("row0") = 0);
  m.def("conv_forward", &conv_forward, "routed conv2d: each image convolved with W & mask[route] (implicit GEMM over NHWC pixels)", py::arg("x"),
        py::arg("weight"), py::arg("bits"), py::arg("perm"), py::arg("offsets"), py::arg("bias"), py::arg("stride"), py::arg("padding"),
        py::arg("dilation"), py::arg("groups"), py::arg("isa") = -1);
  m.def("conv_backward", &conv_backward, "(dx, dW) of the routed conv2d (dW = sum_k mask_k * per-ticket sums)", py::arg("dy"), py::arg("x"),
        py::arg("weight"), py::arg("bits"), py::arg("perm"), py::arg("offsets"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
        py::arg("groups"), py::arg("need_dx"), py::arg("need_dw"), py::arg("isa") = -1);
  m.def("supported_isas", &supported_isas, "ISA ids this CPU runs (0 generic, 1 avx2, 2 avx512, 3 avx512_bf16)");
  m.def("best_isa", &best_isa, "the ISA id used by default");
  m.def("isa_name", &isa_name, "name of an ISA id", py::arg("isa") = -1);
  register_masked_delta(m, &delta_ops_for);
  m.def("max_threads", &max_threads, "threads the kernels run on (1 if the extension was built without OpenMP)");
}
