"""CPU routed conv2d kernels against the float64 per-image oracle: every ISA, both backend paths, forward and backward."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_math import conv_ref, rel_error
from route_strategies import draw_routes

import rtl_kernels as rtl
from rtl_kernels.backends import cpu_backend, extension
from rtl_kernels.backends.registry import Call, resolve_backend
from rtl_kernels.conv_params import conv_output_format
from rtl_kernels.routing_plans.plan import make_plan

ext = extension.load_cpu()
pytestmark = pytest.mark.skipif(ext is None, reason="the C++ CPU extension cannot be built here (no compiler)")
ISAS = ext.supported_isas() if ext is not None else []
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}  # the oracle sees the same rounded inputs


@st.composite
def conv_problem(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3, "depthwise"]))
    if groups == "depthwise":
        groups = draw(st.integers(1, 40))
        cg, ng = 1, 1
    else:
        cg, ng = draw(st.integers(1, 12)), draw(st.integers(1, 40))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    h = draw(st.integers(max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0]), 10))
    w = draw(st.integers(max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1]), 10))
    k = draw(st.integers(1, 6))
    b = draw(st.integers(0, 5))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    routes = draw_routes(draw, k, b, g)
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    weight = torch.randn(groups * ng, cg, kh, kw, generator=g).to(dtype)
    masks = torch.rand(k, *weight.shape, generator=g) < draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    x = torch.randn(b, groups * cg, h, w, generator=g).to(dtype)
    if draw(st.booleans()):
        x = x.contiguous(memory_format=torch.channels_last)
    bias = torch.randn(groups * ng, generator=g).to(dtype) if draw(st.booleans()) else None
    return x, weight, bias, masks, routes, (stride, padding, dilation, groups)


def _oracle(x, weight, masks, routes, bias, conv, dy):
    stride, padding, dilation, groups = conv
    x64, w64 = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    if x.shape[0] == 0:
        y = torch.nn.functional.conv2d(x64, w64, None, stride, padding, dilation, groups)
        return y, torch.zeros_like(x64), torch.zeros_like(w64)
    y = conv_ref(x64, w64, masks, routes, None, stride, padding, dilation, groups)
    y.backward(dy.double())
    if bias is not None:
        y = y + bias.double().view(1, -1, 1, 1)
    return y.detach(), x64.grad, w64.grad


@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=20, deadline=None)
@given(case=conv_problem())
def test_conv_kernels_match_float64_oracle(isa, case):
    x, weight, bias, masks, routes, conv = case
    stride, padding, dilation, groups = conv
    plan = make_plan(routes, masks.shape[0])
    args = (rtl.pack_masks(masks).bits, plan.perm, plan.offsets)
    y = ext.conv_forward(x, weight, *args, bias, list(stride), list(padding), list(dilation), groups, isa)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(x.dtype)
    y_ref, dx_ref, dw_ref = _oracle(x, weight, masks, routes, bias, conv, dy)
    assert y.dtype == x.dtype and y.shape == y_ref.shape
    assert rel_error(y, y_ref) <= TOL[x.dtype]
    dx, dw = ext.conv_backward(dy, x, weight, *args, list(stride), list(padding), list(dilation), groups, True, True, isa)
    for got, want in ((dx, dx_ref), (dw, dw_ref)):
        assert got.dtype == x.dtype and got.shape == want.shape
        assert rel_error(got, want) <= TOL[x.dtype]


@pytest.mark.parametrize("path", ["kernel", "grouped"])
@settings(max_examples=15, deadline=None)
@given(case=conv_problem())
def test_backend_paths_with_autograd(path, case):
    x, weight, bias, masks, routes, conv = case
    stride, padding, dilation, groups = conv
    limit = {torch.float32: 0, torch.bfloat16: 0} if path == "grouped" else {torch.float32: 10**6, torch.bfloat16: 10**6}
    saved = dict(cpu_backend.CONV_KERNEL_IMAGES_PER_TICKET), dict(cpu_backend.CONV_BACKWARD_KERNEL_IMAGES_PER_TICKET)
    cpu_backend.CONV_KERNEL_IMAGES_PER_TICKET.update(limit)
    cpu_backend.CONV_BACKWARD_KERNEL_IMAGES_PER_TICKET.update(limit)
    try:
        xg = x.clone().requires_grad_()
        wg = weight.clone().requires_grad_()
        y = rtl.routed_conv2d(xg, wg, masks, routes, bias, stride, padding, dilation, groups, backend="cpu")
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(2)).to(x.dtype)
        y.backward(dy)
    finally:
        cpu_backend.CONV_KERNEL_IMAGES_PER_TICKET.update(saved[0])
        cpu_backend.CONV_BACKWARD_KERNEL_IMAGES_PER_TICKET.update(saved[1])
    y_ref, dx_ref, dw_ref = _oracle(x, weight, masks, routes, bias, conv, dy)
    # the output keeps x's memory format, as F.conv2d does
    assert y.is_contiguous(memory_format=conv_output_format(x))
    assert rel_error(y, y_ref) <= TOL[x.dtype]
    assert rel_error(xg.grad, dx_ref) <= TOL[x.dtype]
    assert rel_error(wg.grad, dw_ref) <= TOL[x.dtype]


@pytest.mark.parametrize("isa", ISAS)
def test_nan_outside_the_mask_never_propagates(isa):
    g = torch.Generator().manual_seed(4)
    for groups, cg, ng in ((1, 20, 37), (24, 1, 1)):
        weight = torch.randn(groups * ng, cg, 3, 3, generator=g)
        masks = torch.rand(3, *weight.shape, generator=g) < 0.5
        poisoned = torch.where(masks[1], weight, float("nan"))  # every image routed to ticket 1
        x = torch.randn(4, groups * cg, 7, 7, generator=g)
        routes = torch.ones(4, dtype=torch.long)
        plan = make_plan(routes, 3)
        args = (rtl.pack_masks(masks).bits, plan.perm, plan.offsets)
        conv = ([1, 1], [1, 1], [1, 1], groups)
        y = ext.conv_forward(x, poisoned, *args, None, *conv, isa)
        dy = torch.randn(y.shape, generator=g)
        dx, dw = ext.conv_backward(dy, x, poisoned, *args, *conv, True, True, isa)
        y_ref, dx_ref, dw_ref = _oracle(x, torch.where(masks[1], weight, 0.0), masks, routes, None, (1, 1, 1, groups), dy)
        assert torch.isfinite(y).all() and torch.isfinite(dx).all() and torch.isfinite(dw).all()
        assert rel_error(y, y_ref) < 1e-5 and rel_error(dx, dx_ref) < 1e-5 and rel_error(dw, dw_ref) < 1e-5


@pytest.mark.parametrize("isa", ISAS)
def test_conv_work_split_across_threads_matches_oracle(isa):
    """Several images, chunks, tickets and dW tiles per thread; no size a multiple of a block."""
    g = torch.Generator().manual_seed(7)
    k, b = 5, 9
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for groups, cg, ng, hw in ((1, 37, 70, 13), (2, 5, 19, 11), (33, 1, 1, 12)):
            weight = torch.randn(groups * ng, cg, 3, 3, generator=g)
            masks = torch.rand(k, *weight.shape, generator=g) < 0.6
            x = torch.randn(b, groups * cg, hw, hw, generator=g).contiguous(memory_format=torch.channels_last)
            bias = torch.randn(groups * ng, generator=g)
            routes = torch.randint(0, k, (b,), generator=g)
            plan = make_plan(routes, k)
            args = (rtl.pack_masks(masks).bits, plan.perm, plan.offsets)
            conv = ([2, 1], [1, 2], [1, 2], groups)
            y = ext.conv_forward(x, weight, *args, bias, *conv, isa)
            dy = torch.randn(y.shape, generator=g)
            y_ref, dx_ref, dw_ref = _oracle(x, weight, masks, routes, bias, ((2, 1), (1, 2), (1, 2), groups), dy)
            dx, dw = ext.conv_backward(dy, x, weight, *args, *conv, True, True, isa)
            assert rel_error(y, y_ref) < 1e-5 and rel_error(dx, dx_ref) < 1e-5 and rel_error(dw, dw_ref) < 1e-5
    finally:
        torch.set_num_threads(prev)


def test_auto_picks_cpu_for_conv2d():
    dev = torch.device("cpu")
    for dtype in (torch.float32, torch.bfloat16):
        assert resolve_backend("auto", Call("conv2d", dev, dtype, 8, (16, 16, 3, 3), 4)).name == "cpu"
    assert resolve_backend("auto", Call("conv2d", dev, torch.float16, 8, (16, 16, 3, 3), 4)).name != "cpu"


def test_conv_path_follows_the_measured_crossovers():
    k = 4
    for dtype, limit in cpu_backend.CONV_KERNEL_IMAGES_PER_TICKET.items():
        assert cpu_backend.use_conv_kernel(make_plan(torch.arange(k) % k, k), dtype)  # one image per ticket
        images = min(limit, 256)
        assert cpu_backend.use_conv_kernel(make_plan(torch.zeros(images, dtype=torch.long), k), dtype)
        assert cpu_backend.use_conv_kernel(make_plan(torch.zeros(images + 1, dtype=torch.long), k), dtype) == (images + 1 <= limit)


def _conv_valid():
    weight = torch.randn(6, 4, 3, 3)
    plan = make_plan(torch.tensor([0, 1, 1]), 2)
    return {
        "x": torch.randn(3, 4, 8, 8),
        "weight": weight,
        "bits": rtl.pack_masks(torch.rand(2, 6, 4, 3, 3) < 0.5).bits,
        "perm": plan.perm,
        "offsets": plan.offsets,
    }


CONV_BAD = [
    ("x", lambda a: a["x"][:, :3].contiguous(), ValueError, "x: expected 4 input channels"),
    ("x", lambda a: a["x"].double(), TypeError, "x: expected dtype"),
    ("x", lambda a: a["x"][..., :1, :1].contiguous(), ValueError, "x: spatial size"),
    ("weight", lambda a: a["weight"].half(), TypeError, "weight: expected dtype float32 or bfloat16"),
    ("bits", lambda a: a["bits"][:, :5].contiguous(), ValueError, "bits: expected shape"),
    ("perm", lambda a: a["perm"] + 10, ValueError, "perm: expected row ids"),
    ("offsets", lambda a: a["offsets"] * 2, ValueError, "offsets: expected offsets"),
]


@pytest.mark.parametrize("name, corrupt, exc, message", CONV_BAD)
def test_conv_bad_inputs_are_rejected_with_a_clear_error(name, corrupt, exc, message):
    a = _conv_valid()
    a[name] = corrupt(a)
    conv = ([1, 1], [0, 0], [1, 1], 1)
    with pytest.raises(exc, match=message):
        ext.conv_forward(a["x"], a["weight"], a["bits"], a["perm"], a["offsets"], None, *conv)
    with pytest.raises(exc, match=message):
        ext.conv_backward(torch.randn(3, 6, 6, 6), a["x"], a["weight"], a["bits"], a["perm"], a["offsets"], *conv, True, True)
