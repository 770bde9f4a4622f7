"""Triton routed linear (grouped, decode, weight-gradient kernels) against a float64 einsum oracle.

Runs in the Triton interpreter on CPU (conftest sets TRITON_INTERPRET=1) and unchanged on a GPU.
bf16 is only checked on CUDA: the interpreter computes bf16 dots wrongly.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_math import TOLERANCE, linear_ref, rel_error

import rtl_kernels as rtl
from rtl_kernels.backends.registry import get_backend

pytest.importorskip("triton")
from rtl_kernels.backends import triton_backend as tb
from rtl_kernels.kernels.triton.common import cached_tile_lists, sorted_tickets
from rtl_kernels.kernels.triton.geometry import linear_geometry
from rtl_kernels.kernels.triton.grouped_gemm import launch_dx, launch_forward
from rtl_kernels.kernels.triton.linear_decode import launch_decode
from rtl_kernels.kernels.triton.weight_grad import launch_dw
from rtl_kernels.masks.tiles import tile_prune
from rtl_kernels.routing_plans.plan import block_schedule, make_plan

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(not tb.is_available(DEVICE), reason="triton backend unavailable on this device")
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])


def make_routes(kind: str, m: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """Route patterns: uniform random, skewed (most rows on ticket 0), one ticket, and holes (empty tickets)."""
    if kind == "random":
        r = torch.randint(0, k, (m,), generator=gen)
    elif kind == "skewed":
        r = torch.where(torch.rand(m, generator=gen) < 0.8, 0, torch.randint(0, k, (m,), generator=gen))
    elif kind == "single":
        r = torch.full((m,), k - 1)
    elif kind == "holes":
        r = torch.randint(0, max(k // 2, 1), (m,), generator=gen) * 2 % k
    else:
        raise ValueError(kind)
    return r.to(torch.int64)


def make_problem(m, kin, n, k, dtype, kind="random", density=0.6, seed=0, bias=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, kin, generator=gen).to(dtype)
    w = torch.randn(n, kin, generator=gen).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype) if bias else None
    masks = torch.rand(k, n, kin, generator=gen) < density
    routes = make_routes(kind, m, k, gen)
    return x.to(DEVICE), w.to(DEVICE), b.to(DEVICE) if bias else None, masks.to(DEVICE), routes.to(DEVICE)


def grads_ref(dy, x, w, masks, routes):
    wr = w.double().unsqueeze(0) * masks[routes].double()  # [M, N, Kin]
    dx = torch.einsum("mn,mni->mi", dy.double(), wr)
    dw = torch.einsum("mn,mi,mni->ni", dy.double(), x.double(), masks[routes].double())
    return dx, dw


def check_all(x, w, b, masks, routes, dtype):
    packed = rtl.pack_masks(masks)
    plan = make_plan(routes, masks.shape[0])
    tol = TOLERANCE[dtype]
    y = tb.linear_forward(x, w, packed, plan, b)
    assert y.dtype == dtype and y.shape == (x.shape[0], w.shape[0])
    assert rel_error(y, linear_ref(x, w, masks, routes, b)) <= tol
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(dtype).to(DEVICE)
    dx, dw = tb.linear_backward(dy, x, w, packed, plan, True, True)
    dx_ref, dw_ref = grads_ref(dy, x, w, masks, routes)
    assert dx.dtype == dtype and dw.dtype == dtype
    assert rel_error(dx, dx_ref) <= tol
    assert rel_error(dw, dw_ref) <= tol


# decode path: rows <= 16 in the interpreter table; grouped path above
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "m,kin,n,k,kind",
    [
        (1, 33, 17, 3, "random"),
        (7, 45, 70, 4, "skewed"),
        (12, 40, 33, 5, "holes"),
        (37, 70, 45, 4, "random"),
        (50, 33, 29, 3, "skewed"),
        (41, 35, 38, 1, "single"),
        (33, 64, 31, 6, "holes"),
    ],
)
def test_forward_backward_matches_oracle(m, kin, n, k, kind, dtype):
    check_all(*make_problem(m, kin, n, k, dtype, kind), dtype)


@pytest.mark.parametrize("m,kin,n", [(0, 8, 5), (4, 1, 3), (20, 1, 9), (3, 7, 1), (5, 0, 4)])
def test_degenerate_sizes(m, kin, n):
    x, w, b, masks, routes = make_problem(m, kin, n, 2, torch.float32)
    check_all(x, w, b, masks, routes, torch.float32)


def test_no_bias_and_all_empty_masks():
    x, w, _, masks, routes = make_problem(9, 20, 11, 3, torch.float32, bias=False)
    check_all(x, w, None, masks, routes, torch.float32)
    zero = torch.zeros_like(masks)
    y = tb.linear_forward(x, w, rtl.pack_masks(zero), make_plan(routes, 3), None)
    assert torch.count_nonzero(y) == 0


@pytest.mark.parametrize("path", ["grouped", "decode"])
@pytest.mark.parametrize("split", [1, 3])
def test_explicit_configs_multi_tile(path, split):
    """Small tiles so every kernel runs many N/K tiles, splits and row blocks, incl. ragged edges."""
    x, w, b, masks, routes = make_problem(21, 50, 37, 4, torch.float32, "skewed")
    packed = rtl.pack_masks(masks)
    plan = make_plan(routes, 4)
    geom = linear_geometry(21, 50, 37)
    y_ref = linear_ref(x, w, masks, routes, b)
    dy = torch.randn(21, 37, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    dx_ref, dw_ref = grads_ref(dy, x, w, masks, routes)
    bits = packed.bits
    if path == "decode":
        cfg = {"BLOCK_N": 16, "BLOCK_K": 16, "SPLIT_K": split, "num_warps": 4, "num_stages": 1}
        st_ = sorted_tickets(plan.routes, plan.perm)
        flags_f = tb.cached_tile_flags(packed, (16, 16))
        y = launch_decode(x, w, bits, flags_f, b, plan.perm, st_, plan.offsets, False, cfg)
        dx = launch_decode(dy, w, bits, flags_f, None, plan.perm, st_, plan.offsets, True, cfg)
    else:
        cfg = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "num_warps": 4, "num_stages": 1}
        sched = block_schedule(plan, 16)
        y = torch.empty(21, 37, device=DEVICE)
        launch_forward(x, w, bits, cached_tile_lists(packed, (16, 16), False), b, y, plan.perm, sched, geom, cfg)
        dx = torch.empty(21, 50, device=DEVICE)
        launch_dx(dy, w, bits, cached_tile_lists(packed, (16, 16), True), dx, plan.perm, sched, geom, cfg)
    dw_cfg = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "SPLIT": split, "num_warps": 4, "num_stages": 1}
    dw = launch_dw(
        dy, x, bits, tb.cached_tile_flags(packed, (16, 16)), plan.perm, plan.offsets, block_schedule(plan, 16), geom, dw_cfg, torch.float32
    )
    assert rel_error(y, y_ref) <= 1e-5
    assert rel_error(dx, dx_ref) <= 1e-5
    assert rel_error(dw, dw_ref) <= 1e-5


def test_tile_structured_masks_skip_empty_tiles():
    """Masks zero on whole 32×32 tiles: tile lists hold only occupied tiles and results stay exact."""
    gen = torch.Generator().manual_seed(5)
    n, kin, k = 64, 96, 3
    w = torch.randn(n, kin, generator=gen)
    sparsities = [0.5, 0.75, 0.25]
    masks = tile_prune(torch.rand(k, n, kin, generator=gen), sparsities, (32, 32), per_ticket=True)
    packed = rtl.pack_masks(masks.to(DEVICE))
    lists, counts = cached_tile_lists(packed, (32, 32), along_rows=False)
    assert counts.sum(1).tolist() == [6 - round(s * 6) for s in sparsities]
    flags = tb.cached_tile_flags(packed, (32, 32))
    for t in range(k):
        for r in range(flags.shape[1]):
            c = int(counts[t, r])
            assert sorted(lists[t, r, :c].tolist()) == torch.nonzero(flags[t, r]).flatten().tolist()
    x = torch.randn(40, kin, generator=gen)
    routes = torch.randint(0, k, (40,), generator=gen)
    check_all(x.to(DEVICE), w.to(DEVICE), None, masks.to(DEVICE), routes.to(DEVICE), torch.float32)


def test_ticket_grads_are_unmasked_per_ticket():
    x, _, _, _, routes = make_problem(26, 19, 23, 4, torch.float32, "holes")
    dy = torch.randn(26, 23).to(DEVICE)
    g = tb.linear_ticket_grads(dy, x, make_plan(routes, 4), 4)
    ref = torch.stack([dy[routes == t].double().T @ x[routes == t].double() for t in range(4)])
    assert g.shape == (4, 23, 19)
    assert rel_error(g, ref) <= 1e-5


def test_public_op_autograd_matches_reference_backend():
    x, w, b, masks, routes = make_problem(18, 24, 20, 3, torch.float32)
    x3 = x.reshape(6, 3, 24)
    r = routes[:6]
    outs = {}
    for name in ("triton", "reference"):
        xx, ww, bb = (t.clone().requires_grad_() for t in (x3, w, b))
        y = rtl.routed_linear(xx, ww, masks, r, bb, backend=name)
        (y * torch.linspace(-1, 1, y.numel(), device=DEVICE).reshape(y.shape)).sum().backward()
        outs[name] = (y, xx.grad, ww.grad, bb.grad)
    for got, ref in zip(outs["triton"], outs["reference"]):
        assert rel_error(got, ref) <= 1e-4


@settings(max_examples=8)
@given(
    m=st.integers(0, 40),
    kin=st.integers(1, 48),
    n=st.integers(1, 40),
    k=st.integers(1, 5),
    kind=st.sampled_from(["random", "skewed", "single", "holes"]),
    density=st.sampled_from([0.0, 0.3, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_property_matches_oracle(m, kin, n, k, kind, density, seed):
    check_all(*make_problem(m, kin, n, k, torch.float32, kind, density, seed), torch.float32)


def test_registration_and_dispatch_rules():
    backend = get_backend("triton")
    assert backend.implements("linear") and backend.implements("conv2d")
    assert backend.priority(torch.device("cpu")) < 0
    if torch.cuda.is_available():
        assert backend.priority(torch.device("cuda")) >= 100
    from rtl_kernels.backends.registry import Call

    cpu = torch.device("cpu")
    assert not backend.supports(Call("linear", cpu, torch.float64, 4, (3, 5), 2))
    assert not backend.supports(Call("linear", cpu, torch.bfloat16, 4, (3, 5), 2))
    assert backend.supports(Call("linear", cpu, torch.float16, 4, (3, 5), 2))
    x = torch.randn(4, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="backend"):
        rtl.routed_linear(x, torch.randn(3, 5, dtype=torch.float64), torch.ones(2, 3, 5, dtype=torch.bool), 0, backend="triton")
    # "auto" never picks the interpreter
    from rtl_kernels.backends.registry import resolve_backend

    assert resolve_backend("auto", Call("linear", cpu, torch.float32, 4, (3, 5), 2)).name != "triton"


@pytest.mark.skipif(DEVICE.type != "cuda", reason="CUDA graphs need a GPU")
def test_cuda_graph_capture_replays():
    x, w, b, masks, routes = make_problem(8, 64, 48, 4, torch.float16)
    packed = rtl.pack_masks(masks)
    plan = make_plan(routes, 4)
    y0 = tb.linear_forward(x, w, packed, plan, b)  # warm: compile + cache tile lists
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = tb.linear_forward(x, w, packed, plan, b)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert rel_error(y, linear_ref(x, w, masks, routes, b)) <= TOLERANCE[torch.float16]
    assert y0.shape == y.shape


def test_torch_compile_fullgraph_forward_backward():
    x, w, b, masks, routes = make_problem(10, 24, 20, 3, torch.float32)
    packed = rtl.pack_masks(masks)

    def f(x, w, b):
        return rtl.routed_linear(x, w, packed, routes, b, backend="triton", check_routes=False)

    eager_in = [t.clone().requires_grad_() for t in (x, w, b)]
    y_eager = f(*eager_in)  # also loads the backends before tracing
    y_eager.square().sum().backward()
    comp_in = [t.clone().requires_grad_() for t in (x, w, b)]
    y = torch.compile(f, fullgraph=True)(*comp_in)
    y.square().sum().backward()
    assert rel_error(y, y_eager) <= 1e-6
    for got, ref in zip(comp_in, eager_in):
        assert rel_error(got.grad, ref.grad) <= 1e-6
