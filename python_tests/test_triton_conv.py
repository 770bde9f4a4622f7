"""Triton routed conv2d (implicit GEMM forward, dX, dW; 1×1 via the linear path) against float64 F.conv2d."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_math import TOLERANCE, conv_ref, rel_error

import rtl_kernels as rtl

pytest.importorskip("triton")
from rtl_kernels.backends import triton_backend as tb
from rtl_kernels.conv_params import ConvParams
from rtl_kernels.routing_plans.plan import make_plan

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(not tb.is_available(DEVICE), reason="triton backend unavailable on this device")
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])


def conv_grads_ref(dy, x, w, masks, routes, stride, padding, dilation, groups):
    x64 = x.double().requires_grad_()
    w64 = w.double().requires_grad_()
    y = conv_ref(x64, w64, masks, routes, None, stride, padding, dilation, groups)
    dx, dw = torch.autograd.grad(y, (x64, w64), dy.double())
    return dx, dw


def run_case(b, ci, co, hw, kernel, stride, padding, dilation, groups, k, dtype, channels_last, seed=0, density=0.6, bias=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, ci, *hw, generator=gen).to(dtype).to(DEVICE)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(co, ci // groups, *kernel, generator=gen).to(dtype).to(DEVICE)
    bb = torch.randn(co, generator=gen).to(dtype).to(DEVICE) if bias else None
    masks = (torch.rand(k, *w.shape, generator=gen) < density).to(DEVICE)
    routes = torch.randint(0, k, (b,), generator=gen).to(DEVICE)
    params = ConvParams(stride, padding, dilation, groups)
    packed = rtl.pack_masks(masks)
    plan = make_plan(routes, k)
    tol = TOLERANCE[dtype]
    y = tb.conv2d_forward(x, w, packed, plan, bb, params)
    ref = conv_ref(x, w, masks, routes, bb, stride, padding, dilation, groups)
    assert y.shape == ref.shape and y.dtype == dtype
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert rel_error(y, ref) <= tol
    dy = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype).to(DEVICE)
    if channels_last:
        dy = dy.contiguous(memory_format=torch.channels_last)
    dx, dw = tb.conv2d_backward(dy, x, w, packed, plan, params, True, True)
    dx_ref, dw_ref = conv_grads_ref(dy, x, w, masks, routes, stride, padding, dilation, groups)
    assert dx.shape == x.shape and dw.shape == w.shape
    assert rel_error(dx, dx_ref) <= tol
    assert rel_error(dw, dw_ref) <= tol


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "b,ci,co,hw,kernel,stride,padding,dilation,groups,k,channels_last",
    [
        (3, 4, 6, (6, 5), (3, 3), (1, 1), (1, 1), (1, 1), 1, 3, True),
        (4, 6, 4, (7, 6), (3, 3), (2, 2), (1, 1), (1, 1), 2, 3, False),
        (2, 3, 5, (5, 7), (2, 3), (1, 2), (0, 1), (2, 1), 1, 2, True),
        (3, 5, 7, (4, 4), (1, 1), (1, 1), (0, 0), (1, 1), 1, 2, True),  # 1×1: linear path
        (2, 4, 4, (5, 5), (1, 1), (2, 2), (0, 0), (1, 1), 4, 1, False),  # depthwise 1×1 stride 2: implicit GEMM
    ],
)
def test_conv_matches_oracle(b, ci, co, hw, kernel, stride, padding, dilation, groups, k, channels_last, dtype):
    run_case(b, ci, co, hw, kernel, stride, padding, dilation, groups, k, dtype, channels_last)


def test_conv_empty_batch_and_single_ticket():
    run_case(1, 3, 4, (4, 4), (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, torch.float32, False, bias=False)
    x = torch.randn(0, 3, 5, 5, device=DEVICE)
    w = torch.randn(4, 3, 3, 3, device=DEVICE)
    masks = rtl.pack_masks(torch.ones(2, *w.shape, dtype=torch.bool, device=DEVICE))
    y = tb.conv2d_forward(
        x, w, masks, make_plan(torch.zeros(0, dtype=torch.long, device=DEVICE), 2), None, ConvParams((1, 1), (0, 0), (1, 1), 1)
    )
    assert y.shape == (0, 4, 3, 3)


@pytest.mark.parametrize("kernel", [(1, 1), (3, 3)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_empty_batch_forward_and_backward_for_pointwise_and_spatial_convs(kernel, channels_last):
    """An empty batch through a 1×1 conv crashed at the pixel-rows view (pointwise convs take the linear path)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(0, 3, 5, 5, device=DEVICE).contiguous(memory_format=fmt).requires_grad_()
    w = torch.randn(4, 3, *kernel, device=DEVICE, requires_grad=True)
    b = torch.randn(4, device=DEVICE, requires_grad=True)
    masks = torch.rand(2, *w.shape, device=DEVICE) < 0.5
    routes = torch.zeros(0, dtype=torch.long, device=DEVICE)
    y = rtl.routed_conv2d(x, w, masks, routes, b, backend="triton")
    ref = torch.nn.functional.conv2d(x.detach(), w.detach(), b.detach())
    assert y.shape == ref.shape and y.dtype == ref.dtype
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


def test_public_conv_autograd_matches_reference_backend():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 5, 5, generator=gen).to(DEVICE)
    w = torch.randn(6, 4, 3, 3, generator=gen).to(DEVICE)
    b = torch.randn(6, generator=gen).to(DEVICE)
    masks = (torch.rand(3, *w.shape, generator=gen) < 0.5).to(DEVICE)
    routes = torch.tensor([2, 0, 2], device=DEVICE)
    outs = {}
    for name in ("triton", "reference"):
        xx, ww, bb = (t.clone().requires_grad_() for t in (x, w, b))
        y = rtl.routed_conv2d(xx, ww, masks, routes, bb, stride=2, padding=1, backend=name)
        (y * torch.linspace(-1, 1, y.numel(), device=DEVICE).reshape(y.shape)).sum().backward()
        outs[name] = (y, xx.grad, ww.grad, bb.grad)
    for got, ref in zip(outs["triton"], outs["reference"]):
        assert rel_error(got, ref) <= 1e-4


@settings(max_examples=5)
@given(
    b=st.integers(1, 3),
    groups=st.sampled_from([1, 2]),
    cpg=st.integers(1, 3),
    co_pg=st.integers(1, 3),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=st.tuples(st.integers(0, 1), st.integers(0, 1)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    k=st.integers(1, 3),
    channels_last=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_conv_matches_oracle(b, groups, cpg, co_pg, kernel, stride, padding, dilation, k, channels_last, seed):
    hw = (dilation[0] * (kernel[0] - 1) + 3, dilation[1] * (kernel[1] - 1) + 2)
    run_case(b, cpg * groups, co_pg * groups, hw, kernel, stride, padding, dilation, groups, k, torch.float32, channels_last, seed)
