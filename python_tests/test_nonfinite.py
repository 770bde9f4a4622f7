"""NaN/Inf semantics on every backend and every cpu kernel path (direct, gemm, grouped; each ISA; fp32 and bf16).

The rule (the contract's "a weight outside a ticket's mask is never read"): kernels *select* the
masked weight, ``where(mask, W, 0)``, never multiply by the mask. So

- a NaN/Inf stored in a pruned weight reaches no output and no gradient;
- a NaN/Inf in ``x`` or ``dy`` propagates as in the dense product with the selected weight, and
  only within its own row; pruned entries of ``dweight`` are exactly zero
  (``dW = Σ_k where(mask_k, dY_kᵀ X_k, 0)``).

The reference and every cpu path give exactly that IEEE pattern. Triton skips tiles where a ticket's
mask is empty, so there a NaN in ``x`` that meets only pruned weights may be dropped: its forward and
``dx`` are checked to lie between the dense pattern and the "pruned terms absent" pattern.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rtl_kernels as rtl
from rtl_kernels.backends import extension
from rtl_kernels.routing_plans.plan import make_plan

ext = extension.load_cpu()
ISAS = ext.supported_isas() if ext is not None else []
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
POISON = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the Triton tests' device (CPU: the interpreter)


@st.composite
def problem(draw, max_rows=12, dtypes=(torch.float32, torch.bfloat16)):
    k = draw(st.integers(1, 4))
    m = draw(st.integers(0, max_rows))
    n = draw(st.integers(1, 20))
    c = draw(st.integers(1, 40))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    dtype = draw(st.sampled_from(dtypes))
    masks = torch.rand(k, n, c, generator=g) < draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    routes = torch.randint(0, k, (m,), generator=g)
    x, w, dy = torch.randn(m, c, generator=g), torch.randn(n, c, generator=g), torch.randn(m, n, generator=g)
    bias = torch.randn(n, generator=g) if draw(st.booleans()) else None
    where = draw(st.sampled_from(["pruned weight", "any weight", "x", "dy"]))
    value = POISON[draw(st.sampled_from(sorted(POISON)))]
    if where == "pruned weight":  # pruned in every ticket: nothing may ever read it
        w[(torch.rand(n, c, generator=g) < 0.5) & ~masks.any(0)] = value
    elif where == "any weight":  # tickets that keep it read it; the others must not
        w[torch.rand(n, c, generator=g) < 0.1] = value
    elif m:
        t = x if where == "x" else dy
        t[torch.rand(t.shape, generator=g) < 0.05] = value
    x, w, dy = x.to(dtype), w.to(dtype), dy.to(dtype)
    return x, w, None if bias is None else bias.to(dtype), masks, routes, dy


def refs(x, w, b, masks, routes, dy):
    """float64: forward and dx with the selected weight (dense) and with pruned terms absent (sparse); dW."""
    x, w, dy = x.double(), w.double(), dy.double()
    keep = masks[routes]  # [M, N, C]
    wm = torch.where(keep, w, 0.0)
    zero = torch.zeros((), dtype=torch.float64)
    y_dense = torch.einsum("mc,mnc->mn", x, wm)
    y_sparse = torch.where(keep, x[:, None, :] * w, zero).sum(-1)
    if b is not None:
        y_dense, y_sparse = y_dense + b.double(), y_sparse + b.double()
    dx_dense = torch.einsum("mn,mnc->mc", dy, wm)
    dx_sparse = torch.where(keep, dy[:, :, None] * w, zero).sum(1)
    dw = torch.where(keep, dy[:, :, None] * x[:, None, :], zero).sum(0)
    return (y_dense, y_sparse), (dx_dense, dx_sparse), dw


def assert_ieee_equal(out: torch.Tensor, ref: torch.Tensor, tol: float, what: str) -> None:
    """Same NaN, +Inf and -Inf positions; the finite entries within ``tol`` (relative norm)."""
    out = out.double()
    for test in (torch.isnan, torch.isposinf, torch.isneginf):
        assert torch.equal(test(out), test(ref)), (
            f"{what}: {test.__name__} pattern differs ({int(test(out).sum())} vs {int(test(ref).sum())})"
        )
    finite = torch.isfinite(ref)
    diff = torch.linalg.vector_norm(out[finite] - ref[finite])
    assert diff <= tol * max(float(torch.linalg.vector_norm(ref[finite])), 1.0), f"{what}: finite entries differ by {float(diff)}"


def assert_between(out: torch.Tensor, dense: torch.Tensor, sparse: torch.Tensor, tol: float, what: str) -> None:
    """Finite and close wherever the dense result is finite; non-finite wherever even the sparse one is."""
    out = out.double()
    finite = torch.isfinite(dense)
    assert bool(torch.isfinite(out[finite]).all()), f"{what}: non-finite values leaked into entries that never meet one"
    assert_ieee_equal(out[finite], dense[finite], tol, what)
    assert bool((~torch.isfinite(out[~torch.isfinite(sparse)])).all()), f"{what}: a non-finite value met by a kept weight was dropped"


def cpu_paths(x, w, b, bits, plan, dy):
    """Every cpu kernel path on every ISA this machine runs: name -> (y, dx, dw)."""
    args = (bits, plan.perm, plan.offsets)
    out = {}
    for isa in ISAS:
        dx, dw = ext.grad_input(dy, w, *args, isa), ext.grad_weight(dy, x, w, *args, isa)
        gdx, gdw = ext.backward_grouped(dy, x, w, *args, True, True, isa)
        out[f"direct/{isa}"] = (ext.forward(x, w, *args, b, isa), dx, dw)
        out[f"grouped/{isa}"] = (ext.forward_grouped(x, w, *args, b, isa), gdx, gdw)
        if x.dtype == torch.float32 and ext.gemm_supported(isa):
            out[f"gemm/{isa}"] = (ext.forward_gemm(x, w, *args, b, isa), dx, dw)
    return out


def through_op(x, w, b, masks, routes, dy, backend):
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    bg = None if b is None else b.clone().requires_grad_()
    y = rtl.routed_linear(xg, wg, masks, routes, bg, backend=backend)
    y.backward(dy)
    return y.detach(), xg.grad, wg.grad


@pytest.mark.skipif(ext is None, reason="the C++ CPU extension cannot be built here (no compiler)")
@given(case=problem())
def test_every_cpu_kernel_path_selects_and_all_paths_agree(case):
    x, w, b, masks, routes, dy = case
    (y_ref, _), (dx_ref, _), dw_ref = refs(x, w, b, masks, routes, dy)
    tol = TOL[x.dtype]
    plan = make_plan(routes, masks.shape[0])
    for name, (y, dx, dw) in cpu_paths(x, w, b, rtl.pack_masks(masks).bits, plan, dy).items():
        assert_ieee_equal(y, y_ref, tol, f"{name} forward")
        assert_ieee_equal(dx, dx_ref, tol, f"{name} dx")
        assert_ieee_equal(dw, dw_ref, tol, f"{name} dw")


@pytest.mark.parametrize("backend", ["reference", "cpu", "auto"])
@given(case=problem())
def test_public_op_follows_the_select_rule(backend, case):
    if backend == "cpu" and ext is None:
        pytest.skip("no C++ extension")
    x, w, b, masks, routes, dy = case
    (y_ref, _), (dx_ref, _), dw_ref = refs(x, w, b, masks, routes, dy)
    y, dx, dw = through_op(x, w, b, masks, routes, dy, backend)
    tol = 1e-5 if backend == "reference" and x.dtype == torch.float32 else 2e-2
    assert_ieee_equal(y, y_ref, tol, f"{backend} forward")
    assert_ieee_equal(dx, dx_ref, tol, f"{backend} dx")
    assert_ieee_equal(dw, dw_ref, tol, f"{backend} dw")


@settings(max_examples=6)
@given(case=problem(max_rows=20, dtypes=(torch.float32,)))
def test_triton_selects_in_every_kernel(case):
    tb = pytest.importorskip("rtl_kernels.backends.triton_backend")
    if not tb.is_available(DEVICE):
        pytest.skip(f"triton backend unavailable on {DEVICE} (CPU: no TRITON_INTERPRET)")
    x, w, b, masks, routes, dy = case
    (y_d, y_s), (dx_d, dx_s), dw_ref = refs(x, w, b, masks, routes, dy)
    x, w, b, masks, routes, dy = (None if t is None else t.to(DEVICE) for t in case)
    packed, plan = rtl.pack_masks(masks), make_plan(routes, masks.shape[0])
    y = tb.linear_forward(x, w, packed, plan, b)
    dx, dw = tb.linear_backward(dy, x, w, packed, plan, True, True)
    assert_between(y.cpu(), y_d, y_s, 1e-3, "triton forward")
    assert_between(dx.cpu(), dx_d, dx_s, 1e-3, "triton dx")
    assert_ieee_equal(dw.cpu(), dw_ref, 1e-3, "triton dw")


@pytest.mark.parametrize("backend", ["reference", "auto", "triton"])
def test_conv_never_reads_pruned_weights(backend):
    dev = DEVICE if backend == "triton" else torch.device("cpu")
    if backend == "triton" and "triton" not in rtl.available_backends(dev):
        pytest.skip(f"triton backend unavailable on {dev}")
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, 2, 3, 3, generator=g)
    masks = torch.rand(2, *w.shape, generator=g) < 0.5
    poisoned = torch.where(masks.any(0), w, torch.tensor(float("nan")))
    poisoned[0, 0, 0, 0] = float("inf") if not masks[:, 0, 0, 0, 0].any() else poisoned[0, 0, 0, 0]
    x = torch.randn(3, 2, 5, 5, generator=g)
    routes = torch.tensor([0, 1, 1])
    xg, wg = x.clone().to(dev).requires_grad_(), poisoned.clone().to(dev).requires_grad_()
    y = rtl.routed_conv2d(xg, wg, masks.to(dev), routes.to(dev), padding=1, backend=backend)
    y.backward(torch.ones_like(y))
    clean_x, clean_w = x.clone().requires_grad_(), torch.where(masks.any(0), w, 0.0).requires_grad_()
    ref = rtl.routed_conv2d(clean_x, clean_w, masks, routes, padding=1, backend="reference")
    ref.backward(torch.ones_like(ref))
    for got, want in ((y.detach().cpu(), ref), (xg.grad.cpu(), clean_x.grad), (wg.grad.cpu(), clean_w.grad)):
        assert bool(torch.isfinite(got).all())
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
