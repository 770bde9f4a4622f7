"""routed_conv2d against a per-image float64 F.conv2d oracle: forward, gradients, conv options, formats."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from reference_math import TOLERANCE, conv_ref, rel_error

import rtl_kernels as rtl
from rtl_kernels.backends.registry import Call, get_backend

CPU_BACKENDS = [b for b in rtl.available_backends("cpu") if b != "triton" and get_backend(b).implements("conv2d")]


@st.composite
def conv_case(draw):
    groups = draw(st.integers(1, 3))
    cin = groups * draw(st.integers(1, 3))
    cout = groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    h = draw(st.integers(dilation[0] * (kh - 1) + 1, 8))
    w = draw(st.integers(dilation[1] * (kw - 1) + 1, 8))
    batch = draw(st.integers(0, 6))
    k = draw(st.integers(1, 32))
    seed = draw(st.integers(0, 2**31 - 1))
    return dict(
        groups=groups,
        cin=cin,
        cout=cout,
        kernel=(kh, kw),
        stride=stride,
        dilation=dilation,
        padding=padding,
        hw=(h, w),
        batch=batch,
        k=k,
        seed=seed,
    )


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@given(case=conv_case(), channels_last=st.booleans(), use_bias=st.booleans(), one_ticket=st.booleans())
def test_forward_and_backward_match_float64_oracle(backend, dtype, case, channels_last, use_bias, one_ticket):
    g = torch.Generator().manual_seed(case["seed"])
    k, batch = case["k"], case["batch"]
    wshape = (case["cout"], case["cin"] // case["groups"], *case["kernel"])
    if not get_backend(backend).supports(Call("conv2d", torch.device("cpu"), dtype, batch, wshape, k)):
        return
    x = torch.randn(batch, case["cin"], *case["hw"], generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(wshape, generator=g).to(dtype).requires_grad_()
    b = torch.randn(case["cout"], generator=g).to(dtype).requires_grad_() if use_bias else None
    masks = torch.rand(k, *wshape, generator=g) < 0.5
    routes = torch.full((batch,), k - 1) if one_ticket else torch.randint(0, k, (batch,), generator=g)
    args = (case["stride"], case["padding"], case["dilation"], case["groups"])
    y = rtl.routed_conv2d(x, w, masks, routes, b, *args, backend=backend)
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if use_bias else None
    ref = conv_ref(x64, w64, masks, routes, b64, *args) if batch else torch.nn.functional.conv2d(x64, w64, b64, *args)
    assert y.shape == ref.shape and y.dtype == dtype
    tol = TOLERANCE[dtype]
    assert rel_error(y, ref) <= tol
    if channels_last and not x.is_contiguous():  # ambiguous layouts (C=1, 1x1 maps) stay plain contiguous
        assert y.is_contiguous(memory_format=torch.channels_last)
    dy = torch.randn(y.shape, generator=g).to(dtype)
    y.backward(dy)
    ref.backward(dy.double())
    assert rel_error(x.grad, x64.grad) <= tol
    assert rel_error(w.grad, w64.grad) <= tol
    if use_bias:
        assert rel_error(b.grad, b64.grad) <= tol


def test_gradcheck_float64_groups_stride_padding_dilation():
    torch.manual_seed(0)
    x = torch.randn(4, 4, 7, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    masks = torch.rand(3, 6, 2, 3, 2) < 0.5
    routes = torch.tensor([1, 0, 1, 2])
    fn = lambda x, w, b: rtl.routed_conv2d(x, w, masks, routes, b, stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))


def test_padding_same_and_valid_match_conv2d():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 8)
    w = torch.randn(5, 3, 4, 3)  # even kernel height: asymmetric 'same' padding
    ones = torch.ones(2, *w.shape, dtype=torch.bool)
    for padding in ("same", "valid"):
        torch.testing.assert_close(rtl.routed_conv2d(x, w, ones, 1, padding=padding), torch.nn.functional.conv2d(x, w, padding=padding))


def test_unbatched_input():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 6)
    w = torch.randn(4, 3, 3, 3)
    masks = torch.rand(2, 4, 3, 3, 3) < 0.5
    torch.testing.assert_close(rtl.routed_conv2d(x, w, masks, 1), torch.nn.functional.conv2d(x, w * masks[1]))


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("kernel", [(1, 1), (3, 3)])
def test_empty_batch_forward_and_backward_on_every_cpu_backend(backend, kernel):
    """Pointwise convs take a linear path on some backends: an empty batch must work there too (Triton: test_triton_conv)."""
    x = torch.randn(0, 3, 5, 5, requires_grad=True)
    w = torch.randn(4, 3, *kernel, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    y = rtl.routed_conv2d(x, w, torch.rand(2, *w.shape) < 0.5, torch.zeros(0, dtype=torch.long), b, backend=backend)
    assert y.shape == torch.nn.functional.conv2d(x.detach(), w.detach()).shape
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))
