"""rtl.serve: the Batcher (mixed-ticket micro-batches, own rows, own errors, drain) and the HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import socket
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
from rtl_kernels.routers import CentroidRouter
from rtl_kernels.serve import Batcher, load_served_model

K = 3
D = 6


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = rtl.convert(nn.Sequential(nn.Linear(D, 8), nn.ReLU(), nn.Linear(8, 4)), K).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    rtl.set_masks(model, {n: torch.rand((K, *p.weight_shape), generator=gen) < 0.5 for n, p in rtl.masks_of(model).items()})
    return model


def _router() -> CentroidRouter:
    gen = torch.Generator().manual_seed(2)
    ids = torch.arange(30) % K
    return CentroidRouter().fit(torch.randn(30, D, generator=gen) + ids.unsqueeze(1).float() * 2, ids)


def _direct(model: nn.Module, x: torch.Tensor, route: int) -> torch.Tensor:
    """Ticket ``route``'s dense copy (mask baked into the weights, float64) on one sample."""
    dense = copy.deepcopy(model)
    for name, layer in named_rtl_layers(model).items():
        parent, _, child = name.rpartition(".")
        setattr(dense.get_submodule(parent) if parent else dense, child, layer.to_dense(route))
    with torch.no_grad():
        return dense.double()(x.double().unsqueeze(0))[0].float()


def test_requests_from_many_threads_get_their_own_rows() -> None:
    model, router = _model(), _router()
    gen = torch.Generator().manual_seed(4)
    xs = torch.randn(40, D, generator=gen)
    given = [None if i % 5 == 0 else i % K for i in range(40)]  # every fifth request left to the router
    chosen = [int(router(x.unsqueeze(0))[0]) if r is None else r for x, r in zip(xs, given)]
    expected = [_direct(model, x, r) for x, r in zip(xs, chosen)]
    with Batcher(rtl.RoutedModel(model, router), max_batch_size=16, max_wait_ms=5) as batcher:

        def client(offset: int) -> list[tuple[int, torch.Tensor, int]]:
            out = []
            for rep in range(25):  # 4 threads x 25 rounds x 10 requests
                i = (offset * 10 + rep) % 40
                futures = [(j, batcher.submit(xs[j], given[j], with_route=True)) for j in range(i, i + 10) if j < 40]
                out += [(j, *f.result(timeout=60)) for j, f in futures]
            return out

        with ThreadPoolExecutor(4) as pool:
            results = [r for chunk in pool.map(client, range(4)) for r in chunk]
        stats = batcher.stats.snapshot()
    assert len(results) > 800 and stats["requests"] == len(results) and stats["failed"] == 0
    wrong = [j for j, row, route in results if route != chosen[j] or not torch.allclose(row, expected[j], rtol=1e-4, atol=1e-5)]
    assert wrong == []


def test_a_batch_closes_when_full_and_mixes_tickets() -> None:
    model = _model(1)
    xs = torch.randn(10, D)
    with Batcher(model, max_batch_size=5, max_wait_ms=60_000) as batcher:
        futures = [batcher.submit(x, i % K) for i, x in enumerate(xs)]
        rows = [f.result(timeout=60) for f in futures]  # two full batches: no 60 s wait
        assert batcher.stats.snapshot()["batches"] == 2
    for i, row in enumerate(rows):
        torch.testing.assert_close(row, _direct(model, xs[i], i % K), rtol=1e-4, atol=1e-5)


def test_a_bad_request_fails_only_its_own_future() -> None:
    model = _model(2)
    batcher = Batcher(model, max_batch_size=8, max_wait_ms=200)
    good = [batcher.submit(torch.randn(D), 1) for _ in range(3)]
    wrong_shape = batcher.submit(torch.randn(D + 1), 0)
    out_of_range = batcher.submit(torch.randn(D), K)
    not_a_tensor = batcher.submit([1.0] * D, 0)
    no_route = batcher.submit(torch.randn(D))  # this model has no router
    more_good = [batcher.submit(torch.randn(D), 2) for _ in range(3)]
    batcher.close()
    assert all(f.result().shape == (4,) for f in good + more_good)
    with pytest.raises(ValueError, match=r"x: .*6.*7|features"):
        wrong_shape.result()
    with pytest.raises(ValueError, match=r"route: expected a ticket id in \[0, 3\), got 3"):
        out_of_range.result()
    with pytest.raises(TypeError, match="x: expected one sample as a tensor"):
        not_a_tensor.result()
    with pytest.raises(ValueError, match="route: expected a ticket id because the model has no router"):
        no_route.result()
    with pytest.raises(RuntimeError, match="submit after close"):
        batcher.submit(torch.randn(D), 0)


def test_close_answers_everything_pending() -> None:
    batcher = Batcher(_model(3), max_batch_size=64, max_wait_ms=60_000)
    futures = [batcher.submit(torch.randn(D), i % K) for i in range(20)]
    start = time.perf_counter()
    batcher.close()
    assert all(f.done() and f.exception() is None for f in futures)
    assert time.perf_counter() - start < 30  # it did not sit out the 60 s wait
    with pytest.raises(ValueError, match="max_batch_size"):
        Batcher(_model(3), max_batch_size=0)


# ----------------------------------------------------------------------------- HTTP

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")


class _Server:
    """The app on a free 127.0.0.1 port in a thread; stopped (gracefully) on exit."""

    def __init__(self, batcher: Batcher) -> None:
        from rtl_kernels.serve.http import create_app

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(batcher), log_level="warning", timeout_graceful_shutdown=30, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.sock.close()


def test_http_predict_errors_metrics_and_graceful_shutdown() -> None:
    model, router = _model(4), _router()
    batcher = Batcher(rtl.RoutedModel(model, router), max_batch_size=32, max_wait_ms=100)
    gen = torch.Generator().manual_seed(6)
    xs = torch.randn(24, D, generator=gen)
    with _Server(batcher) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        assert client.get("/healthz").status_code == 200
        r = client.post("/v1/predict", json={"inputs": xs[:4].tolist(), "routes": [0, 2, 1, 2]})
        assert r.status_code == 200, r.text
        for i, (row, route) in enumerate(zip(r.json()["outputs"], [0, 2, 1, 2])):
            torch.testing.assert_close(torch.tensor(row), _direct(model, xs[i], route), rtol=1e-4, atol=1e-5)
        assert r.json()["routes"] == [0, 2, 1, 2]
        r = client.post("/v1/predict", json={"inputs": xs[4:8].tolist()})  # the saved router chooses
        assert r.status_code == 200 and r.json()["routes"] == router(xs[4:8]).tolist()
        bad = {
            "not json": (b"{inputs: [", "JSON"),
            "no inputs": (json.dumps({"routes": [0]}), "inputs: Field required"),
            "extra field": (json.dumps({"inputs": [[0.0] * D], "tickets": [0]}), "tickets"),
            "ragged": (json.dumps({"inputs": [[0.0] * D, [0.0]]}), "inputs: expected a list of samples"),
            "words": (json.dumps({"inputs": [["a"] * D]}), "inputs"),
            "wrong size": (json.dumps({"inputs": [[0.0] * (D + 2)], "routes": [0]}), "x"),
            "route range": (json.dumps({"inputs": [[0.0] * D], "routes": [K]}), r"route: expected a ticket id in [0, 3), got 3"),
            "route count": (json.dumps({"inputs": [[0.0] * D], "routes": [0, 1]}), "routes: expected one route per input (1), got 2"),
            "float route": (json.dumps({"inputs": [[0.0] * D], "routes": [0.5]}), "routes.0"),
        }
        for name, (body, message) in bad.items():
            r = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
            assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
            assert message in r.json()["error"], (name, r.json())
        assert client.get("/healthz").status_code == 200  # still serving

        async def burst() -> list:
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as ac:
                reqs = [ac.post("/v1/predict", json={"inputs": [xs[i].tolist()], "routes": [i % K]}) for i in range(8, 24)]
                return await asyncio.gather(*reqs)

        for i, r in zip(range(8, 24), asyncio.run(burst())):
            assert r.status_code == 200
            torch.testing.assert_close(torch.tensor(r.json()["outputs"][0]), _direct(model, xs[i], i % K), rtol=1e-4, atol=1e-5)
        metrics = client.get("/metrics").json()
        assert metrics["requests"] >= 24 and metrics["batch_size_max"] > 1 and metrics["latency_ms_p99"] >= metrics["latency_ms_p50"] > 0
        assert metrics["http_status"]["422"] == len(bad)

        # graceful shutdown: requests in flight (held by a long batching window) are all answered
        pending_batcher = Batcher(model, max_batch_size=64, max_wait_ms=1500)
        with ThreadPoolExecutor(8) as pool:
            with _Server(pending_batcher) as late:
                futures = [
                    pool.submit(httpx.post, f"{late.url}/v1/predict", json={"inputs": [xs[i].tolist()], "routes": [1]}, timeout=60)
                    for i in range(8)
                ]
                deadline = time.monotonic() + 60
                while pending_batcher.stats.snapshot()["submitted"] < 8:  # every request is waiting in the batcher now
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
            answers = [f.result() for f in futures]
    assert [a.status_code for a in answers] == [200] * 8
    for i, a in enumerate(answers):
        torch.testing.assert_close(torch.tensor(a.json()["outputs"][0]), _direct(model, xs[i], 1), rtol=1e-4, atol=1e-5)


def test_load_served_model_from_a_run_directory(tmp_path) -> None:
    from rtl_kernels.pipeline.recipe import Recipe
    from rtl_kernels.zoo import build_model

    recipe = Recipe(num_tickets=K, hidden=16)
    (tmp_path / "recipe.json").write_text(recipe.to_json())
    torch.manual_seed(0)
    net = rtl.convert(build_model("mlp", in_features=64, num_classes=10, hidden=16), K)
    rtl.set_masks(net, {n: torch.rand((K, *p.weight_shape)) < 0.5 for n, p in rtl.masks_of(net).items()})
    rtl.save(net, tmp_path / "model")
    x = torch.randn(5, 64)
    router = CentroidRouter().fit(torch.randn(30, 64), torch.arange(30) % K)
    rtl.routers.save_router(router, tmp_path)  # the pipeline keeps the router at the top of the run directory
    served = load_served_model(tmp_path)
    assert isinstance(served.router, CentroidRouter)
    with torch.no_grad():
        torch.testing.assert_close(served(x), rtl.RoutedModel(net, router)(x))
    with pytest.raises(ValueError, match="pass --model module:factory"):
        load_served_model(tmp_path / "model")
    with pytest.raises(rtl.LoadError, match="expected a run directory"):
        load_served_model(tmp_path / "nothing")


def test_load_served_model_routes_the_norms_of_a_model_the_factory_converted(tmp_path) -> None:
    """A factory may return the model converted already (RTL layers, plain BatchNorm): the BatchNorms
    the save keeps per ticket are made routed all the same, so the save loads and serves its statistics."""
    from rtl_kernels.nn import RTLBatchNorm1d

    def arch() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(D, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))

    source = rtl.convert(arch(), K, routed_norms=True)
    gen = torch.Generator().manual_seed(3)
    rtl.set_masks(source, {n: torch.rand((K, *p.weight_shape), generator=gen) < 0.5 for n, p in rtl.masks_of(source).items()})
    with torch.no_grad():  # per-ticket statistics that differ from one shared BatchNorm's
        for k in range(K):
            with rtl.routing(source, k):
                source(torch.randn(16, D, generator=gen) * (k + 1) + k)
    source.eval()
    rtl.save(source, tmp_path)
    served = load_served_model(tmp_path, lambda: rtl.convert(arch(), K))
    assert isinstance(served.model[1], RTLBatchNorm1d) and not served.training
    x, routes = torch.randn(6, D, generator=gen), torch.tensor([0, 1, 2, 2, 1, 0])
    with torch.no_grad():
        torch.testing.assert_close(served(x, routes=routes), rtl.RoutedModel(source)(x, routes=routes), rtol=0, atol=0)


FACTORY = textwrap.dedent(
    """
    from torch import nn

    def build():
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))  # not converted: serve converts like the save
    """
)


def test_cli_serves_a_save_with_a_factory_and_stops_on_sigterm(tmp_path) -> None:
    model = _model(5)
    rtl.save(model, tmp_path / "save")
    (tmp_path / "served_arch.py").write_text(FACTORY)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "rtl_kernels", "serve", str(tmp_path / "save"), "--model", "served_arch:build", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "server did not come up"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        x = torch.randn(2, D)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/predict", json={"inputs": x.tolist(), "routes": [2, 0]}, timeout=60)
        assert r.status_code == 200, r.text
        torch.testing.assert_close(torch.tensor(r.json()["outputs"][1]), _direct(model, x[1], 0), rtol=1e-4, atol=1e-5)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/predict", json={"inputs": x.tolist()}, timeout=60)
        assert r.status_code == 422 and "no router" in r.json()["error"]
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught (exit by SIGTERM)
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        assert "rtl-kernels serve stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
