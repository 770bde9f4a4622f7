"""Routes belong to the call: many threads and asyncio tasks on one model, nesting, a fresh process's first calls."""

from __future__ import annotations

import asyncio
import copy
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

import rtl_kernels as rtl
from rtl_kernels.models.state import named_rtl_layers
from rtl_kernels.nn.scope import _TRACED

K = 4


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = rtl.convert(nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 5)), K).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    rtl.set_masks(model, {n: torch.rand((K, *p.weight_shape), generator=gen) < 0.5 for n, p in rtl.masks_of(model).items()})
    return model


def _dense_copies(model: nn.Module) -> list[nn.Module]:
    """K plain models, copy k with ticket k's masks baked into its weights: the direct computation."""
    copies = []
    for k in range(K):
        dense = copy.deepcopy(model)
        for name, layer in named_rtl_layers(model).items():
            parent, _, child = name.rpartition(".")
            setattr(dense.get_submodule(parent) if parent else dense, child, layer.to_dense(k))
        copies.append(dense.double())
    return copies


def _direct(copies: list[nn.Module], x: torch.Tensor, routes: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([copies[int(r)](x[i : i + 1].double()) for i, r in enumerate(routes)]).float()


def test_one_model_from_many_threads_each_call_gets_its_own_routes() -> None:
    model = _model()
    copies = _dense_copies(model)
    router = lambda x: (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()  # noqa: E731
    routed = rtl.RoutedModel(model, router)
    gen = torch.Generator().manual_seed(7)
    cases = []
    for i in range(64):  # mixed tickets per row, whole-batch tickets, router-chosen routes
        x = torch.randn(1 + i % 6, 12, generator=gen)
        routes = torch.randint(0, K, (x.shape[0],), generator=gen)
        cases.append((i % 4, x, routes if i % 4 else routes[:1].expand(x.shape[0]).clone()))
    expected = [_direct(copies, x, router(x) if kind == 3 else r) for kind, x, r in cases]

    def call(i: int) -> torch.Tensor:
        kind, x, routes = cases[i % len(cases)]
        with torch.no_grad():
            if kind == 0:  # one ticket for the batch, as an int, through the context manager
                with rtl.routing(model, int(routes[0])):
                    return model(x)
            if kind == 1:
                return routed(x, routes=routes)
            if kind == 2:
                with rtl.routing(model, routes):
                    return model(x)
            return routed(x)

    calls = 4 * 150
    barrier = threading.Barrier(4)

    def worker(offset: int) -> list[tuple[int, torch.Tensor]]:
        barrier.wait()
        return [(i, call(i)) for i in range(offset, calls, 4)]

    with ThreadPoolExecutor(4) as pool:
        results = [item for chunk in pool.map(worker, range(4)) for item in chunk]
    assert len(results) == calls
    wrong = [i for i, out in results if not torch.allclose(out, expected[i % len(cases)], rtol=1e-4, atol=1e-5)]
    assert wrong == []


def test_nested_scopes_restore_the_enclosing_routes() -> None:
    model = _model(1)
    copies = _dense_copies(model)
    x = torch.randn(3, 12)
    outer, inner = torch.tensor([0, 1, 2]), torch.tensor([3, 3, 1])
    with torch.no_grad(), rtl.routing(model, outer):
        torch.testing.assert_close(model(x), _direct(copies, x, outer), rtol=1e-4, atol=1e-5)
        with rtl.routing(model, inner):
            torch.testing.assert_close(model(x), _direct(copies, x, inner), rtol=1e-4, atol=1e-5)
        # a RoutedModel call inside the block leaves the block's routes in place
        rtl.RoutedModel(model)(x, routes=inner)
        torch.testing.assert_close(model(x), _direct(copies, x, outer), rtol=1e-4, atol=1e-5)
        # another model's scope does not touch this one's layers
        other = _model(2)
        with rtl.routing(other, 0):
            torch.testing.assert_close(model(x), _direct(copies, x, outer), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="routes: expected ticket ids"):
        model(x)
    # an exception inside the block restores too
    with pytest.raises(RuntimeError, match="boom"), rtl.routing(model, 1):
        raise RuntimeError("boom")
    with pytest.raises(ValueError, match="routes: expected ticket ids"):
        model(x)


def test_asyncio_tasks_see_their_own_routes_across_awaits() -> None:
    model = _model(3)
    copies = _dense_copies(model)
    x = torch.randn(2, 12)

    async def task(ticket: int) -> list[bool]:
        ok = []
        with rtl.routing(model, ticket):
            for _ in range(5):
                await asyncio.sleep(0)  # every other task enters its own block meanwhile
                with torch.no_grad():
                    ok.append(torch.allclose(model(x), _direct(copies, x, torch.full((2,), ticket)), rtol=1e-4, atol=1e-5))
        return ok

    async def main() -> list[list[bool]]:
        return await asyncio.gather(*(task(i % K) for i in range(8)))

    assert all(all(ok) for ok in asyncio.run(main()))


def test_compiled_routed_model_from_threads_and_an_eager_scope_around_a_compiled_model() -> None:
    torch._dynamo.reset()  # earlier tests' cache entries for RoutedModel.forward count towards the recompile limit
    model = _model(4)
    copies = _dense_copies(model)
    compiled = torch.compile(rtl.RoutedModel(model), fullgraph=True, backend="eager")
    rtl.available_backends("cpu")  # backends load on first use, outside the compiled region
    gen = torch.Generator().manual_seed(5)
    xs = [torch.randn(4, 12, generator=gen) for _ in range(8)]
    rs = [torch.randint(0, K, (4,), generator=gen) for _ in range(8)]
    with torch.no_grad():
        compiled(xs[0], routes=rs[0])  # compile once, then run from 4 threads

        def worker(i: int) -> bool:
            with torch.no_grad():  # grad mode is per thread: the same mode as the warm-up call, no recompile
                return all(
                    torch.allclose(compiled(xs[j], routes=rs[j]), _direct(copies, xs[j], rs[j]), rtol=1e-4, atol=1e-5) for j in range(8)
                )

        with ThreadPoolExecutor(4) as pool:
            assert all(pool.map(worker, range(4)))
        assert _TRACED.scopes == []  # the traced scope's push and pop cancel out: nothing left behind
        # a scope opened outside a compiled region is read through a graph break
        plain = torch.compile(model, backend="eager")
        with rtl.routing(model, rs[1]):
            torch.testing.assert_close(plain(xs[1]), _direct(copies, xs[1], rs[1]), rtol=1e-4, atol=1e-5)


FIRST_CALLS = textwrap.dedent(
    """
    import threading, torch
    import rtl_kernels as rtl

    torch.manual_seed(0)
    x, w = torch.randn(6, 8), torch.randn(5, 8)
    masks = torch.rand(3, 5, 8) < 0.5
    routes = torch.tensor([0, 2, 1, 1, 0, 2])
    expected = torch.stack([x[i] @ (w * masks[r]).T for i, r in enumerate(routes.tolist())])
    barrier, errors = threading.Barrier(8), []

    def first_call():
        barrier.wait()
        try:
            torch.testing.assert_close(rtl.routed_linear(x, w, masks, routes), expected, rtol=1e-4, atol=1e-5)
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=first_call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    """
)


def test_first_calls_of_a_fresh_process_from_8_threads() -> None:
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", FIRST_CALLS], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]


def test_oracle_given_labels_belong_to_the_thread_that_gave_them() -> None:
    model = _model(3)
    copies = _dense_copies(model)
    router = rtl.routers.OracleRouter([k % K for k in range(10)])  # label -> ticket label % K
    routed = rtl.RoutedModel(model, router)
    gen = torch.Generator().manual_seed(11)
    cases = [(torch.randn(3, 12, generator=gen), torch.randint(0, 10, (3,), generator=gen)) for _ in range(32)]
    expected = [_direct(copies, x, labels % K) for x, labels in cases]
    barrier = threading.Barrier(4)

    def worker(offset: int) -> list[tuple[int, torch.Tensor]]:
        barrier.wait()
        out = []
        for i in range(offset, 4 * 100, 4):
            x, labels = cases[i % len(cases)]
            with torch.no_grad(), router.given(labels):
                time.sleep(0.0002)  # another thread runs here, as it would while a server awaits I/O
                out.append((i, routed(x)))
        return out

    with ThreadPoolExecutor(4) as pool:
        results = [r for rows in pool.map(worker, range(4)) for r in rows]
    wrong = sum(not torch.allclose(y, expected[i % len(cases)], rtol=1e-4, atol=1e-5) for i, y in results)
    assert len(results) == 400 and wrong == 0
    with pytest.raises(TypeError, match="x: expected integer labels"):
        router(torch.randn(2, 12))  # every block has ended: no labels are left behind
