"""CPU C++ kernels against a float64 oracle: every ISA this CPU runs, both paths, forward and backward, bad inputs."""

import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from reference_math import linear_ref, rel_error
from route_strategies import draw_routes

import rtl_kernels as rtl
from rtl_kernels.backends import cpu_backend, extension
from rtl_kernels.backends.registry import Call, resolve_backend
from rtl_kernels.routing_plans.plan import make_plan

ext = extension.load_cpu()
pytestmark = pytest.mark.skipif(ext is None, reason="the C++ CPU extension cannot be built here (no compiler)")
ISAS = ext.supported_isas() if ext is not None else []
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}  # the oracle sees the same rounded inputs, so only accumulation/output rounding counts


@st.composite
def problem(draw, max_rows=24):
    k = draw(st.integers(1, 32))
    m = draw(st.integers(0, max_rows))
    n = draw(st.integers(1, 37))
    c = draw(st.integers(1, 70))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    routes = draw_routes(draw, k, m, g)
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    masks = torch.rand(k, n, c, generator=g) < draw(st.sampled_from([0.0, 0.3, 0.5, 0.9, 1.0]))
    x = torch.randn(m, c, generator=g).to(dtype)
    w = torch.randn(n, c, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if draw(st.booleans()) else None
    dy = torch.randn(m, n, generator=g).to(dtype)
    return x, w, b, masks, routes, dy


def grads_ref(x, w, masks, routes, dy):
    x64 = x.double().requires_grad_()
    w64 = w.double().requires_grad_()
    linear_ref(x64, w64, masks, routes, None).backward(dy.double())
    return x64.grad, w64.grad


@pytest.mark.parametrize("isa", ISAS)
@given(case=problem())
def test_kernels_match_float64_oracle(isa, case):
    x, w, b, masks, routes, dy = case
    packed = rtl.pack_masks(masks)
    plan = make_plan(routes, masks.shape[0])
    args = (packed.bits, plan.perm, plan.offsets)
    tol = TOL[x.dtype]
    ref = linear_ref(x, w, masks, routes, b)
    outs = [ext.forward(x, w, *args, b, isa), ext.forward_grouped(x, w, *args, b, isa)]
    if x.dtype == torch.float32 and ext.gemm_supported(isa):
        outs.append(ext.forward_gemm(x, w, *args, b, isa))
    for y in outs:
        assert y.dtype == x.dtype and y.shape == ref.shape
        assert rel_error(y, ref) <= tol
    dx_ref, dw_ref = grads_ref(x, w, masks, routes, dy)
    dx, dw = ext.grad_input(dy, w, *args, isa), ext.grad_weight(dy, x, w, *args, isa)
    gdx, gdw = ext.backward_grouped(dy, x, w, *args, True, True, isa)
    for got, want in ((dx, dx_ref), (gdx, dx_ref), (dw, dw_ref), (gdw, dw_ref)):
        assert got.dtype == x.dtype and got.shape == want.shape
        assert rel_error(got, want) <= tol


@given(case=problem())
def test_isas_agree(case):
    x, w, b, masks, routes, _ = case
    packed = rtl.pack_masks(masks)
    plan = make_plan(routes, masks.shape[0])
    outs = [ext.forward(x, w, packed.bits, plan.perm, plan.offsets, b, isa).double() for isa in ISAS]
    for out in outs[1:]:
        assert rel_error(out, outs[0]) <= TOL[x.dtype]


@pytest.mark.parametrize("isa", ISAS)
def test_masked_weight_is_exact(isa):
    g = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.bfloat16):
        w = torch.randn(7, 45, generator=g).to(dtype)
        masks = torch.rand(3, 7, 45, generator=g) < 0.5
        bits = rtl.pack_masks(masks).bits
        for k in range(3):
            assert torch.equal(ext.masked_weight(w, bits, k, isa), w * masks[k])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [5, 400])  # the direct path, then the large-batch paths of the backend
def test_backend_autograd_with_broadcast_routes(dtype, rows):
    g = torch.Generator().manual_seed(rows)
    k, n, c = 5, 19, 33
    routes = torch.randint(0, k, (rows,), generator=g)
    assert cpu_backend.use_direct(make_plan(routes.repeat_interleave(2), k), dtype) == (rows == 5)
    x = torch.randn(rows, 2, c, generator=g).to(dtype).requires_grad_()
    w = torch.randn(n, c, generator=g).to(dtype).requires_grad_()
    b = torch.randn(n, generator=g).to(dtype).requires_grad_()
    masks = torch.rand(k, n, c, generator=g) < 0.5
    y = rtl.routed_linear(x, w, masks, routes, b, backend="cpu")
    dy = torch.randn(y.shape, generator=g).to(dtype)
    y.backward(dy)
    flat_routes = routes.repeat_interleave(2)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = linear_ref(x64.reshape(-1, c), w64, masks, flat_routes, b64).reshape(rows, 2, n)
    ref.backward(dy.double())
    tol = TOL[dtype]
    assert rel_error(y, ref) <= tol
    for got, want in ((x.grad, x64.grad), (w.grad, w64.grad), (b.grad, b64.grad)):
        assert rel_error(got, want) <= tol


def test_forward_path_follows_the_crossovers(monkeypatch):
    # the rule, on fixed limits (the measured ones differ per machine: test_crossovers.py)
    for dtype, limit in ((torch.float32, 48), (torch.bfloat16, 12)):
        monkeypatch.setitem(cpu_backend.DIRECT_ROWS_PER_TICKET, dtype, limit)
    monkeypatch.setattr(cpu_backend, "GEMM_MAX_ROWS_ONE_TICKET", 192)
    k = 8
    spread = make_plan(torch.arange(2048) % k, k)  # 256 rows on each of 8 tickets
    one = make_plan(torch.zeros(2048, dtype=torch.long), k)  # 2048 rows of one ticket
    small = make_plan(torch.arange(16) % k, k)
    for dtype in (torch.float32, torch.bfloat16):
        assert cpu_backend.forward_path(small, dtype, ext) == "direct"
        assert cpu_backend.forward_path(one, dtype, ext) == "grouped"
    assert cpu_backend.forward_path(spread, torch.bfloat16, ext) == "grouped"
    assert cpu_backend.forward_path(spread, torch.float32, ext) == ("gemm" if ext.gemm_supported() else "grouped")


@pytest.mark.skipif(ext is None or not ext.gemm_supported(), reason="the fused GEMM needs AVX-512")
def test_fused_gemm_rejects_what_it_cannot_run():
    a = _valid()
    args = (a["weight"], a["bits"], a["perm"], a["offsets"], None)
    with pytest.raises(TypeError, match="x: forward_gemm expects float32"):
        ext.forward_gemm(a["x"].bfloat16(), a["weight"].bfloat16(), *args[1:])
    with pytest.raises(ValueError, match="isa: forward_gemm needs AVX-512"):
        ext.forward_gemm(a["x"], *args, 1)
    with pytest.raises(ValueError, match="perm: expected row ids"):
        ext.forward_gemm(a["x"], a["weight"], a["bits"], a["perm"] + 100, a["offsets"], None)


def test_auto_picks_cpu_for_supported_dtypes_only():
    assert "cpu" in rtl.available_backends("cpu")
    dev = torch.device("cpu")
    for dtype in (torch.float32, torch.bfloat16):
        assert resolve_backend("auto", Call("linear", dev, dtype, 16, (8, 8), 2)).name == "cpu"
    assert resolve_backend("auto", Call("linear", dev, torch.float16, 16, (8, 8), 2)).name != "cpu"
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("cpu", Call("linear", dev, torch.float16, 16, (8, 8), 2))


def test_misaligned_inputs_are_handled():
    g = torch.Generator().manual_seed(5)
    m, n, c, k = 6, 9, 37, 3
    for dtype in (torch.float32, torch.bfloat16):
        buf = torch.randn(m * c + 1, generator=g).to(dtype)
        x = buf[1:].view(m, c)  # data pointer one element past an allocation boundary
        w = torch.randn(n * c + 1, generator=g).to(dtype)[1:].view(n, c)
        masks = torch.rand(k, n, c, generator=g) < 0.5
        routes = torch.randint(0, k, (m,), generator=g)
        plan = make_plan(routes, k)
        y = ext.forward(x, w, rtl.pack_masks(masks).bits, plan.perm, plan.offsets, None)
        assert rel_error(y, linear_ref(x, w, masks, routes, None)) <= TOL[dtype]


def _valid(m=4, n=5, c=40, k=3):
    x = torch.randn(m, c)
    w = torch.randn(n, c)
    bits = rtl.pack_masks(torch.rand(k, n, c) < 0.5).bits
    plan = make_plan(torch.arange(m) % k, k)
    return {"x": x, "weight": w, "bits": bits, "perm": plan.perm, "offsets": plan.offsets}


BAD_INPUTS = [
    ("x", lambda a: a["x"].t().contiguous().t(), ValueError, "x: expected a contiguous"),
    ("x", lambda a: a["x"].half(), TypeError, "x: expected dtype"),
    ("x", lambda a: a["x"][:, :-1].contiguous(), ValueError, "x: expected shape"),
    ("x", lambda a: a["x"][0], ValueError, "x: expected a 2-D"),
    ("weight", lambda a: a["weight"].half(), TypeError, "weight: expected dtype float32 or bfloat16"),
    ("weight", lambda a: a["weight"].double(), TypeError, "weight: expected dtype float32 or bfloat16"),
    ("weight", lambda a: a["weight"].t(), ValueError, "weight: expected a contiguous"),
    ("bits", lambda a: a["bits"][:, :, :1].contiguous(), ValueError, "bits: expected shape"),
    ("bits", lambda a: a["bits"].long(), TypeError, "bits: expected dtype int32"),
    ("bits", lambda a: a["bits"][:, :-1].contiguous(), ValueError, "bits: expected shape"),
    ("perm", lambda a: a["perm"] + 100, ValueError, "perm: expected row ids"),
    ("perm", lambda a: a["perm"] - 100, ValueError, "perm: expected row ids"),
    ("perm", lambda a: a["perm"].int(), TypeError, "perm: expected dtype int64"),
    ("perm", lambda a: a["perm"][:-1].contiguous(), ValueError, "perm: expected shape"),
    ("offsets", lambda a: a["offsets"] * 2, ValueError, "offsets: expected offsets"),
    ("offsets", lambda a: a["offsets"].flip(0).contiguous(), ValueError, "offsets: expected"),
    ("offsets", lambda a: a["offsets"][:-1].contiguous(), ValueError, "offsets: expected shape"),
]


@pytest.mark.parametrize("name, corrupt, exc, message", BAD_INPUTS)
def test_bad_inputs_are_rejected_with_a_clear_error(name, corrupt, exc, message):
    a = _valid()
    a[name] = corrupt(a)
    with pytest.raises(exc, match=message):
        ext.forward(a["x"], a["weight"], a["bits"], a["perm"], a["offsets"], None)
    with pytest.raises(exc, match=message):
        ext.forward_grouped(a["x"], a["weight"], a["bits"], a["perm"], a["offsets"], None)
    dy = torch.randn(a["perm"].shape[0] if name == "perm" else 4, 5)
    with pytest.raises(exc, match=message):
        ext.grad_weight(dy, a["x"], a["weight"], a["bits"], a["perm"], a["offsets"])


def test_bad_bias_dy_ticket_and_isa_are_rejected():
    a = _valid()
    args = (a["x"], a["weight"], a["bits"], a["perm"], a["offsets"])
    with pytest.raises(ValueError, match=r"bias: expected shape \[5\]"):
        ext.forward(*args, torch.randn(6))
    with pytest.raises(TypeError, match="bias: expected dtype"):
        ext.forward(*args, torch.randn(5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"dy: expected shape \[4, 5\]"):
        ext.grad_weight(torch.randn(4, 6), *args)
    with pytest.raises(TypeError, match="dy: expected dtype"):
        ext.grad_input(torch.randn(4, 5, dtype=torch.float64), a["weight"], a["bits"], a["perm"], a["offsets"])
    with pytest.raises(ValueError, match="ticket: expected a value in"):
        ext.masked_weight(a["weight"], a["bits"], 3)
    with pytest.raises(ValueError, match="isa: expected"):
        ext.forward(*args, None, 7)
    with pytest.raises(TypeError):  # pybind11 rejects a non-tensor before the kernel sees it
        ext.forward(None, *args[1:], None)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the extension is built with OpenMP on Linux")
def test_kernels_run_on_every_torch_thread():
    # without OpenMP at compile time at::parallel_for silently runs everything on one core
    assert ext.max_threads() == torch.get_num_threads()


@pytest.mark.parametrize("isa", ISAS)
def test_work_split_across_threads_matches_oracle(isa):
    """Shapes big enough that every kernel splits its output into blocks run on several threads."""
    g = torch.Generator().manual_seed(7)
    k, m, n, c = 5, 41, 203, 331  # no size a multiple of a block, so the last block of each split is partial
    masks = torch.rand(k, n, c, generator=g) < 0.6
    routes = torch.randint(0, k, (m,), generator=g)
    x, w, b, dy = (torch.randn(*s, generator=g) for s in ((m, c), (n, c), (n,), (m, n)))
    packed, plan = rtl.pack_masks(masks), make_plan(routes, k)
    args = (packed.bits, plan.perm, plan.offsets)
    y_ref = linear_ref(x.double(), w.double(), masks, routes, b.double())
    dx_ref, dw_ref = grads_ref(x, w, masks, routes, dy)
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert rel_error(ext.forward(x, w, *args, b, isa), y_ref) < 1e-5
        assert rel_error(ext.grad_input(dy, w, *args, isa), dx_ref) < 1e-5
        assert rel_error(ext.grad_weight(dy, x, w, *args, isa), dw_ref) < 1e-5
        assert rel_error(ext.forward_grouped(x, w, *args, b, isa), y_ref) < 1e-5
        if ext.gemm_supported(isa):
            assert rel_error(ext.forward_gemm(x, w, *args, b, isa), y_ref) < 1e-5
        gdx, gdw = ext.backward_grouped(dy, x, w, *args, True, True, isa)
        assert rel_error(gdx, dx_ref) < 1e-5 and rel_error(gdw, dw_ref) < 1e-5
    finally:
        torch.set_num_threads(prev)


@pytest.mark.skipif(ext is None or not ext.gemm_supported(), reason="the fused GEMM needs AVX-512")
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_gemm_over_several_row_and_weight_blocks(threads):
    """More rows per ticket than one packed row block and more weight rows than one packed block."""
    g = torch.Generator().manual_seed(11)
    k, m, n, c = 3, 900, 600, 300
    routes = torch.where(torch.rand(m, generator=g) < 0.85, 0, torch.randint(1, k, (m,), generator=g))
    masks = torch.rand(k, n, c, generator=g) < 0.5
    x, w, b = torch.randn(m, c, generator=g), torch.randn(n, c, generator=g), torch.randn(n, generator=g)
    plan = make_plan(routes, k)
    ref = torch.empty(m, n, dtype=torch.float64)
    for t in range(k):
        rows = routes == t
        ref[rows] = x[rows].double() @ (w.double() * masks[t]).T + b.double()
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = ext.forward_gemm(x, w, rtl.pack_masks(masks).bits, plan.perm, plan.offsets, b)
    finally:
        torch.set_num_threads(prev)
    assert rel_error(y, ref) < 1e-5
