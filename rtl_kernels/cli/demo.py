"""``rtl-kernels demo``: an end-to-end routed run on a small model (replaced by the pipeline demo)."""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch import nn

import rtl_kernels as rtl


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the end-to-end demo", description="Convert a small MLP to K tickets, route a batch, check every row against its ticket's dense model, save and reload.")
    p.add_argument("--tickets", type=int, default=4, help="number of tickets K (default 4)")
    p.add_argument("--density", type=float, default=0.5, help="fraction of weights each random ticket keeps (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    rtl.convert(model, args.tickets)
    print(model.rtl_conversion_summary)
    masks = {name: torch.rand(args.tickets, *p.weight_shape) < args.density for name, p in rtl.masks_of(model).items()}
    rtl.set_masks(model, masks)
    x = torch.randn(32, 64)
    routes = torch.randint(0, args.tickets, (32,))
    start = time.perf_counter()
    with rtl.routing(model, routes):
        y = model(x)
    elapsed = time.perf_counter() - start
    worst = 0.0
    for k in range(args.tickets):
        dense = nn.Sequential(model[0].to_dense(k), nn.ReLU(), model[2].to_dense(k))
        rows = routes == k
        if rows.any():
            worst = max(worst, float((dense(x[rows]) - y[rows]).abs().max()))
    print(f"routed {len(routes)} rows over {args.tickets} tickets (rows per ticket: {torch.bincount(routes, minlength=args.tickets).tolist()})")
    print(f"backends on cpu: {rtl.available_backends('cpu')}; forward took {elapsed * 1e3:.2f} ms")
    print(f"max |routed - per-ticket dense model| = {worst:.2e}")
    print(f"mean Jaccard overlap between tickets: {rtl.jaccard(rtl.masks_of(model)).mean().item():.3f}")
    with tempfile.TemporaryDirectory() as tmp:
        rtl.save(model, tmp, metadata={"demo": True})
        fresh = rtl.convert(nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)), args.tickets)
        rtl.load(tmp, fresh)
        same = torch.equal(_routed(fresh, x, routes), y)
    print(f"save -> load round trip reproduces the outputs exactly: {same}")
    return 0 if worst < 1e-4 and same else 1


def _routed(model: nn.Module, x: torch.Tensor, routes: torch.Tensor) -> torch.Tensor:
    with rtl.routing(model, routes):
        return model(x)
