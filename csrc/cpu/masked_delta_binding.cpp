// Torch binding of the masked-delta kernels (masked_delta_cpu.h): argument checks before any
// pointer is read, threading over weight rows with at::parallel_for, and the large-batch path
// (each active ticket's weight materialised once, then torch.mm).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "binding_checks.h"
#include "masked_delta_cpu.h"
#include "routed_cpu.h"

namespace {

using DeltaOpsFor = const rtl_cpu::DeltaOps& (*)(int64_t);
DeltaOpsFor g_ops_for = nullptr;

using rtl_bind::parallel_blocks;

void check_f32(const at::Tensor& t, const char* name, int64_t dim) { rtl_bind::check_float(t, name, dim, at::kFloat); }

// base, delta, bits, scales: the weight side of a problem. base and delta float32, or (bf16_ok: the
// fused forward) both bfloat16; scales float32 either way.
rtl_cpu::DeltaProblem weight_side(const at::Tensor& base, const at::Tensor& delta, const at::Tensor& bits, const at::Tensor& scales, bool bf16_ok = false) {
  rtl_bind::check_common(base, "base", 2);
  const at::ScalarType dt = base.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || (bf16_ok && dt == at::kBFloat16), "base: expected dtype float32", bf16_ok ? " or bfloat16" : "", ", got ", dt);
  rtl_bind::check_float(delta, "delta", 2, dt);
  check_f32(scales, "scales", 1);
  TORCH_CHECK_VALUE(delta.sizes() == base.sizes(), "delta: expected the shape of base");
  TORCH_CHECK_VALUE(bits.device().is_cpu() && bits.is_contiguous() && bits.dim() == 3 && bits.scalar_type() == at::kInt, "bits: expected a contiguous int32 [K, N, words] CPU tensor");
  rtl_cpu::DeltaProblem p{};
  p.N = base.size(0);
  p.C = base.size(1);
  p.K = bits.size(0);
  p.words = (p.C + 31) / 32;
  TORCH_CHECK_VALUE(p.K >= 1 && bits.size(1) == p.N && bits.size(2) == p.words, "bits: expected shape [K >= 1, ", p.N, ", ", p.words, "]");
  TORCH_CHECK_VALUE(scales.size(0) == p.K, "scales: expected shape [", p.K, "]");
  p.dtype = dt == at::kBFloat16 ? rtl_cpu::kBFloat16 : rtl_cpu::kFloat32;
  p.base = base.data_ptr();
  p.delta = delta.data_ptr();
  p.scales = scales.data_ptr<float>();
  p.bits = reinterpret_cast<const uint32_t*>(bits.data_ptr<int32_t>());
  return p;
}

// x of the dtype of base and delta
void add_rows(rtl_cpu::DeltaProblem& p, const at::Tensor& x, const at::Tensor& perm, const at::Tensor& offsets) {
  rtl_bind::check_float(x, "x", 2, p.dtype == rtl_cpu::kBFloat16 ? at::kBFloat16 : at::kFloat);
  TORCH_CHECK_VALUE(x.size(1) == p.C, "x: expected ", p.C, " columns (in_features), got ", x.size(1));
  p.M = x.size(0);
  const rtl_bind::Plan plan = rtl_bind::check_plan(p.K, p.M, perm, offsets);
  p.x = x.data_ptr();
  p.perm = plan.perm;
  p.offsets = plan.offsets;
}

// bias [N] (shared) or [K, N] (per ticket) of the problem's dtype, kept as float32 (a bf16 bias is
// widened once, as in the routed forward); undefined when absent
at::Tensor add_bias(rtl_cpu::DeltaProblem& p, const c10::optional<at::Tensor>& bias) {
  if (!bias.has_value() || !bias->defined()) return at::Tensor();
  const bool bf16 = p.dtype == rtl_cpu::kBFloat16;
  TORCH_CHECK_VALUE(bias->device().is_cpu() && bias->is_contiguous() && bias->scalar_type() == (bf16 ? at::kBFloat16 : at::kFloat), "bias: expected a contiguous ",
                    bf16 ? "bfloat16" : "float32", " CPU tensor");
  const at::Tensor b = bf16 ? bias->to(at::kFloat) : *bias;
  const bool shared = b.dim() == 1 && b.size(0) == p.N;
  TORCH_CHECK_VALUE(shared || (b.dim() == 2 && b.size(0) == p.K && b.size(1) == p.N), "bias: expected shape [", p.N, "] or [", p.K, ", ", p.N, "]");
  p.bias = b.data_ptr<float>();
  p.bias_stride = shared ? 0 : p.N;
  return b;
}

void check_ticket(const rtl_cpu::DeltaProblem& p, int64_t k) { TORCH_CHECK_VALUE(k >= 0 && k < p.K, "ticket: expected a value in [0, ", p.K, "), got ", k); }

at::Tensor delta_forward(const at::Tensor& x, const at::Tensor& base, const at::Tensor& delta, const at::Tensor& bits, const at::Tensor& scales,
                         const at::Tensor& perm, const at::Tensor& offsets, const c10::optional<at::Tensor>& bias, int64_t isa) {
  const rtl_cpu::DeltaOps& ops = g_ops_for(isa);
  rtl_cpu::DeltaProblem p = weight_side(base, delta, bits, scales, /*bf16_ok=*/true);
  add_rows(p, x, perm, offsets);
  const at::Tensor b = add_bias(p, bias);  // held: a widened bf16 bias lives as long as p.bias is read
  at::Tensor y = at::zeros({p.M, p.N}, x.options().dtype(at::kFloat));
  float* yp = y.data_ptr<float>();
  // blocks of weight rows per task, so a block of base and delta is read by one thread only
  if (p.M > 0) parallel_blocks(p.N, rtl_cpu::kRowBlock, p.M * p.C, [&](int64_t n0, int64_t n1) { ops.forward(p, yp, n0, n1); });
  // float32 accumulation rounded once to bf16 (as the routed bf16 forward); float32 returned as is
  return y.to(x.scalar_type());
}

at::Tensor delta_materialize(const at::Tensor& base, const at::Tensor& delta, const at::Tensor& bits, const at::Tensor& scales, int64_t ticket, int64_t isa) {
  const rtl_cpu::DeltaOps& ops = g_ops_for(isa);
  rtl_cpu::DeltaProblem p = weight_side(base, delta, bits, scales);
  check_ticket(p, ticket);
  at::Tensor out = at::empty_like(base);
  float* o = out.data_ptr<float>();
  parallel_blocks(p.N, 1, p.C, [&](int64_t n0, int64_t n1) { ops.materialize(p, ticket, o, n0, n1); });
  return out;
}

// large batches: each active ticket's weight built once, rows gathered, torch.mm, rows scattered back
at::Tensor delta_forward_grouped(const at::Tensor& x, const at::Tensor& base, const at::Tensor& delta, const at::Tensor& bits, const at::Tensor& scales,
                                 const at::Tensor& perm, const at::Tensor& offsets, const c10::optional<at::Tensor>& bias, int64_t isa) {
  const rtl_cpu::DeltaOps& ops = g_ops_for(isa);
  rtl_cpu::DeltaProblem p = weight_side(base, delta, bits, scales);
  add_rows(p, x, perm, offsets);
  const at::Tensor b = add_bias(p, bias);
  const at::Tensor xs = x.index_select(0, perm);
  at::Tensor ys = at::empty({p.M, p.N}, x.options());
  at::Tensor wk = at::empty_like(base);
  float* wp = wk.data_ptr<float>();
  for (int64_t k = 0; k < p.K; ++k) {
    const int64_t lo = p.offsets[k], hi = p.offsets[k + 1];
    if (hi <= lo) continue;
    parallel_blocks(p.N, 1, p.C, [&](int64_t n0, int64_t n1) { ops.materialize(p, k, wp, n0, n1); });
    at::Tensor out = ys.narrow(0, lo, hi - lo);
    if (b.defined())
      at::addmm_out(out, p.bias_stride ? b.select(0, k) : b, xs.narrow(0, lo, hi - lo), wk.t());
    else
      at::mm_out(out, xs.narrow(0, lo, hi - lo), wk.t());
  }
  return at::empty_like(ys).index_copy_(0, perm, ys);
}

// out += s * (mask_ticket ? g : 0), in place
void delta_masked_axpy(at::Tensor& out, const at::Tensor& g, const at::Tensor& base, const at::Tensor& bits, const at::Tensor& scales, int64_t ticket, double s,
                       int64_t isa) {
  const rtl_cpu::DeltaOps& ops = g_ops_for(isa);
  rtl_cpu::DeltaProblem p = weight_side(base, base, bits, scales);
  check_ticket(p, ticket);
  check_f32(out, "out", 2);
  check_f32(g, "g", 2);
  TORCH_CHECK_VALUE(out.sizes() == base.sizes() && g.sizes() == base.sizes(), "out, g: expected the shape of base");
  float* o = out.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  parallel_blocks(p.N, 1, p.C, [&](int64_t n0, int64_t n1) { ops.masked_axpy(p, ticket, static_cast<float>(s), gp, o, n0, n1); });
}

// sum over mask_ticket of delta * g
double delta_masked_dot(const at::Tensor& delta, const at::Tensor& g, const at::Tensor& bits, const at::Tensor& scales, int64_t ticket, int64_t isa) {
  const rtl_cpu::DeltaOps& ops = g_ops_for(isa);
  rtl_cpu::DeltaProblem p = weight_side(delta, delta, bits, scales);
  check_ticket(p, ticket);
  check_f32(g, "g", 2);
  TORCH_CHECK_VALUE(g.sizes() == delta.sizes(), "g: expected the shape of delta");
  std::vector<double> rows(static_cast<size_t>(p.N), 0.0);
  const float* gp = g.data_ptr<float>();
  parallel_blocks(p.N, 1, p.C, [&](int64_t n0, int64_t n1) { ops.masked_dot(p, ticket, gp, rows.data(), n0, n1); });
  double total = 0.0;
  for (double v : rows) total += v;
  return total;
}

}  // namespace

void register_masked_delta(pybind11::module_& m, const rtl_cpu::DeltaOps& (*ops_for)(int64_t)) {
  g_ops_for = ops_for;
  m.def("delta_forward", &delta_forward, "y = x @ (base + s[r] * (delta & mask[r]))^T, base/delta/bits each read once (float32 or bfloat16)", py::arg("x"), py::arg("base"),
        py::arg("delta"), py::arg("bits"), py::arg("scales"), py::arg("perm"), py::arg("offsets"), py::arg("bias") = py::none(), py::arg("isa") = -1);
  m.def("delta_forward_grouped", &delta_forward_grouped, "the same via one materialised weight per active ticket and torch.mm", py::arg("x"),
        py::arg("base"), py::arg("delta"), py::arg("bits"), py::arg("scales"), py::arg("perm"), py::arg("offsets"), py::arg("bias") = py::none(),
        py::arg("isa") = -1);
  m.def("delta_materialize", &delta_materialize, "base + s[k] * (delta & mask[k]) as a dense tensor", py::arg("base"), py::arg("delta"), py::arg("bits"),
        py::arg("scales"), py::arg("ticket"), py::arg("isa") = -1);
  m.def("delta_masked_axpy", &delta_masked_axpy, "out += s * (mask[k] ? g : 0), in place", py::arg("out"), py::arg("g"), py::arg("base"), py::arg("bits"),
        py::arg("scales"), py::arg("ticket"), py::arg("s"), py::arg("isa") = -1);
  m.def("delta_masked_dot", &delta_masked_dot, "sum over mask[k] of delta * g", py::arg("delta"), py::arg("g"), py::arg("bits"), py::arg("scales"),
        py::arg("ticket"), py::arg("isa") = -1);
}
