"""``rtl-kernels serve PATH``: an HTTP JSON server with mixed-ticket micro-batching (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a saved RTL model over HTTP with mixed-ticket batching",
        description=(
            "Serve PATH (a run directory of `rtl-kernels run`, or an rtl.save directory with --model module:factory) over HTTP. "
            'POST /v1/predict {"inputs": [[...], ...], "routes": [int, ...]} answers {"outputs": [...], "routes": [...]}; routes '
            "may be left out when the save holds a router. Requests from all clients that arrive within --max-wait-ms run as one "
            "batch that mixes tickets. GET /healthz answers 200, GET /metrics the request, batch-size and latency counters. "
            'Needs pip install "rtl-kernels[serve]".'
        ),
    )
    p.add_argument("path", type=Path, help="run directory (recipe.json + model/) or rtl.save directory")
    p.add_argument(
        "--model", default=None, metavar="MODULE:FACTORY", help="no-argument callable returning the saved architecture (converted or not)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--max-batch-size", type=int, default=64, help="most requests in one batch (1 turns batching off; default 64)")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="how long the first request of a batch waits for others (default 2.0)")
    p.add_argument("--log-every", type=float, default=60.0, metavar="SECONDS", help="log a metrics line this often (0: never; default 60)")
    p.add_argument(
        "--graceful-timeout", type=float, default=30.0, metavar="SECONDS", help="on shutdown, wait this long for requests in flight"
    )
    p.add_argument("--device", default="cpu", help="torch device to serve on (default cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..serve import Batcher, load_served_model
    from ..serve.http import serve

    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port: expected a TCP port in [1, 65535], got {args.port}")
    model = load_served_model(args.path, args.model).to(args.device)
    batcher = Batcher(model, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms)
    router = type(model.router).__name__ if model.router is not None else "none (routes required)"
    logger.info("serving %s on http://%s:%d (K = %d, router: %s)", args.path, args.host, args.port, batcher.num_tickets, router)
    serve(batcher, host=args.host, port=args.port, log_every_s=args.log_every, graceful_timeout_s=args.graceful_timeout)
    return 0
