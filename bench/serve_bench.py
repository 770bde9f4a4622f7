"""Load test of ``rtl-kernels serve``: concurrent asyncio httpx clients against HTTP servers on 127.0.0.1.

Servers (each its own process, same JSON API, same model built from a seed):
- ``batched``: the rtl.serve Batcher, mixed-ticket micro-batches (max_batch_size 64, max_wait_ms 2);
- ``unbatched``: the same server with batching off (max_batch_size 1);
- ``swap``: one dense model; per request the ticket's masked weights ``W * M_k`` are copied in
  (skipped when the ticket did not change), then the request runs: what model-merging toolkits do;
- ``dense_copies``: K dense models, one per ticket, each request on its ticket's copy.
Every answer is checked against a float64 direct computation (ticket k's dense copy); wrong or
lost answers are counted. Closed-loop clients (each sends its next request after the answer) or
an open loop at a fixed request rate. Writes JSON + Markdown + a plot under bench/results/.

    python bench/serve_bench.py            # the recorded run (about 10 minutes on 2 busy cores)
    python bench/serve_bench.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

import rtl_kernels as rtl
from rtl_kernels.benchmarks.machine import cpu_model
from rtl_kernels.models.state import named_rtl_layers
from rtl_kernels.serve import Batcher, BatchStats

DIMS = (1024, 2048, 2048, 16)
DENSITY = 0.5
RESULTS = Path(__file__).resolve().parent / "results"


def make_model(k: int, seed: int = 0) -> nn.Module:
    """The served model: an MLP converted with K tickets, random masks of density 0.5 (deterministic)."""
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    for i in range(len(DIMS) - 1):
        mods += [nn.Linear(DIMS[i], DIMS[i + 1]), nn.ReLU()]
    model = rtl.convert(nn.Sequential(*mods[:-1]), k).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    rtl.set_masks(model, {n: torch.rand((k, *p.weight_shape), generator=gen) < DENSITY for n, p in rtl.masks_of(model).items()})
    return model


def dense_copy(model: nn.Module, ticket: int) -> nn.Module:
    """A plain copy of ``model`` with ``ticket``'s masks baked into the weights."""
    import copy

    dense = copy.deepcopy(model)
    for name, layer in named_rtl_layers(model).items():
        parent, _, child = name.rpartition(".")
        setattr(dense.get_submodule(parent) if parent else dense, child, layer.to_dense(ticket))
    return dense


class SerialEngine:
    """The baselines' engine: one request at a time on one worker thread (Batcher's interface for the app)."""

    def __init__(self, run_row) -> None:
        self.stats = BatchStats()
        self._pool = ThreadPoolExecutor(1)
        self._run_row = run_row

    def submit_many(self, xs: torch.Tensor, routes: list | None, *, with_route: bool = False) -> list[Future]:
        if routes is None or len(routes) != len(xs):
            raise ValueError(f"routes: expected one route per input ({len(xs)}), got {routes!r}")
        return [self._pool.submit(self._timed, x, int(r)) for x, r in zip(xs, routes)]

    def _timed(self, x: torch.Tensor, route: int) -> tuple[torch.Tensor, int]:
        start = time.perf_counter()
        with torch.inference_mode():
            row = self._run_row(x, route)
        self.stats.record(1, [(time.perf_counter() - start) * 1e3], 0)
        return row, route

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def swap_engine(model: nn.Module, k: int) -> SerialEngine:
    dense = dense_copy(model, 0)
    layers = list(named_rtl_layers(model).items())
    masks = {name: layer.get_masks() for name, layer in layers}  # what a merging toolkit keeps per task
    current = [0]

    def run_row(x: torch.Tensor, route: int) -> torch.Tensor:
        if route != current[0]:
            for name, layer in layers:
                torch.mul(layer.weight, masks[name][route], out=dense.get_submodule(name).weight.data)
            current[0] = route
        return dense(x.unsqueeze(0))[0]

    return SerialEngine(run_row)


def copies_engine(model: nn.Module, k: int) -> SerialEngine:
    copies = [dense_copy(model, t) for t in range(k)]
    return SerialEngine(lambda x, route: copies[route](x.unsqueeze(0))[0])


def run_server(mode: str, k: int, port: int) -> None:
    from rtl_kernels.serve.http import serve

    model = make_model(k)
    if mode == "batched":
        engine = Batcher(model, max_batch_size=64, max_wait_ms=2.0)
    elif mode == "unbatched":
        engine = Batcher(model, max_batch_size=1, max_wait_ms=0.0)
    elif mode == "swap":
        engine = swap_engine(model, k)
    else:
        engine = copies_engine(model, k)
    serve(engine, host="127.0.0.1", port=port, graceful_timeout_s=5)


# ----------------------------------------------------------------------------- client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, mode: str, k: int) -> None:
        self.mode, self.k, self.port = mode, k, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, __file__, "--serve", mode, "--k", str(k), "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 180) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {self.mode} exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise TimeoutError(f"server {self.mode} did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def expected_outputs(k: int, xs: torch.Tensor) -> torch.Tensor:
    """``[K, N, out]``: every input under every ticket, float64 direct computation."""
    model = make_model(k)
    with torch.no_grad():
        return torch.stack([dense_copy(model, t).double()(xs.double()) for t in range(k)]).float()


async def drive(url: str, xs, expected, tickets, *, clients: int, requests: int, rate: float = 0.0, seed: int = 0) -> dict:
    """Send ``requests`` single-row requests; closed loop with ``clients`` workers, or open loop at ``rate`` req/s."""
    import httpx

    rng = random.Random(seed)
    plan = [(rng.randrange(len(xs)), rng.choice(tickets)) for _ in range(requests)]
    latencies: list[float] = []
    wrong = lost = 0
    limits = httpx.Limits(max_connections=max(clients, 64), max_keepalive_connections=max(clients, 64))

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one(i: int, t: int) -> None:
            nonlocal wrong, lost
            start = time.perf_counter()
            try:
                r = await client.post("/v1/predict", json={"inputs": [xs[i].tolist()], "routes": [t]})
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append((time.perf_counter() - start) * 1e3)
            if not ok:
                lost += 1
            elif not torch.allclose(torch.tensor(r.json()["outputs"][0]), expected[t, i], rtol=1e-3, atol=1e-4):
                wrong += 1

        start = time.perf_counter()
        if rate > 0:
            tasks = []
            for n, (i, t) in enumerate(plan):
                delay = start + n / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i, t)))
            await asyncio.gather(*tasks)
        else:
            queue = iter(plan)

            async def worker() -> None:
                for i, t in queue:
                    await one(i, t)

            await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - start
        server = (await client.get("/metrics")).json()
    lat = sorted(latencies)
    return {
        "requests": requests,
        "throughput_rps": round(requests / elapsed, 1),
        "p50_ms": round(lat[len(lat) // 2], 2),
        "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2),
        "wrong": wrong,
        "lost": lost,
        "server_batch_size_mean": round(server["batch_size_mean"], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", choices=("batched", "unbatched", "swap", "dense_copies"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (results not written)")
    parser.add_argument("--requests", type=int, default=2500, help="requests per server in the main comparison (K=8, 16 clients)")
    args = parser.parse_args()
    if args.serve:
        run_server(args.serve, args.k, args.port)
        return 0
    main_n = 200 if args.quick else args.requests
    sweep_n = 100 if args.quick else 400
    gen = torch.Generator().manual_seed(123)
    xs = torch.randn(256, DIMS[0], generator=gen)
    runs = []
    load_start = os.getloadavg()

    def measure(mode: str, k: int, configs: list[dict]) -> None:
        srv = Server(mode, k)
        try:
            srv.wait_ready()
            expected = expected_outputs(k, xs)
            for cfg in configs:
                tickets = list(range(cfg.get("distinct", k)))
                asyncio.run(drive(srv.url, xs, expected, tickets, clients=cfg["clients"], requests=20, rate=0.0))  # warm-up
                result = asyncio.run(
                    drive(srv.url, xs, expected, tickets, clients=cfg["clients"], requests=cfg["n"], rate=cfg.get("rate", 0.0))
                )
                row = {
                    "server": mode,
                    "K": k,
                    "clients": cfg["clients"],
                    "distinct_tickets": len(tickets),
                    "rate_rps": cfg.get("rate", 0.0),
                    **result,
                }
                row["loadavg_1m"] = round(os.getloadavg()[0], 2)
                runs.append(row)
                print(json.dumps(row), flush=True)
        finally:
            srv.stop()

    for mode in ("batched", "unbatched", "swap", "dense_copies"):
        configs = [{"clients": 16, "n": main_n}]
        if mode in ("batched", "swap"):
            configs += [{"clients": 16, "n": sweep_n, "distinct": 1}, {"clients": 16, "n": sweep_n, "distinct": 2}]
            configs += [{"clients": 64, "n": sweep_n, "rate": 150.0}, {"clients": 64, "n": sweep_n, "rate": 400.0}]
        measure(mode, 8, configs)
    for k in (1, 4, 16):
        for mode in ("batched", "swap"):
            measure(mode, k, [{"clients": 16, "n": sweep_n}])
    meta = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "loadavg_start": [round(v, 2) for v in load_start],
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "model": f"MLP {'-'.join(map(str, DIMS))}, density {DENSITY}",
        "note": "server and client share the machine's cores with other jobs; see loadavg",
    }
    if not args.quick:
        write_results(meta, runs)
    return 0


def write_results(meta: dict, runs: list[dict]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_bench.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=2) + "\n")
    main_rows = {r["server"]: r for r in runs if r["K"] == 8 and r["clients"] == 16 and r["distinct_tickets"] == 8 and not r["rate_rps"]}
    swap = main_rows.get("swap")
    lines = [
        "# rtl-kernels serve load test",
        "",
        f"{meta['cpu']}, {meta['cores']} cores, torch {meta['torch']}, {meta['date_utc']} UTC; load average "
        f"{meta['loadavg_start'][0]} at start, {meta['loadavg_end'][0]} at end (shared machine). Model: {meta['model']}.",
        "Single-row HTTP requests from asyncio httpx clients on 127.0.0.1; every answer checked against a float64 direct computation.",
        "",
        "| server | K | clients | distinct tickets | rate (req/s) | requests | throughput (req/s) | vs swap | p50 ms | p99 ms | mean batch | wrong | lost |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        ratio = ""
        if swap and r["K"] == 8 and r["clients"] == 16 and r["distinct_tickets"] == 8 and not r["rate_rps"]:
            ratio = f"{r['throughput_rps'] / swap['throughput_rps']:.2f}x"
        lines.append(
            f"| {r['server']} | {r['K']} | {r['clients']} | {r['distinct_tickets']} | {r['rate_rps'] or 'closed loop'} | {r['requests']} | "
            f"{r['throughput_rps']} | {ratio} | {r['p50_ms']} | {r['p99_ms']} | {r['server_batch_size_mean']} | {r['wrong']} | {r['lost']} |"
        )
    total = sum(r["requests"] for r in runs)
    lines += ["", f"Total: {total} requests, {sum(r['wrong'] for r in runs)} wrong, {sum(r['lost'] for r in runs)} lost."]
    (RESULTS / "serve_bench.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        names = list(main_rows)
        ax[0].bar(names, [main_rows[n]["throughput_rps"] for n in names])
        ax[0].set_ylabel("requests / s")
        ax[0].set_title("K = 8, 16 clients: throughput")
        ax[1].bar(names, [main_rows[n]["p99_ms"] for n in names], color="tab:orange")
        ax[1].set_ylabel("p99 latency (ms)")
        ax[1].set_title("K = 8, 16 clients: p99 latency")
        for a in ax:
            a.tick_params(axis="x", rotation=20)
        fig.suptitle(f"{meta['cpu']} (load avg {meta['loadavg_start'][0]})", fontsize=8)
        fig.tight_layout()
        fig.savefig(RESULTS / "serve_bench.png", dpi=110)
    except ImportError:
        pass


if __name__ == "__main__":
    threading.current_thread().name = "serve-bench"
    sys.exit(main())
