"""The HTTP JSON server of ``rtl-kernels serve``: FastAPI + uvicorn around one :class:`Batcher`.

``POST /v1/predict`` with ``{"inputs": [[...], ...], "routes": [int, ...]}`` (routes optional when
the model has a router) answers ``{"outputs": [...], "routes": [...]}``; every input row joins the
batch that is forming, whichever client sent it. ``GET /healthz`` answers 200, ``GET /metrics``
the counters (requests, batch sizes, p50/p99 latency). Bad requests get a 4xx JSON error
``{"error": "<what>: <problem>"}`` and the server keeps serving. On shutdown, uvicorn stops
accepting, the requests in flight are answered, and the batcher drains.
"""

import asyncio
import logging
import math
from collections import Counter
from contextlib import asynccontextmanager
from typing import Any

import torch

from .batcher import Batcher

logger = logging.getLogger(__name__)


def _require_fastapi():
    try:
        import fastapi
        import pydantic
    except ImportError as exc:
        raise ImportError('rtl-kernels serve needs FastAPI and uvicorn: pip install "rtl-kernels[serve]"') from exc
    return fastapi, pydantic


def parse_inputs(inputs: list[Any]) -> torch.Tensor:
    if not inputs:
        raise ValueError("inputs: expected at least one sample, got an empty list")
    try:
        x = torch.tensor(inputs, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"inputs: expected a list of samples, each a (nested) list of numbers of one shape ({exc})") from None
    if x.dim() < 2:
        raise ValueError(f"inputs: expected a list of samples (each a list of numbers), got shape {list(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("inputs: expected finite numbers, got NaN or infinity")
    return x


def jsonable(row: object) -> object:
    if isinstance(row, torch.Tensor):
        return row.float().tolist()
    if isinstance(row, (tuple, list)):
        return [jsonable(r) for r in row]
    if isinstance(row, dict):
        return {k: jsonable(v) for k, v in row.items()}
    return row


def create_app(batcher: Batcher, *, log_every_s: float = 0.0, close_batcher: bool = True) -> Any:
    """The FastAPI app serving ``batcher``; ``log_every_s > 0`` also logs the metrics periodically."""
    fastapi, pydantic = _require_fastapi()
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    class PredictRequest(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        inputs: list[Any]
        routes: list[int] | None = None

    statuses: Counter[int] = Counter()

    def metrics() -> dict:
        return {**batcher.stats.snapshot(), "http_status": {str(k): v for k, v in sorted(statuses.items())}}

    @asynccontextmanager
    async def lifespan(app: Any):
        task = asyncio.create_task(_log_periodically(metrics, log_every_s)) if log_every_s > 0 else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
            if close_batcher:
                await asyncio.to_thread(batcher.close)  # answers whatever is still pending
            logger.info("rtl-kernels serve stopped: %s", metrics())

    app = fastapi.FastAPI(title="rtl-kernels serve", lifespan=lifespan)

    def error(status: int, message: str) -> JSONResponse:
        statuses[status] += 1
        return JSONResponse(status_code=status, content={"error": message})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Any, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return error(422, f"{where}: {first.get('msg', 'malformed request')}")

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/metrics")
    async def get_metrics() -> dict:
        return metrics()

    @app.post("/v1/predict")
    async def predict(body: PredictRequest) -> Any:
        try:
            x = parse_inputs(body.inputs)
            futures = batcher.submit_many(x, body.routes, with_route=True)
        except (TypeError, ValueError) as exc:
            return error(422, str(exc))
        except RuntimeError as exc:  # closed: shutting down
            return error(503, str(exc))
        results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            exc = failures[0]
            if isinstance(exc, (TypeError, ValueError)):
                return error(422, str(exc))
            logger.error("predict failed: %r", exc)
            return error(500, f"internal error: {type(exc).__name__}: {exc}")
        statuses[200] += 1
        return {"outputs": [jsonable(row) for row, _ in results], "routes": [int(route) for _, route in results]}

    return app


async def _log_periodically(metrics: Any, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        m = metrics()
        logger.info(
            "serve: %d requests (%d failed), %d batches, mean batch %.1f, p50 %.2f ms, p99 %.2f ms",
            m["requests"], m["failed"], m["batches"], m["batch_size_mean"], m["latency_ms_p50"], m["latency_ms_p99"],
        )  # fmt: skip


def serve(
    batcher: Batcher,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_every_s: float = 0.0,
    graceful_timeout_s: float = 30.0,
    sockets: list | None = None,
) -> Any:
    """Run the server until SIGINT / SIGTERM (or ``server.should_exit``); returns the uvicorn server."""
    _require_fastapi()
    import uvicorn

    if not math.isfinite(graceful_timeout_s) or graceful_timeout_s < 0:
        raise ValueError(f"graceful_timeout_s: expected a non-negative number of seconds, got {graceful_timeout_s}")
    config = uvicorn.Config(
        create_app(batcher, log_every_s=log_every_s),
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=math.ceil(graceful_timeout_s),
        lifespan="on",
    )
    server = uvicorn.Server(config)
    server.run(sockets=sockets)
    return server
