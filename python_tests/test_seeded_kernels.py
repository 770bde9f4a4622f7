"""Seeded-weight kernels (weight regenerated, never read): same bits on reference, cpu and triton; float64 checks.

Triton calls run on ``DEVICE`` (CUDA where present, else the CPU interpreter conftest enables);
references stay on the CPU and results are compared there.
"""

import importlib.util

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import rtl_kernels as rtl
from rtl_kernels.backends.extension import load_cpu
from rtl_kernels.init.philox import DISTS, generate
from rtl_kernels.masks.packed import pack_masks
from rtl_kernels.ops.seeded import seeded_linear, seeded_linear_t, seeded_weight

CPU = load_cpu()
needs_cpu = pytest.mark.skipif(CPU is None, reason="CPU extension not built")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def on(backend, *tensors):
    """``tensors`` on the device ``backend`` runs on (Triton: ``DEVICE``; the others: the CPU); None stays None."""
    dev = DEVICE if backend == "triton" else torch.device("cpu")
    moved = tuple(None if t is None else t.to(dev) for t in tensors)
    return moved if len(moved) > 1 else moved[0]


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
    got = seeded_weight(on("triton", row_scale), c, seed, layer, dist, "triton").cpu()
    assert torch.equal(got, reference((n, c), dist, seed, layer, row_scale))


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
    xd = on("triton", x).requires_grad_(True)
    rs, md, rd, bd = on("triton", row_scale, masks, routes, bias)
    y = seeded_linear(xd, md, rd, seed=seed, layer=layer, dist=dist, row_scale=rs, bias=bd, backend="triton")
    if m:
        assert rel(y.cpu(), float64_linear(x.detach(), w, masks, routes, bias)) <= 1e-5
        dy = torch.randn(m, n)
        (dx,) = torch.autograd.grad(y, xd, on("triton", dy))
        dx = dx.cpu()
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
        eye_b, masks_b, scale_b = on(backend, eye, masks, row_scale)
        for t in range(2):
            y = seeded_linear(eye_b, masks_b, t, seed=seed, layer=layer, dist=dist, row_scale=scale_b, backend=backend)
            assert torch.equal(y.cpu(), (w * masks[t]).T), backend
            e = on(backend, torch.eye(n))  # and dx of one-hot output gradients reads single weights of the dX kernel
            xs = on(backend, torch.zeros(n, c)).requires_grad_(True)
            out = seeded_linear(xs, masks_b, t, seed=seed, layer=layer, dist=dist, row_scale=scale_b, backend=backend)
            (dx,) = torch.autograd.grad(out, xs, e)
            assert torch.equal(dx.cpu(), w * masks[t]), backend


@needs_cpu
def test_many_rows_and_rtl_linear_uses_the_seeded_kernel():
    torch.manual_seed(0)
    model = rtl.init.seeded_(rtl.convert(nn.Sequential(nn.Linear(40, 24)), 3), 5)
    layer = model[0]
    x = torch.randn(200, 40)  # the large-batch path (W generated once, then the stored-weight GEMM); 5 rows: the panel kernel
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_seeded_attention_regenerates_its_projection_rows(backend):
    """RTLMultiheadAttention's q/k/v projections run the seeded kernel on row slices (row0 = 0, E, 2E)
    of the packed in_proj weight, with per-projection scales (scale_qk_), self- and cross-attention."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

    torch.manual_seed(0)
    model = rtl.init.scale_qk_(rtl.init.seeded_(rtl.convert(Block(), 3), 5, dist="normal"))
    attn = model.attn
    attn.backend = attn.out_proj.backend = backend
    attn.set_masks(torch.rand(3, 48, 16) < 0.6)
    x, kv, routes = torch.randn(2, 5, 16), torch.randn(2, 7, 16), torch.tensor([2, 0])
    with torch.no_grad():
        expected = [
            torch.cat([attn.to_dense(int(t))(x[b : b + 1], k[b : b + 1], k[b : b + 1])[0] for b, t in enumerate(routes)]) for k in (x, kv)
        ]
        attn.in_proj_weight.data.zero_()  # not the version counter: the seeded path must not read the tensor
        for k, e in zip((x, kv), expected):
            got = attn(x, k, k, routes=routes)[0]
            assert rel(got, e.double()) <= 1e-5


def within_fp32_bound(got, ref, bound, terms):
    """|got − ref| <= (terms + 2) 2**-24 · bound (float32 summation of ``terms`` products whose |sum| is ``bound``)."""
    return bool(((got.detach().double() - ref).abs() <= bound * (terms + 2) * 2.0**-24).all())


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    data=st.data(), n=st.integers(1, 24), c=st.integers(1, 300), k=st.integers(1, 4), m=st.integers(0, 9),
    dist=st.sampled_from(DISTS),
)  # fmt: skip
def test_transposed_op_for_conv1d_weights_against_float64(backend, data, n, c, k, m, dist):
    """``seeded_linear_t``: a weight stored ``[in, out]`` (HF Conv1D) with per-column scales, masks over ``[in, out]``."""
    _, masks, routes, _, _, seed, layer = problem(data, c, n, k, m, dist)  # masks [k, c, n]
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    x, col_scale = torch.randn(m, c, generator=g), torch.rand(n, generator=g) + 0.25
    bias = torch.randn(n, generator=g) if data.draw(st.booleans()) else None
    w = generate((c, n), dist, seed, layer, 1.0) * col_scale[None, :]
    x.requires_grad_(True)
    y = seeded_linear_t(x, masks, routes, seed=seed, layer=layer, dist=dist, col_scale=col_scale, bias=bias, backend=backend)
    assert y.shape == (m, n) and y.dtype == torch.float32
    if m:
        wm = [w.double() * masks[routes[i]] for i in range(m)]
        ref = torch.stack([x[i].detach().double() @ wm[i] for i in range(m)]) + (bias.double() if bias is not None else 0.0)
        bound = torch.stack([x[i].detach().double().abs() @ wm[i].abs() for i in range(m)]) + (
            bias.double().abs() if bias is not None else 0.0
        )
        assert within_fp32_bound(y, ref, bound, c + 1)
        dy = torch.randn(m, n)
        (dx,) = torch.autograd.grad(y, x, dy)
        dref = torch.stack([dy[i].double() @ wm[i].T for i in range(m)])
        assert within_fp32_bound(dx, dref, torch.stack([dy[i].double().abs() @ wm[i].abs().T for i in range(m)]), n + 1)


def test_triton_transposed_op_and_one_hot_weights():
    _triton()
    c, n, seed, layer = 9, 5, 77, 88
    col_scale = torch.rand(n) + 0.5
    masks = torch.rand(2, c, n) < 0.7
    w = generate((c, n), "normal", seed, layer, 1.0) * col_scale[None, :]
    for backend in [*BACKENDS, "triton"]:
        eye_b, masks_b, scale_b = on(backend, torch.eye(c), masks, col_scale)
        for t in range(2):  # one-hot rows read single weights: exact
            y = seeded_linear_t(eye_b, masks_b, t, seed=seed, layer=layer, dist="normal", col_scale=scale_b, backend=backend)
            assert torch.equal(y.cpu(), w * masks[t]), backend
        x = on(backend, torch.randn(3, c)).requires_grad_(True)
        routes = torch.tensor([1, 0, 1])
        y = seeded_linear_t(x, masks_b, on(backend, routes), seed=seed, layer=layer, dist="normal", col_scale=scale_b, backend=backend)
        (dx,) = torch.autograd.grad(y.sum(), x)
        assert rel(dx.cpu(), torch.stack([(w.double() * masks[r]).sum(1) for r in routes])) <= 1e-5, backend


def test_seeded_conv1d_layer_regenerates_its_weight():
    from rtl_kernels.nn.hf_conv1d import RTLConv1DLinear

    torch.manual_seed(0)
    model = rtl.init.seeded_(nn.Sequential(RTLConv1DLinear(12, 20, 3)), 4, dist="uniform")
    layer = model[0]
    with torch.no_grad():
        layer.bias.copy_(torch.randn(12))
    layer.set_masks(torch.rand(3, 20, 12) < 0.5)
    x, routes = torch.randn(6, 20), torch.tensor([0, 2, 2, 1, 0, 2])
    m = layer.get_masks()
    expected = torch.stack([x[i].double() @ (layer.weight.double() * m[routes[i]]) for i in range(6)]) + layer.bias.double()
    layer.weight.data.zero_()  # not the version counter: the seeded path must not read the tensor
    with torch.no_grad():
        assert rel(layer(x, routes), expected) <= 1e-5


@pytest.mark.parametrize("dist", DISTS)
def test_row_slices_are_the_reference_rows(dist):
    """``row0``: a call computes rows [row0, row0 + N) of a larger seeded tensor (one-hot rows: exact), on every backend."""
    rows, c, seed, layer, r0 = 12, 37, 5, 6, 5
    scale = torch.rand(rows) + 0.5
    w = (generate((rows, c), dist, seed, layer, 1.0) * scale[:, None])[r0 : r0 + 4]
    masks = torch.rand(2, 4, c) < 0.8
    backends = BACKENDS + (["triton"] if importlib.util.find_spec("triton") else [])
    for backend in backends:
        eye_b, masks_b, scale_b = on(backend, torch.eye(c), masks, scale[r0 : r0 + 4])
        kw = {"seed": seed, "layer": layer, "dist": dist, "row_scale": scale_b, "backend": backend, "row0": r0}
        assert torch.equal(seeded_linear(eye_b, masks_b, 1, **kw).cpu(), (w * masks[1]).T), backend
        xs = on(backend, torch.zeros(4, c)).requires_grad_(True)
        (dx,) = torch.autograd.grad(seeded_linear(xs, masks_b, 1, **kw), xs, on(backend, torch.eye(4)))
        assert torch.equal(dx.cpu(), w * masks[1]), backend
    with pytest.raises(ValueError, match="row0"):
        seeded_linear(eye_b, masks_b, 1, **{**kw, "row0": -1})
