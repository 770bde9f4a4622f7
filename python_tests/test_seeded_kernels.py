"""Seeded-weight kernels (weight regenerated, never read): same bits on reference, cpu and triton; float64 checks."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import rtl_kernels as rtl
from rtl_kernels.backends.extension import load_cpu
from rtl_kernels.init.philox import DISTS, generate
from rtl_kernels.masks.packed import pack_masks
from rtl_kernels.ops.seeded import seeded_linear, seeded_weight

CPU = load_cpu()
needs_cpu = pytest.mark.skipif(CPU is None, reason="CPU extension not built")


def _triton():
    pytest.importorskip("triton")


def reference(shape, dist, seed, layer, row_scale):
    return generate(shape, dist, seed, layer, 1.0) * row_scale[:, None]


def problem(data, n, c, k, m, dist):
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    row_scale = torch.rand(n, generator=g) + 0.25
    masks = torch.rand(k, n, c, generator=g) < data.draw(st.sampled_from([0.0, 0.3, 0.9, 1.0]))
    routes = torch.randint(0, k, (m,), generator=g)
    if k > 1 and m:
        routes[routes == k - 1] = 0  # ticket K-1 stays empty
    x = torch.randn(m, c, generator=g)
    bias = torch.randn(n, generator=g) if data.draw(st.booleans()) else None
    seed = data.draw(st.integers(0, 2**32 - 1))
    layer = data.draw(st.integers(0, 2**31 - 1))
    return row_scale, masks, routes, x, bias, seed, layer


def float64_linear(x, w, masks, routes, bias):
    out = (
        torch.stack([x[i].double() @ (w.double() * masks[routes[i]]).T for i in range(x.shape[0])])
        if x.shape[0]
        else x.new_zeros(0, w.shape[0]).double()
    )
    return out + (bias.double() if bias is not None else 0.0)


def rel(a, b):
    return float((a.detach().double() - b).norm() / b.norm().clamp_min(1e-30))


@needs_cpu
@given(data=st.data(), n=st.integers(1, 40), c=st.integers(1, 1100), dist=st.sampled_from(DISTS))
def test_cpu_generator_bits_equal_reference_on_every_isa(data, n, c, dist):
    seed, layer = data.draw(st.integers(0, 2**32 - 1)), data.draw(st.integers(0, 2**31 - 1))
    row_scale = torch.rand(n) + 0.5
    ref = reference((n, c), dist, seed, layer, row_scale)
    for isa in CPU.supported_isas()[:3]:
        assert torch.equal(CPU.seeded_generate(row_scale, c, seed, layer, DISTS.index(dist), isa), ref), isa


@given(data=st.data(), dist=st.sampled_from(DISTS))
def test_triton_generator_bits_equal_reference(data, dist):
    _triton()
    n, c = data.draw(st.integers(1, 20)), data.draw(st.integers(1, 90))
    seed, layer = data.draw(st.integers(0, 2**32 - 1)), data.draw(st.integers(0, 2**31 - 1))
    row_scale = torch.rand(n) + 0.5
    assert torch.equal(seeded_weight(row_scale, c, seed, layer, dist, "triton"), reference((n, c), dist, seed, layer, row_scale))


BACKENDS = ["reference"] + (["cpu"] if CPU is not None else [])


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    data=st.data(), n=st.integers(1, 24), c=st.integers(1, 600), k=st.integers(1, 4), m=st.integers(0, 9),
    dist=st.sampled_from(["signed_constant", "uniform", "normal"]),
)  # fmt: skip
def test_forward_and_dx_against_float64(backend, data, n, c, k, m, dist):
    row_scale, masks, routes, x, bias, seed, layer = problem(data, n, c, k, m, dist)
    w = reference((n, c), dist, seed, layer, row_scale)
    x.requires_grad_(True)
    y = seeded_linear(x, masks, routes, seed=seed, layer=layer, dist=dist, row_scale=row_scale, bias=bias, backend=backend)
    ref = float64_linear(x.detach(), w, masks, routes, bias)
    assert y.shape == (m, n) and y.dtype == torch.float32
    if m:
        assert rel(y, ref) <= 1e-5
        dy = torch.randn(m, n)
        (dx,) = torch.autograd.grad(y, x, dy)
        dref = torch.stack([dy[i].double() @ (w.double() * masks[routes[i]]) for i in range(m)])
        assert rel(dx, dref) <= 1e-5


@given(data=st.data(), dist=st.sampled_from(["signed_constant", "uniform", "normal"]))
def test_triton_forward_and_dx_against_float64(data, dist):
    _triton()
    n, c, k, m = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 70)), data.draw(st.integers(1, 3)), data.draw(st.integers(0, 4))
    row_scale, masks, routes, x, bias, seed, layer = problem(data, n, c, k, m, dist)
    w = reference((n, c), dist, seed, layer, row_scale)
    x.requires_grad_(True)
    y = seeded_linear(x, masks, routes, seed=seed, layer=layer, dist=dist, row_scale=row_scale, bias=bias, backend="triton")
    if m:
        assert rel(y, float64_linear(x.detach(), w, masks, routes, bias)) <= 1e-5
        dy = torch.randn(m, n)
        (dx,) = torch.autograd.grad(y, x, dy)
        assert rel(dx, torch.stack([dy[i].double() @ (w.double() * masks[routes[i]]) for i in range(m)])) <= 1e-5


@pytest.mark.parametrize("dist", DISTS)
def test_in_kernel_weights_are_the_reference_bits(dist):
    """One-hot rows read single masked weights out of the kernels' own generation: exact equality."""
    n, c, seed, layer = 5, 36, 123, 4567
    row_scale = torch.rand(n) + 0.5
    masks = torch.rand(2, n, c) < 0.7
    w = reference((n, c), dist, seed, layer, row_scale)
    eye = torch.eye(c)
    backends = ["reference"] + (["cpu"] if CPU is not None else [])
    try:
        import triton  # noqa: F401

        backends.append("triton")
    except ImportError:
        pass
    for backend in backends:
        for t in range(2):
            y = seeded_linear(eye, masks, t, seed=seed, layer=layer, dist=dist, row_scale=row_scale, backend=backend)
            assert torch.equal(y, (w * masks[t]).T), backend
            e = torch.eye(n)  # and dx of one-hot output gradients reads single weights of the dX kernel
            xs = torch.zeros(n, c, requires_grad=True)
            out = seeded_linear(xs, masks, t, seed=seed, layer=layer, dist=dist, row_scale=row_scale, backend=backend)
            (dx,) = torch.autograd.grad(out, xs, e)
            assert torch.equal(dx, w * masks[t]), backend


@needs_cpu
def test_many_rows_and_rtl_linear_uses_the_seeded_kernel():
    torch.manual_seed(0)
    model = rtl.init.seeded_(rtl.convert(nn.Sequential(nn.Linear(40, 24)), 3), 5)
    layer = model[0]
    x = torch.randn(200, 40)  # more rows than one accumulator window (64)
    routes = torch.randint(0, 3, (x.shape[0],))
    layer.set_masks(torch.rand(3, 24, 40) < 0.5)
    expected = float64_linear(x, layer.weight.detach(), layer.get_masks(), routes, layer.bias)
    layer.weight.data.zero_()  # the stored tensor (not its version counter): the seeded path never reads it
    with torch.no_grad():
        assert rel(layer(x, routes), expected) <= 1e-5
        assert rel(layer(x[:5], routes[:5]), expected[:5]) <= 1e-5


def test_seeded_linear_bad_input():
    rs = torch.ones(4)
    masks = torch.ones(2, 4, 3, dtype=torch.bool)
    with pytest.raises(TypeError, match="float32"):
        seeded_linear(torch.randn(2, 3, dtype=torch.float64), masks, 0, seed=1, layer=2, dist="uniform", row_scale=rs)
    with pytest.raises(ValueError, match="seed"):
        seeded_linear(torch.randn(2, 3), masks, 0, seed=-1, layer=2, dist="uniform", row_scale=rs)
    with pytest.raises(ValueError, match="dist"):
        seeded_linear(torch.randn(2, 3), masks, 0, seed=1, layer=2, dist="laplace", row_scale=rs)
    with pytest.raises(ValueError, match="masks"):
        seeded_linear(torch.randn(2, 3), torch.ones(2, 4, 5, dtype=torch.bool), 0, seed=1, layer=2, dist="uniform", row_scale=rs)
    with pytest.raises(ValueError, match="routes"):
        seeded_linear(torch.randn(2, 3), masks, 2, seed=1, layer=2, dist="uniform", row_scale=rs)
    with pytest.raises(ValueError, match="backend"):
        seeded_linear(torch.randn(2, 3), masks, 0, seed=1, layer=2, dist="uniform", row_scale=rs, backend="cuda")


def test_packed_masks_accepted():
    rs = torch.ones(4)
    masks = torch.rand(2, 4, 3) < 0.5
    a = seeded_linear(torch.randn(5, 2, 3), masks, torch.tensor([0, 1, 1, 0, 1]), seed=1, layer=2, dist="uniform", row_scale=rs)
    b = seeded_linear(torch.randn(5, 2, 3), pack_masks(masks), torch.tensor([0, 1, 1, 0, 1]), seed=1, layer=2, dist="uniform", row_scale=rs)
    assert a.shape == b.shape == (5, 2, 4)


@needs_cpu
@given(
    data=st.data(), n=st.integers(1, 20), c=st.integers(1, 1100), k=st.integers(1, 4), m=st.integers(0, 70),
    dist=st.sampled_from(DISTS),
)  # fmt: skip
def test_cpu_kernels_on_every_isa_against_float64(data, n, c, k, m, dist):
    """Panels (several chunks, a column tail, a partial row block), register tiles of 1-3 rows, more
    rows than one accumulator window, empty tickets and K = 1, on every ISA's forward and dX."""
    row_scale, masks, routes, x, _, seed, layer = problem(data, n, c, k, m, dist)
    w = reference((n, c), dist, seed, layer, row_scale)
    plan = rtl.plan_routes(routes, k)
    bits = pack_masks(masks).bits
    dy = torch.randn(m, n)
    wm = [w.double() * masks[routes[i]] for i in range(m)]
    ref = torch.stack([x[i].double() @ wm[i].T for i in range(m)]) if m else torch.zeros(0, n).double()
    dref = torch.stack([dy[i].double() @ wm[i] for i in range(m)]) if m else torch.zeros(0, c).double()
    # float32 summation of c (or n) products: |error| <= (terms + 2) 2**-24 sum |products|
    y_tol = torch.stack([x[i].double().abs() @ wm[i].abs().T for i in range(m)]) * (c + 2) * 2.0**-24 if m else ref
    dx_tol = torch.stack([dy[i].double().abs() @ wm[i].abs() for i in range(m)]) * (n + 2) * 2.0**-24 if m else dref
    d = DISTS.index(dist)
    for isa in CPU.supported_isas()[:3]:
        y = CPU.seeded_forward(x, bits, plan.perm, plan.offsets, row_scale, None, seed, layer, d, isa)
        dx = CPU.seeded_grad_input(dy, bits, plan.perm, plan.offsets, row_scale, c, seed, layer, d, isa)
        assert y.shape == (m, n) and dx.shape == (m, c), isa
        assert bool(((y.double() - ref).abs() <= y_tol).all()) and bool(((dx.double() - dref).abs() <= dx_tol).all()), isa
