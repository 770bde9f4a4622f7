"""masked_delta_linear on every backend against a float64 einsum oracle, forward and backward.

Triton runs on ``DEVICE`` (CUDA where present, else the CPU interpreter conftest enables); the
other backends and the oracle stay on the CPU, and results are compared there.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from reference_math import TOLERANCE, rel_error

import rtl_kernels as rtl
from rtl_kernels.backends import masked_delta_backends
from rtl_kernels.ops.masked_delta import masked_delta_linear

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def device_of(backend: str) -> torch.device:
    """Where ``backend``'s inputs live: Triton on ``DEVICE``, the others on the CPU."""
    return DEVICE if backend == "triton" else torch.device("cpu")


def on(backend: str, *tensors):
    """``tensors`` moved to ``device_of(backend)`` (None stays None)."""
    dev = device_of(backend)
    moved = tuple(None if t is None else t.to(dev) for t in tensors)
    return moved if len(moved) > 1 else moved[0]


def _backends() -> list[str]:
    names = ("reference", "cpu", "triton")
    return [name for name in names if masked_delta_backends._usable(name, torch.zeros(1, 1, device=device_of(name))) is not None]


def _shapes(backend: str) -> dict:
    """Hypothesis ranges; the Triton interpreter is slow, so its cases stay tiny."""
    if backend == "triton":
        return {"m": st.integers(0, 20), "n": st.integers(1, 40), "kin": st.integers(1, 40), "k": st.integers(1, 3)}
    return {"m": st.integers(0, 40), "n": st.integers(1, 24), "kin": st.integers(1, 70), "k": st.integers(1, 5)}


BACKENDS = _backends()


def oracle(x, base, delta, masks, scales, routes, bias):
    """``y[m] = x[m] @ (base + s[r] · (delta ⊙ M[r])).T + b[r]`` in float64 (delta selected, never multiplied by the mask)."""
    d = torch.where(masks[routes], delta.double().unsqueeze(0), torch.zeros((), dtype=torch.float64))
    w = base.double().unsqueeze(0) + scales.double()[routes][:, None, None] * d
    y = torch.einsum("mi,mni->mn", x.double(), w)
    if bias is not None:
        y = y + (bias.double() if bias.dim() == 1 else bias.double()[routes])
    return y


def _case(m, n, kin, k, density, dtype, seed, bias_kind="ticket", empty_ticket=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, kin, generator=g)
    base = torch.randn(n, kin, generator=g)
    delta = torch.randn(n, kin, generator=g)
    masks = torch.rand(k, n, kin, generator=g) < density
    if empty_ticket:
        masks[k - 1] = False
    scales = torch.rand(k, generator=g) + 0.5
    routes = torch.randint(0, k, (m,), generator=g)
    bias = {"none": None, "shared": torch.randn(n, generator=g), "ticket": torch.randn(k, n, generator=g)}[bias_kind]
    cast = (lambda t: t.to(dtype)) if dtype != torch.float32 else (lambda t: t)
    return cast(x), cast(base), cast(delta), masks, scales.to(torch.float32), routes, None if bias is None else cast(bias)


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    data=st.data(),
    density=st.sampled_from([0.0, 0.3, 1.0]),
    bias_kind=st.sampled_from(["none", "shared", "ticket"]),
    seed=st.integers(0, 2**16),
)
def test_forward_and_backward_match_float64(backend, data, density, bias_kind, seed):
    shapes = _shapes(backend)
    m, n, kin, k = (data.draw(shapes[name], label=name) for name in ("m", "n", "kin", "k"))
    x, base, delta, masks, scales, routes, bias = _case(m, n, kin, k, density, torch.float32, seed, bias_kind)
    leaves = [on(backend, t.clone()).requires_grad_(True) if t is not None else None for t in (x, delta, scales, bias)]
    xg, dg, sg, bg = leaves
    base_b, masks_b, routes_b = on(backend, base, masks, routes)
    y = masked_delta_linear(xg, base_b, dg, masks_b, sg, routes_b, bg, backend=backend)
    ref = oracle(x, base, delta, masks, scales, routes, bias)
    assert y.dtype == torch.float32 and y.shape == (m, n)
    assert rel_error(y.cpu(), ref) <= TOLERANCE[torch.float32]
    dy = torch.randn(m, n)
    y.backward(on(backend, dy))
    refs = [t.double().clone().requires_grad_(True) if t is not None else None for t in (x, delta, scales, bias)]
    oracle(refs[0], base, refs[1], masks, refs[2], routes, refs[3]).backward(dy.double())
    for got, want in zip(leaves, refs):
        if got is not None:
            assert rel_error(got.grad.cpu(), want.grad) <= TOLERANCE[torch.float32]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_values_outside_the_mask_are_never_read(backend, dtype):
    if backend == "triton" and dtype == torch.bfloat16 and INTERPRETED:
        pytest.skip("the Triton CPU interpreter computes bfloat16 wrongly (as for the routed kernels)")
    x, base, delta, masks, scales, routes, bias = _case(9, 5, 37, 3, 0.4, dtype, 3)
    poisoned = torch.where(masks.any(0), delta, torch.full_like(delta, float("nan")))
    dg = on(backend, poisoned.clone()).requires_grad_(True)
    sg = on(backend, scales.clone()).requires_grad_(True)
    xg = on(backend, x.clone()).requires_grad_(True)
    base_b, masks_b, routes_b, bias_b = on(backend, base, masks, routes, bias)
    y = masked_delta_linear(xg, base_b, dg, masks_b, sg, routes_b, bias_b, backend=backend)
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(xg.grad).all() and torch.isfinite(sg.grad).all()
    assert torch.isfinite(dg.grad.cpu()[masks.any(0)]).all()
    if backend == "cpu":  # the fused kernel itself, on every ISA, with NaN in delta outside every mask (and Inf)
        from rtl_kernels.backends import extension
        from rtl_kernels.routing_plans.plan import make_plan

        ext = extension.load_cpu()
        plan = make_plan(routes, 3)
        bits = rtl.pack_masks(masks).bits
        inf = torch.where(masks.any(0), delta, torch.full_like(delta, float("inf")))
        want = oracle(x, base, delta, masks, scales, routes, bias)
        for isa in ext.supported_isas():
            for bad in (poisoned, inf):
                got = ext.delta_forward(x, base, bad, bits, scales, plan.perm, plan.offsets, bias, isa)
                assert got.dtype == dtype and torch.isfinite(got).all()
                assert rel_error(got, want) <= TOLERANCE[dtype]


@pytest.mark.parametrize("backend", BACKENDS)
def test_k1_empty_tickets_empty_batch_and_int_routes(backend):
    x, base, delta, masks, scales, routes, bias = _case(6, 4, 33, 3, 0.5, torch.float32, 5, empty_ticket=True)
    routes[:] = 2  # every row on the empty ticket: the base alone
    xb, bb, db, mb, sb, rb, biasb = on(backend, x, base, delta, masks, scales, routes, bias)
    y = masked_delta_linear(xb, bb, db, mb, sb, rb, biasb, backend=backend)
    torch.testing.assert_close(y.cpu(), x @ base.T + bias[2])
    y1 = masked_delta_linear(xb, bb, db, mb[:1], sb[:1], 0, biasb[:1], backend=backend)
    assert rel_error(y1.cpu(), oracle(x, base, delta, masks[:1], scales[:1], torch.zeros(6, dtype=torch.long), bias[:1])) <= 1e-5
    empty = masked_delta_linear(xb[:0], bb, db, mb, sb, rb[:0], biasb, backend=backend)
    assert empty.shape == (0, 4)
    x3 = xb.reshape(2, 3, 33)  # routes per sample, broadcast over the second dim
    r2 = torch.tensor([0, 1])
    got = masked_delta_linear(x3, bb, db, mb, sb, on(backend, r2), biasb, backend=backend)
    want = oracle(x, base, delta, masks, scales, r2.repeat_interleave(3), bias).reshape(2, 3, 4)
    assert rel_error(got.cpu(), want) <= 1e-5


def test_bad_input_names_the_argument():
    x, base, delta, masks, scales, routes, _ = _case(4, 3, 8, 2, 0.5, torch.float32, 0)
    with pytest.raises(ValueError, match="delta: expected the shape of base"):
        masked_delta_linear(x, base, delta[:, :4], masks, scales, routes)
    with pytest.raises(ValueError, match=r"scales: expected shape \[2\]"):
        masked_delta_linear(x, base, delta, masks, scales[:1], routes)
    with pytest.raises(ValueError, match="bias: expected shape"):
        masked_delta_linear(x, base, delta, masks, scales, routes, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="routes: expected ticket ids in"):
        masked_delta_linear(x, base, delta, masks, scales, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="x: expected shape"):
        masked_delta_linear(x[:, :5], base, delta, masks, scales, routes)
    with pytest.raises(ValueError, match="backend: expected one of"):
        masked_delta_linear(x, base, delta, masks, scales, routes, backend="cuda")
    with pytest.raises(TypeError, match="delta: expected dtype"):
        masked_delta_linear(x, base, delta.double(), masks, scales, routes)


def test_layer_routes_through_the_model_context():
    layer = rtl.nn.RTLDeltaLinear(10, 4, 3)
    masks = torch.rand(3, 4, 10) < 0.5
    layer.set_merge(torch.randn(4, 10), masks, torch.tensor([1.0, 0.5, 2.0]))
    x, routes = torch.randn(5, 10), torch.tensor([2, 0, 1, 1, 0])
    with rtl.routing(layer, routes):
        y = layer(x)
    for t in range(3):
        torch.testing.assert_close(y[routes == t], layer.to_dense(t)(x[routes == t]))


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the C++ extension is not built here")
@pytest.mark.parametrize("m", [3, 130])  # the fused kernel and the materialise + torch.mm path
def test_cpu_kernels_on_every_isa_this_machine_runs(m):
    from rtl_kernels.backends import extension
    from rtl_kernels.routing_plans.plan import make_plan

    ext = extension.load_cpu()
    x, base, delta, masks, scales, routes, _ = _case(m, 19, 77, 2, 0.4, torch.float32, 11)
    plan = make_plan(routes, 2)
    bits = rtl.pack_masks(masks).bits
    ref = oracle(x, base, delta, masks, scales, routes, None)
    for isa in ext.supported_isas():
        for run in (ext.delta_forward, ext.delta_forward_grouped):
            assert rel_error(run(x, base, delta, bits, scales, plan.perm, plan.offsets, None, isa), ref) <= 1e-5
            for bias in (torch.randn(19), torch.randn(2, 19)):
                want = oracle(x, base, delta, masks, scales, routes, bias)
                assert rel_error(run(x, base, delta, bits, scales, plan.perm, plan.offsets, bias, isa), want) <= 1e-5
        w1 = ext.delta_materialize(base, delta, bits, scales, 1, isa)
        torch.testing.assert_close(w1, base + scales[1] * torch.where(masks[1], delta, torch.zeros(())))
        g, out = torch.randn(19, 77, generator=torch.Generator().manual_seed(12)), torch.zeros(19, 77)  # fixed: independent of test order
        ext.delta_masked_axpy(out, g, base, bits, scales, 0, 0.5, isa)
        torch.testing.assert_close(out, 0.5 * torch.where(masks[0], g, torch.zeros(())))
        dot = ext.delta_masked_dot(delta, g, bits, scales, 1, isa)
        assert dot == pytest.approx(float((torch.where(masks[1], delta, torch.zeros(())) * g).double().sum()), rel=1e-5)
    with pytest.raises(ValueError, match="ticket: expected a value in"):
        ext.delta_materialize(base, delta, bits, scales, 2)


def test_the_op_passes_torch_library_opcheck():
    from rtl_kernels.routing_plans.plan import make_plan

    x, base, delta, masks, scales, routes, bias = _case(5, 3, 9, 2, 0.5, torch.float32, 2)
    plan = make_plan(routes, 2)
    bits = rtl.pack_masks(masks).bits
    args = (
        x.requires_grad_(),
        base,
        delta.requires_grad_(),
        bits,
        scales.requires_grad_(),
        plan.routes,
        plan.perm,
        plan.offsets,
        bias,
        "reference",
    )
    torch.library.opcheck(torch.ops.rtl_kernels.masked_delta_linear.default, args)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_within_the_contract_tolerance(backend, dtype):
    if backend == "cpu" and dtype == torch.float16:
        pytest.skip("the CPU kernel is float32 and bfloat16 only; 'auto' falls back to the reference for float16")
    if backend == "triton" and dtype == torch.bfloat16 and INTERPRETED:
        pytest.skip("the Triton CPU interpreter computes bfloat16 wrongly (as for the routed kernels)")
    x, base, delta, masks, scales, routes, bias = _case(10, 12, 40, 3, 0.5, dtype, 4)
    args = on(backend, x, base, delta, masks, scales, routes, bias)
    y = masked_delta_linear(*args, backend=backend)
    assert y.dtype == dtype
    assert rel_error(y.cpu(), oracle(x, base, delta, masks, scales, routes, bias)) <= TOLERANCE[dtype]
    auto = masked_delta_linear(*args)
    assert rel_error(auto.cpu(), oracle(x, base, delta, masks, scales, routes, bias)) <= TOLERANCE[dtype]


def test_layer_checks_its_input_once_and_names_it():
    layer = rtl.nn.RTLDeltaLinear(10, 4, 2)
    with pytest.raises(ValueError, match=r"x: expected shape \[..., 10\]"):
        layer(torch.randn(3, 5), 0)
    with pytest.raises(TypeError, match="x: expected dtype"):
        layer(torch.randn(3, 10, dtype=torch.float64).to(torch.int64), 0)
    with pytest.raises(ValueError, match="routes: expected ticket ids"):
        layer(torch.randn(3, 10), torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias", [True, False])
def test_serving_fast_path_equals_the_checked_path_and_sees_parameter_updates(backend, bias):
    """Without autograd, a layer given a model-wide plan skips re-planning and the op's dispatch:
    same output as with autograd on (the checked path), and an in-place update is seen at once."""
    torch.manual_seed(0)
    layer = rtl.nn.RTLDeltaLinear(12, 5, 3, bias=bias)
    layer.backend = backend
    layer.set_merge(torch.randn(5, 12), torch.rand(3, 5, 12) < 0.5, torch.tensor([1.0, 0.5, 2.0]), torch.randn(5) if bias else None)
    layer.to(device_of(backend))
    x, routes = on(backend, torch.randn(7, 12), torch.tensor([2, 0, 1, 1, 0, 2, 2]))
    plan = rtl.plan_routes(routes, 3)
    checked = layer(x, plan)  # grad enabled, parameters require grad: the checked op path
    assert checked.requires_grad
    with torch.no_grad():
        fast = layer(x, plan)
        torch.testing.assert_close(fast, checked.detach())
        torch.testing.assert_close(layer(x, routes), fast)  # a tensor of routes: planned in the layer
        layer.delta.mul_(2.0)
        layer.scales[1] = 3.0
        if bias:
            layer.bias_delta.add_(1.0)
        updated = layer(x, plan)
    want = torch.cat([layer.to_dense(int(t))(x[i : i + 1]) for i, t in enumerate(routes)])
    torch.testing.assert_close(updated, want.detach())
    assert not torch.allclose(updated, fast)


CPU_BF16 = pytest.mark.skipif("cpu" not in BACKENDS, reason="the C++ extension is not built here")


@CPU_BF16
@given(
    data=st.data(),
    density=st.sampled_from([0.0, 0.3, 1.0]),
    bias_kind=st.sampled_from(["none", "shared", "ticket"]),
    empty_ticket=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_bf16_forward_on_every_isa_matches_float64(data, density, bias_kind, empty_ticket, seed):
    """The fused bf16 forward (every ISA this machine runs, and the backend's own path choice,
    grouped for large batches) against the float64 oracle on the bf16 inputs."""
    from rtl_kernels.backends import extension
    from rtl_kernels.routing_plans.plan import make_plan

    shapes = _shapes("cpu")
    m = data.draw(st.one_of(shapes["m"], st.just(130)), label="m")  # 130: past the direct limit, the grouped path
    n, kin, k = (data.draw(shapes[name], label=name) for name in ("n", "kin", "k"))
    x, base, delta, masks, scales, routes, bias = _case(m, n, kin, k, density, torch.bfloat16, seed, bias_kind, empty_ticket)
    ref = oracle(x, base, delta, masks, scales, routes, bias)
    ext = extension.load_cpu()
    plan = make_plan(routes, k)
    bits = rtl.pack_masks(masks).bits
    for isa in ext.supported_isas():
        got = ext.delta_forward(x, base, delta, bits, scales, plan.perm, plan.offsets, bias, isa)
        assert got.dtype == torch.bfloat16 and got.shape == (m, n)
        assert rel_error(got, ref) <= TOLERANCE[torch.bfloat16]
    y = masked_delta_linear(x, base, delta, masks, scales, routes, bias, backend="cpu")
    assert y.dtype == torch.bfloat16 and y.shape == (m, n)
    assert rel_error(y, ref) <= TOLERANCE[torch.bfloat16]


@CPU_BF16
def test_bf16_forward_rounds_as_the_reference_does():
    """float32 accumulation rounded once to bf16: the reference's bf16 output, bit for bit or within
    one bf16 step (summation order differs)."""
    x, base, delta, masks, scales, routes, bias = _case(7, 33, 100, 3, 0.5, torch.bfloat16, 8)
    got = masked_delta_linear(x, base, delta, masks, scales, routes, bias, backend="cpu")
    want = masked_delta_linear(x, base, delta, masks, scales, routes, bias, backend="reference")
    torch.testing.assert_close(got, want, rtol=2**-7, atol=1e-2)


@CPU_BF16
def test_bf16_k1_empty_tickets_empty_batch_and_int_routes():
    x, base, delta, masks, scales, routes, bias = _case(6, 4, 33, 3, 0.5, torch.bfloat16, 5, empty_ticket=True)
    tol = TOLERANCE[torch.bfloat16]
    routes[:] = 2  # every row on the empty ticket: the base alone
    y = masked_delta_linear(x, base, delta, masks, scales, routes, bias, backend="cpu")
    assert y.dtype == torch.bfloat16
    assert rel_error(y, x.double() @ base.double().T + bias.double()[2]) <= tol
    y1 = masked_delta_linear(x, base, delta, masks[:1], scales[:1], 0, bias[:1], backend="cpu")
    assert rel_error(y1, oracle(x, base, delta, masks[:1], scales[:1], torch.zeros(6, dtype=torch.long), bias[:1])) <= tol
    empty = masked_delta_linear(x[:0], base, delta, masks, scales, routes[:0], bias, backend="cpu")
    assert empty.shape == (0, 4) and empty.dtype == torch.bfloat16
    x3 = x.reshape(2, 3, 33)  # routes per sample, broadcast over the second dim
    r2 = torch.tensor([0, 1])
    got = masked_delta_linear(x3, base, delta, masks, scales, r2, bias, backend="cpu")
    want = oracle(x, base, delta, masks, scales, r2.repeat_interleave(3), bias).reshape(2, 3, 4)
    assert rel_error(got, want) <= tol


@CPU_BF16
def test_bf16_kernel_rejects_mixed_dtypes_by_name():
    from rtl_kernels.backends import extension
    from rtl_kernels.routing_plans.plan import make_plan

    ext = extension.load_cpu()
    x, base, delta, masks, scales, routes, bias = _case(4, 3, 8, 2, 0.5, torch.bfloat16, 0)
    plan = make_plan(routes, 2)
    bits = rtl.pack_masks(masks).bits
    with pytest.raises(TypeError, match="delta: expected dtype"):
        ext.delta_forward(x, base, delta.float(), bits, scales, plan.perm, plan.offsets, bias)
    with pytest.raises(TypeError, match="x: expected dtype"):
        ext.delta_forward(x.float(), base, delta, bits, scales, plan.perm, plan.offsets, bias)
    with pytest.raises(ValueError, match="bias: expected a contiguous bfloat16"):
        ext.delta_forward(x, base, delta, bits, scales, plan.perm, plan.offsets, bias.float())
    with pytest.raises(TypeError, match="scales: expected dtype"):
        ext.delta_forward(x, base, delta, bits, scales.bfloat16(), plan.perm, plan.offsets, bias)
    with pytest.raises(TypeError, match="base: expected dtype float32, got"):  # the grouped path stays float32
        ext.delta_forward_grouped(x, base, delta, bits, scales, plan.perm, plan.offsets, bias)


@CPU_BF16
@pytest.mark.parametrize("m", [5, 130])  # the fused forward and the grouped one
def test_bf16_autograd_end_to_end(m):
    """bf16 leaves (scales float32) through the CPU backend: forward by the kernel, backward by the
    reference; every gradient against float64 autograd of the oracle."""
    x, base, delta, masks, scales, routes, bias = _case(m, 12, 40, 3, 0.5, torch.bfloat16, 6)
    leaves = [t.clone().requires_grad_(True) for t in (x, base, delta, scales, bias)]
    y = masked_delta_linear(leaves[0], leaves[1], leaves[2], masks, leaves[3], routes, leaves[4], backend="cpu")
    assert y.dtype == torch.bfloat16
    dy = torch.randn(m, 12, generator=torch.Generator().manual_seed(7)).bfloat16()
    y.backward(dy)
    refs = [t.double().clone().requires_grad_(True) for t in (x, base, delta, scales, bias)]
    oracle(refs[0], refs[1], refs[2], masks, refs[3], routes, refs[4]).backward(dy.double())
    for got, want in zip(leaves, refs):
        assert got.grad is not None and got.grad.dtype == got.dtype
        assert rel_error(got.grad, want.grad) <= TOLERANCE[torch.bfloat16]
