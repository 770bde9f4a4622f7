"""``Batcher``: single requests from any thread, run as mixed-ticket batches (dynamic micro-batching).

One worker thread takes the first waiting request, then collects more until ``max_batch_size``
requests are in hand or ``max_wait_ms`` has passed since the first one arrived, and runs them as
one forward: the routed kernels read the shared weight once for every ticket in the batch. Each
caller's ``Future`` receives exactly its own output row. A bad request (not a tensor, a route
outside ``[0, K)``) fails its own future at once; requests of different shapes run as separate
batches, and a batch that fails is retried one request at a time, so only the request that
causes an error receives it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from torch import nn

from ..models.routing import RoutedModel, rtl_layers

logger = logging.getLogger(__name__)

_STOP = object()


@dataclass
class _Request:
    x: torch.Tensor
    route: int | None
    future: Future
    with_route: bool = False
    arrived: float = field(default_factory=time.perf_counter)


class BatchStats:
    """Counters of a :class:`Batcher`: requests, batches, batch sizes and latency percentiles (thread-safe)."""

    def __init__(self, window: int = 10_000) -> None:
        self._lock = threading.Lock()
        self.submitted = 0  # accepted by submit (counted under the batcher's submit lock)
        self.requests = 0
        self.failed = 0
        self.batches = 0
        self._sizes: deque[int] = deque(maxlen=window)
        self._latency_ms: deque[float] = deque(maxlen=window)

    def record(self, size: int, latencies_ms: list[float], failed: int) -> None:
        with self._lock:
            self.batches += 1
            self.requests += size
            self.failed += failed
            self._sizes.append(size)
            self._latency_ms.extend(latencies_ms)

    def snapshot(self) -> dict:
        """``submitted``, ``requests`` (run), ``failed``, ``batches``, mean/max batch size, p50/p99 latency (ms) of the recent window."""
        with self._lock:
            sizes, lat = list(self._sizes), sorted(self._latency_ms)
            out = {"submitted": self.submitted, "requests": self.requests, "failed": self.failed, "batches": self.batches}
        out["batch_size_mean"] = sum(sizes) / len(sizes) if sizes else 0.0
        out["batch_size_max"] = max(sizes, default=0)
        out["latency_ms_p50"] = _percentile(lat, 0.50)
        out["latency_ms_p99"] = _percentile(lat, 0.99)
        return out


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class Batcher:
    """Dynamic micro-batching around a converted model or a :class:`~rtl_kernels.RoutedModel`.

    ``submit(x, route=None)`` takes one sample (no batch dimension) and returns a
    ``concurrent.futures.Future`` of its output row. ``route`` is a ticket id, or None to let the
    model's router choose (it runs once on all the batch's samples without a route).
    ``max_batch_size=1`` turns batching off. ``close()`` finishes what is pending.
    """

    def __init__(self, model: nn.Module, *, max_batch_size: int = 64, max_wait_ms: float = 2.0) -> None:
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size: expected a positive int, got {max_batch_size!r}")
        if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, (int, float)) or not 0 <= max_wait_ms < float("inf"):
            raise ValueError(f"max_wait_ms: expected a non-negative number of milliseconds, got {max_wait_ms!r}")
        self.model = model if isinstance(model, RoutedModel) else RoutedModel(model)
        self.num_tickets = rtl_layers(self.model.model)[0].num_tickets
        self.max_batch_size = max_batch_size
        self.max_wait_ms = float(max_wait_ms)
        self.stats = BatchStats()
        self._device = next(self.model.model.parameters()).device
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()
        self._worker = threading.Thread(target=self._loop, name="rtl-batcher", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ callers

    def submit(self, x: torch.Tensor, route: int | None = None, *, with_route: bool = False) -> Future:
        """Queue one sample; the future gets its output (or the error that this request caused).

        With ``with_route=True`` the result is ``(output, route)``, the ticket that was used.
        """
        future: Future = Future()
        try:
            request = _Request(self._checked_input(x), self._checked_route(route), future, with_route)
        except (TypeError, ValueError) as exc:
            future.set_exception(exc)
            return future
        with self._close_lock:  # no request may slip in behind the stop marker
            if self._closed:
                raise RuntimeError("Batcher: submit after close()")
            self._queue.put(request)
            self.stats.submitted += 1
        return future

    def submit_many(self, xs: torch.Tensor, routes: list[int | None] | None = None, *, with_route: bool = False) -> list[Future]:
        """:meth:`submit` for every row of ``xs`` (each joins whatever batch is forming)."""
        routes = [None] * len(xs) if routes is None else routes
        if len(routes) != len(xs):
            raise ValueError(f"routes: expected one route per input ({len(xs)}), got {len(routes)}")
        return [self.submit(x, r, with_route=with_route) for x, r in zip(xs, routes)]

    def close(self, timeout: float | None = None) -> None:
        """Stop taking requests, run every pending one, and stop the worker."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._worker.join(timeout)

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _checked_input(self, x: object) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected one sample as a tensor (no batch dimension), got {type(x).__name__}")
        return x

    def _checked_route(self, route: object) -> int | None:
        return check_route(route, self.num_tickets, self.model.router is not None)

    # ------------------------------------------------------------------ worker

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            deadline = first.arrived + self.max_wait_ms / 1e3
            while len(batch) < self.max_batch_size:
                wait = deadline - time.perf_counter()
                try:
                    item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            self._run(batch)

    def _run(self, batch: list[_Request]) -> None:
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        results = run_batch(self.model, [r.x for r in live], [r.route for r in live], self._device)
        failed = 0
        for r, result in zip(live, results):
            if isinstance(result, BaseException):
                r.future.set_exception(result)
                failed += 1
            else:
                r.future.set_result(result if r.with_route else result[0])
        done = time.perf_counter()
        self.stats.record(len(live), [(done - r.arrived) * 1e3 for r in live], failed)


def check_route(route: object, num_tickets: int, has_router: bool) -> int | None:
    """``route`` as an int in ``[0, num_tickets)``, or None when the router is to choose (it must exist)."""
    if route is None:
        if not has_router:
            raise ValueError("route: expected a ticket id because the model has no router, got None")
        return None
    if isinstance(route, torch.Tensor) and route.numel() == 1 and not route.dtype.is_floating_point:
        route = int(route)
    if isinstance(route, bool) or not isinstance(route, int):
        raise TypeError(f"route: expected an int ticket id or None, got {type(route).__name__}")
    if not 0 <= route < num_tickets:
        raise ValueError(f"route: expected a ticket id in [0, {num_tickets}), got {route}")
    return route


def run_batch(
    model: RoutedModel, samples: list[torch.Tensor], routes: list[int | None], device: torch.device
) -> list[tuple[object, int] | BaseException]:
    """One mixed-ticket forward per input shape; per request ``(output, route)`` or the error it caused.

    Samples of one shape run together; when such a batch fails, its requests run one by one, so
    only the request that causes an error receives it. Routes that are None come from the router,
    run once on all of them.
    """
    results: list = [None] * len(samples)
    groups: dict[tuple, list[int]] = {}
    for i, x in enumerate(samples):
        groups.setdefault((tuple(x.shape), x.dtype, x.device), []).append(i)
    for members in groups.values():
        _run_group(model, samples, routes, device, members, results)
    return results


def _run_group(model: RoutedModel, samples: list, routes: list, device: torch.device, members: list[int], results: list) -> None:
    try:
        rows, chosen = _forward(model, [samples[i] for i in members], [routes[i] for i in members], device)
    except Exception as exc:
        if len(members) > 1:
            for i in members:
                _run_group(model, samples, routes, device, [i], results)
        else:
            results[members[0]] = exc
        return
    for i, row, route in zip(members, rows, chosen):
        results[i] = (row, route)


def _forward(model: RoutedModel, samples: list[torch.Tensor], given: list[int | None], device: torch.device) -> tuple[list, list[int]]:
    x = torch.stack(samples).to(device)
    given = list(given)
    with torch.inference_mode():
        missing = [i for i, route in enumerate(given) if route is None]
        if missing:
            for i, route in zip(missing, model.route(x[missing]).tolist()):
                given[i] = route
        out = model(x, routes=torch.tensor(given, dtype=torch.int64, device=device))
    return _split_rows(out, len(samples)), given


def _split_rows(out: object, n: int) -> list:
    """The model's batch output as ``n`` per-sample outputs (tensors, or tuples / dicts of them)."""
    if isinstance(out, torch.Tensor):
        if out.dim() == 0 or out.shape[0] != n:
            raise ValueError(f"model: expected an output with a batch dimension of {n}, got shape {list(out.shape)}")
        return list(out.unbind(0))
    if isinstance(out, (tuple, list)):
        parts = [_split_rows(o, n) if o is not None else [None] * n for o in out]
        return [type(out)(p[i] for p in parts) for i in range(n)]
    if isinstance(out, dict):
        parts = {k: _split_rows(v, n) for k, v in out.items()}
        return [{k: v[i] for k, v in parts.items()} for i in range(n)]
    raise TypeError(f"model: expected a tensor output (or a tuple / dict of tensors), got {type(out).__name__}")
