"""``ray_deployment``: the same mixed-ticket batching as :class:`Batcher`, as a Ray Serve deployment.

Each replica loads the model once (the shared weight and all K bit-packed masks) and batches
requests with ``@serve.batch``. The ticket id travels in the request payload, so one batch holds
many tickets; tickets are deliberately *not* Ray's multiplexed model ids, because Ray splits
batches by model id, which would undo the one-read-of-the-weight-per-batch advantage.
Scale out with ``num_replicas`` (or ``autoscaling_config``) on a multi-machine Ray cluster.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..models.routing import rtl_layers
from .batcher import check_route, run_batch
from .http import jsonable, parse_inputs
from .loading import load_served_model


def ray_deployment(
    path: str | os.PathLike,
    *,
    model: str | Callable[[], nn.Module] | None = None,
    max_batch_size: int = 64,
    batch_wait_timeout_s: float = 0.002,
    num_replicas: int | str = 1,
    ray_actor_options: dict | None = None,
    max_ongoing_requests: int = 256,
    device: str = "cpu",
    name: str = "rtl_kernels",
) -> Any:
    """A bound Ray Serve application serving ``path`` (as ``rtl-kernels serve`` does): ``serve.run(app)``.

    HTTP ``POST`` with ``{"inputs": [[...], ...], "routes": [int, ...]}`` answers ``{"outputs": ...,
    "routes": ...}`` (errors: ``{"error": ...}`` with status 422); a handle's ``predict.remote(payload)``
    does the same from Python. ``model`` builds the architecture of an ``rtl.save`` directory.
    """
    try:
        from ray import serve
        from starlette.responses import JSONResponse
    except ImportError as exc:
        raise ImportError('ray_deployment needs Ray Serve: pip install "ray[serve]"') from exc
    path = os.fspath(path)

    @serve.deployment(
        name=name, num_replicas=num_replicas, ray_actor_options=ray_actor_options or {}, max_ongoing_requests=max_ongoing_requests
    )
    class RTLDeployment:
        def __init__(self) -> None:
            self.model = load_served_model(path, model).to(device)
            self.device = torch.device(device)
            self.num_tickets = rtl_layers(self.model.model)[0].num_tickets

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)
        async def _rows(self, requests: list[tuple[torch.Tensor, int | None]]) -> list:
            # one mixed-ticket forward for every row of every request in this Ray batch
            return run_batch(self.model, [x for x, _ in requests], [r for _, r in requests], self.device)

        async def predict(self, payload: dict) -> dict:
            """``{"inputs": ..., "routes": ...}`` -> ``{"outputs", "routes"}`` or ``{"error": ...}``."""
            try:
                if not isinstance(payload, dict) or set(payload) - {"inputs", "routes"} or "inputs" not in payload:
                    raise ValueError(f"body: expected an object with 'inputs' (and optionally 'routes'), got {_keys(payload)}")
                x = parse_inputs(payload["inputs"])
                routes = payload.get("routes")
                routes = [None] * len(x) if routes is None else routes
                if not isinstance(routes, list) or len(routes) != len(x):
                    raise ValueError(f"routes: expected one route per input ({len(x)}), got {routes!r}")
                checked = [check_route(r, self.num_tickets, self.model.router is not None) for r in routes]
            except (TypeError, ValueError) as exc:
                return {"error": str(exc)}
            results = await asyncio.gather(*(self._rows((row, r)) for row, r in zip(x, checked)))
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                return {"error": str(failed[0])}
            return {"outputs": [jsonable(row) for row, _ in results], "routes": [int(r) for _, r in results]}

        async def __call__(self, request: Any) -> Any:
            try:
                payload = await request.json()
            except ValueError as exc:
                return JSONResponse({"error": f"body: expected JSON ({exc})"}, status_code=422)
            answer = await self.predict(payload)
            return JSONResponse(answer, status_code=422 if "error" in answer else 200)

    return RTLDeployment.bind()


def _keys(payload: object) -> object:
    return sorted(payload) if isinstance(payload, dict) else type(payload).__name__
