"""rtl.serve.ray_deployment on a local Ray cluster, loopback only, one replica (skipped without ray[serve])."""

from __future__ import annotations

import socket

import pytest
import torch
from torch import nn

import rtl_kernels as rtl

serve = pytest.importorskip("ray.serve")
ray = pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")

K, D = 3, 6


def test_one_replica_batches_mixed_tickets_over_loopback(tmp_path) -> None:
    torch.manual_seed(0)
    model = rtl.convert(nn.Sequential(nn.Linear(D, 8), nn.ReLU(), nn.Linear(8, 4)), K).eval()
    rtl.set_masks(model, {n: torch.rand((K, *p.weight_shape)) < 0.5 for n, p in rtl.masks_of(model).items()})
    rtl.save(model, tmp_path / "save")
    (tmp_path / "ray_arch.py").write_text(
        "from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))\n"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(tmp_path)}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = rtl.serve.ray_deployment(tmp_path / "save", model="ray_arch:build", max_batch_size=16, batch_wait_timeout_s=0.05)
        handle = serve.run(app, route_prefix="/rtl")
        x = torch.randn(5, D)
        routes = [0, 2, 1, 2, 0]
        answer = handle.predict.remote({"inputs": x.tolist(), "routes": routes}).result(timeout_s=120)
        with torch.no_grad():
            expected = rtl.RoutedModel(model)(x, routes=torch.tensor(routes))
        torch.testing.assert_close(torch.tensor(answer["outputs"]), expected, rtol=1e-4, atol=1e-5)
        assert answer["routes"] == routes
        r = httpx.post(f"http://127.0.0.1:{port}/rtl", json={"inputs": x[:2].tolist(), "routes": [1, K]}, timeout=120)
        assert r.status_code == 422 and "route: expected a ticket id in [0, 3), got 3" in r.json()["error"]
        r = httpx.post(f"http://127.0.0.1:{port}/rtl", json={"inputs": x[:2].tolist(), "routes": [1, 1]}, timeout=120)
        assert r.status_code == 200
        torch.testing.assert_close(
            torch.tensor(r.json()["outputs"]), rtl.RoutedModel(model)(x[:2], routes=1).detach(), rtol=1e-4, atol=1e-5
        )
    finally:
        serve.shutdown()
        ray.shutdown()
