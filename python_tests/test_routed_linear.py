"""routed_linear against a float64 einsum oracle: forward, gradients, broadcasting, every backend on CPU."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from reference_math import TOLERANCE, linear_ref, rel_error

import rtl_kernels as rtl
from rtl_kernels.backends.registry import get_backend

# Every backend that can run on the CPU for real (the Triton interpreter has its own small tests).
CPU_BACKENDS = [b for b in rtl.available_backends("cpu") if b != "triton"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def supported(backend: str, dtype: torch.dtype, m: int, n: int, kin: int, k: int) -> bool:
    from rtl_kernels.backends.registry import Call

    be = get_backend(backend)
    return be.implements("linear") and be.supports(Call("linear", torch.device("cpu"), dtype, m, (n, kin), k))


@st.composite
def routing_case(draw, max_k=32):
    k = draw(st.integers(1, max_k))
    m = draw(st.integers(0, 40))
    kind = draw(st.sampled_from(["uniform", "one_ticket", "skewed", "some_empty"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if kind == "uniform":
        routes = torch.randint(0, k, (m,), generator=g)
    elif kind == "one_ticket":
        routes = torch.full((m,), draw(st.integers(0, k - 1)), dtype=torch.long)
    elif kind == "skewed":  # Zipf-like: ticket t with weight 1/(t+1)^2
        p = 1.0 / torch.arange(1, k + 1, dtype=torch.float64) ** 2
        routes = torch.multinomial(p, m, replacement=True, generator=g) if m else torch.zeros(0, dtype=torch.long)
    else:  # only even tickets used
        routes = 2 * torch.randint(0, (k + 1) // 2, (m,), generator=g)
    return k, routes, g


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@given(case=routing_case(), n=st.integers(1, 24), kin=st.integers(1, 40), density=st.floats(0, 1), use_bias=st.booleans())
def test_forward_and_backward_match_float64_oracle(backend, dtype, case, n, kin, density, use_bias):
    k, routes, g = case
    m = routes.numel()
    if not supported(backend, dtype, m, n, kin, k):
        return
    x = torch.randn(m, kin, generator=g).to(dtype).requires_grad_()
    w = torch.randn(n, kin, generator=g).to(dtype).requires_grad_()
    b = torch.randn(n, generator=g).to(dtype).requires_grad_() if use_bias else None
    masks = torch.rand(k, n, kin, generator=g) < density
    y = rtl.routed_linear(x, w, masks, routes, b, backend=backend)
    assert y.dtype == dtype and y.shape == (m, n)

    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if use_bias else None
    ref = linear_ref(x64, w64, masks, routes, b64)
    tol = TOLERANCE[dtype]
    assert rel_error(y, ref) <= tol

    dy = torch.randn(m, n, generator=g).to(dtype)
    y.backward(dy)
    ref.backward(dy.double())
    assert rel_error(x.grad, x64.grad) <= tol
    assert rel_error(w.grad, w64.grad) <= tol
    if use_bias:
        assert rel_error(b.grad, b64.grad) <= tol


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_weight_gradient_is_sum_of_masked_per_ticket_outer_products(backend):
    torch.manual_seed(1)
    k, m, n, kin = 4, 17, 6, 9
    x = torch.randn(m, kin, dtype=torch.float64)
    w = torch.randn(n, kin, dtype=torch.float64, requires_grad=True)
    masks = torch.rand(k, n, kin) < 0.5
    routes = torch.randint(0, k, (m,))
    if not supported(backend, torch.float64, m, n, kin, k):
        pytest.skip(f"{backend} does not take float64")
    dy = torch.randn(m, n, dtype=torch.float64)
    rtl.routed_linear(x, w, masks, routes, backend=backend).backward(dy)
    expected = sum(masks[t] * (dy[routes == t].T @ x[routes == t]) for t in range(k))
    torch.testing.assert_close(w.grad, expected)


def test_gradcheck_float64():
    torch.manual_seed(0)
    x = torch.randn(6, 2, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    masks = torch.rand(3, 4, 5) < 0.6
    routes = torch.tensor([0, 2, 1, 2, 0, 0])
    assert torch.autograd.gradcheck(lambda x, w, b: rtl.routed_linear(x, w, masks, routes, b), (x, w, b))


def test_prefix_broadcast_routes_every_token_of_a_sample_to_its_ticket():
    torch.manual_seed(0)
    b_, t_, c = 3, 4, 5
    x = torch.randn(b_, t_, c)
    w = torch.randn(7, c)
    masks = torch.rand(3, 7, c) < 0.5
    routes = torch.tensor([2, 0, 1])
    y = rtl.routed_linear(x, w, masks, routes)
    assert y.shape == (b_, t_, 7)
    for s in range(b_):
        torch.testing.assert_close(y[s], x[s] @ (w * masks[routes[s]]).T)
    # full-shape routes and a scalar route follow the same rule
    full = routes[:, None].expand(b_, t_)
    torch.testing.assert_close(rtl.routed_linear(x, w, masks, full), y)
    torch.testing.assert_close(rtl.routed_linear(x, w, masks, 1), x @ (w * masks[1]).T)
    torch.testing.assert_close(rtl.routed_linear(x, w, masks, torch.tensor(1)), x @ (w * masks[1]).T)


def test_one_dimensional_input_and_empty_batch():
    w = torch.randn(3, 4)
    masks = torch.ones(2, 3, 4, dtype=torch.bool)
    x = torch.randn(4)
    torch.testing.assert_close(rtl.routed_linear(x, w, masks, 1), w @ x)
    empty = torch.randn(0, 4, requires_grad=True)
    y = rtl.routed_linear(empty, w, masks, torch.zeros(0, dtype=torch.long))
    assert y.shape == (0, 3)
    y.sum().backward()
    assert empty.grad.shape == (0, 4)


def test_k1_all_ones_equals_nn_linear():
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 5)
    x = torch.randn(9, 6)
    y = rtl.routed_linear(x, lin.weight, torch.ones(1, 5, 6, dtype=torch.bool), 0, lin.bias)
    torch.testing.assert_close(y, lin(x))


def test_packed_masks_and_bool_masks_give_the_same_result():
    torch.manual_seed(0)
    x, w = torch.randn(8, 6), torch.randn(5, 6)
    masks = torch.rand(4, 5, 6) < 0.5
    routes = torch.randint(0, 4, (8,))
    torch.testing.assert_close(rtl.routed_linear(x, w, masks, routes), rtl.routed_linear(x, w, rtl.pack_masks(masks), routes))


def test_routing_plan_can_be_passed_instead_of_routes():
    torch.manual_seed(0)
    x, w = torch.randn(4, 3, 6), torch.randn(5, 6)
    masks = torch.rand(4, 5, 6) < 0.5
    routes = torch.tensor([3, 0, 3, 1])
    plan = rtl.plan_routes(routes, 4)
    torch.testing.assert_close(rtl.routed_linear(x, w, masks, plan), rtl.routed_linear(x, w, masks, routes))


def test_reference_backend_is_always_available_and_auto_resolves():
    assert "reference" in rtl.available_backends("cpu")
    x, w = torch.randn(2, 3), torch.randn(4, 3)
    rtl.routed_linear(x, w, torch.ones(1, 4, 3, dtype=torch.bool), 0, backend="reference")
