"""Host overhead of one routed layer call, and 1-row decode against the per-row loop.

Inference (``torch.inference_mode``), CPU, backend "auto", medians from ``benchmarks.timing``
with the approaches interleaved. Cases:

- ``tiny_layer_plan``: ``RTLLinear(16, 16, K=4)`` on ``x [4, 16]`` with a prebuilt plan: what the
  library adds per layer call (``F.linear`` on the same shape is the floor, timed alongside);
- ``tiny_layer_routes``: the same with a routes tensor (the layer builds the plan itself);
- ``tiny_model_per_layer``: a 4-layer ``RoutedModel`` MLP (widths 16) given routes, divided by 4;
- ``decode_1024_k8``: one row through ``RTLLinear(1024, 1024, K=8)`` (routes tensor, route check
  off as in serving) against the per-row loop baseline (K dense masked copies, one ``addmm``).

Run it with the same arguments on two checkouts (``PYTHONPATH=<checkout>``) for a before/after
table; it prints JSON with the CPU model and the load average.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn.functional as F
from torch import nn

import rtl_kernels as rtl
from rtl_kernels.benchmarks.machine import cpu_model
from rtl_kernels.benchmarks.timing import TimerConfig, time_interleaved

CPU = torch.device("cpu")


def tiny_layer_cases() -> dict[str, tuple]:
    torch.manual_seed(0)
    layer = rtl.nn.RTLLinear(16, 16, 4)
    layer.set_masks(torch.rand(4, 16, 16) < 0.5)
    x, routes = torch.randn(4, 16), torch.tensor([0, 3, 1, 3])
    plan = rtl.plan_routes(routes, 4)
    w, b = layer.weight.detach(), layer.bias.detach()
    mlp = rtl.convert(nn.Sequential(*[nn.Linear(16, 16) for _ in range(4)]), 4)
    model = rtl.RoutedModel(mlp)
    return {
        "F.linear (floor)": (lambda: F.linear(x, w, b), 1),
        "tiny_layer_plan": (lambda: layer(x, plan), 1),
        "tiny_layer_routes": (lambda: layer(x, routes), 1),
        "tiny_model_per_layer": (lambda: model(x, routes=routes), 4),
    }


def decode_cases() -> dict[str, tuple]:
    torch.manual_seed(0)
    k, n = 8, 1024
    layer = rtl.nn.RTLLinear(n, n, k)
    masks = torch.rand(k, n, n) < 0.5
    layer.set_masks(masks)
    w, b = layer.weight.detach(), layer.bias.detach()
    copies = w * masks
    xs = [torch.randn(1, n) for _ in range(8)]
    routes = [torch.tensor([i % k]) for i in range(8)]
    state = {"i": 0}

    def _next():
        state["i"] += 1
        return xs[state["i"] % 8], routes[state["i"] % 8]

    def rtl_decode():
        x, r = _next()
        return rtl.routed_linear(x, w, layer.packed_masks, r, b, check_routes=False)

    def per_row_loop():
        x, r = _next()
        y = x.new_empty(1, n)
        for i, t in enumerate(r.tolist()):
            torch.addmm(b, x[i : i + 1], copies[t].T, out=y[i : i + 1])
        return y

    return {"decode_1024_k8": (rtl_decode, 1), "per_row_loop_1024_k8": (per_row_loop, 1)}


def _repeat(fn, inner: int):
    """``inner`` calls per timed sample: a sample of a few µs is mostly timer cost and scheduling noise."""

    def run():
        for _ in range(inner):
            fn()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: host overhead, shared machine)")
    parser.add_argument("--seconds", type=float, default=1.0, help="measured seconds per approach (split over 4 rounds)")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="cpu: process CPU time (default; one thread, leaves out time descheduled on a loaded machine)",
    )
    parser.add_argument("--inner", type=int, default=20, help="calls per timed sample (default 20)")
    parser.add_argument("--label", default="", help="free text stored with the result (e.g. the commit)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = TimerConfig(warmup_s=0.2, min_time_s=args.seconds, min_repeats=20, max_repeats=20_000, rounds=4, clock=args.clock)
    results = {}
    with torch.inference_mode():
        for cases in (tiny_layer_cases(), decode_cases()):
            timings = time_interleaved({name: _repeat(fn, args.inner) for name, (fn, _) in cases.items()}, [()], CPU, config)
            for name, (_, per) in cases.items():
                t = timings[name]
                per = per * args.inner
                results[name] = {
                    "median_us": t.median_s * 1e6 / per,
                    "p10_us": t.p10_s * 1e6 / per,
                    "p90_us": t.p90_s * 1e6 / per,
                    "repeats": t.repeats,
                }
    out = {
        "label": args.label,
        "cpu": cpu_model(),
        "threads": args.threads,
        "clock": args.clock,
        "calls_per_sample": args.inner,
        "loadavg_before": os.getloadavg(),
        "torch": torch.__version__,
        "results": results,
    }
    out["loadavg_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
