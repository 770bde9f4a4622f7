"""CPU routed-linear kernel benchmark: the C++ kernels side by side with dense and masked baselines.

Run ``python bench/cpu_kernel_bench.py``; prints a table and writes
``bench/results/cpu_kernel_<date>.json`` and ``.md``. Times are per call on the
threads torch uses (``torch.get_num_threads()``); methods are timed in interleaved rounds and
the best round is reported (robust to other load on a shared machine).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import rtl_kernels as rtl
from rtl_kernels.backends import extension
from rtl_kernels.dispatch.plan import make_plan

RESULTS = Path(__file__).resolve().parent / "results"


CLOCK = time.perf_counter


def time_side_by_side(fns: dict[str, Callable[[], object]], rounds: int, min_round_s: float) -> dict[str, float]:
    """ms per call of each function: rounds interleave the functions, and the best round counts.

    Interleaving exposes every method to the same machine state; the best round filters out
    time slices lost to other processes on a shared machine.
    """
    reps = {}
    for name, fn in fns.items():
        fn()
        t0 = CLOCK()
        fn()
        reps[name] = max(1, int(min_round_s / max(CLOCK() - t0, 1e-6)))
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = CLOCK()
            for _ in range(reps[name]):
                fn()
            best[name] = min(best[name], (CLOCK() - t0) / reps[name] * 1e3)
    return best


def make_case(rows: int, tickets: int, n: int, c: int, density: float, dtype: torch.dtype, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, c, generator=g).to(dtype)
    w = torch.randn(n, c, generator=g).to(dtype)
    masks = torch.rand(tickets, n, c, generator=g) < density
    routes = torch.arange(rows) % tickets
    return {"x": x, "w": w, "masks": masks, "packed": rtl.pack_masks(masks), "routes": routes, "plan": make_plan(routes, tickets)}


def baselines(case: dict) -> dict[str, Callable[[], object]]:
    x, w, masks, routes = case["x"], case["w"], case["masks"], case["routes"]
    active = [(k, (routes == k).nonzero().squeeze(1)) for k in routes.unique().tolist()]
    copies = {k: w * masks[k] for k, _ in active}

    def naive():
        y = x.new_empty(x.shape[0], w.shape[0])
        for k, idx in active:
            y.index_copy_(0, idx, F.linear(x.index_select(0, idx), w * masks[k]))
        return y

    def cached_copies():
        y = x.new_empty(x.shape[0], w.shape[0])
        for k, idx in active:
            y.index_copy_(0, idx, F.linear(x.index_select(0, idx), copies[k]))
        return y

    return {
        "dense F.linear (unmasked W)": lambda: F.linear(x, w),
        "naive per-ticket masking": naive,
        "loop over K cached masked copies": cached_copies,
    }


def kernels(case: dict, ext) -> dict[str, Callable[[], object]]:
    x, w, packed, plan, routes = case["x"], case["w"], case["packed"], case["plan"], case["routes"]
    bits, perm, offsets = packed.bits, plan.perm, plan.offsets
    return {
        "rtl cpu: weight-stationary kernel": lambda: ext.forward(x, w, bits, perm, offsets, None),
        "rtl cpu: masked copy + torch.mm": lambda: ext.forward_grouped(x, w, bits, perm, offsets, None),
        "rtl.routed_linear(backend='cpu')": lambda: rtl.routed_linear(x, w, packed, routes, backend="cpu"),
    }


def backward_fns(case: dict, ext) -> dict[str, Callable[[], object]]:
    x, w, packed, plan = case["x"], case["w"], case["packed"], case["plan"]
    dy = torch.randn(x.shape[0], w.shape[0]).to(x.dtype)
    bits, perm, offsets = packed.bits, plan.perm, plan.offsets
    return {
        "dense backward (dx = dy W, dW = dyᵀ x)": lambda: (dy @ w, dy.t() @ x),
        "rtl cpu backward: kernels": lambda: (ext.grad_input(dy, w, bits, perm, offsets), ext.grad_weight(dy, x, w, bits, perm, offsets)),
        "rtl cpu backward: masked copy + torch.mm": lambda: ext.backward_grouped(dy, x, w, bits, perm, offsets, True, True),
    }


CASES = [
    ("decode fp32", dict(rows=16, tickets=8, n=2048, c=2048, density=0.5, dtype=torch.float32), "fwd"),
    ("decode bf16", dict(rows=16, tickets=8, n=2048, c=2048, density=0.5, dtype=torch.bfloat16), "fwd"),
    ("decode fp32 backward", dict(rows=16, tickets=8, n=2048, c=2048, density=0.5, dtype=torch.float32), "bwd"),
    ("large batch fp32", dict(rows=2048, tickets=8, n=1024, c=1024, density=0.5, dtype=torch.float32), "fwd"),
    ("large batch fp32 backward", dict(rows=2048, tickets=8, n=1024, c=1024, density=0.5, dtype=torch.float32), "bwd"),
    ("large batch bf16", dict(rows=2048, tickets=8, n=1024, c=1024, density=0.5, dtype=torch.bfloat16), "fwd"),
]
CROSSOVER_ROWS = (32, 64, 128, 256, 512)
CROSSOVER_TICKETS = (1, 8)


def run(quick: bool) -> dict:
    ext = extension.load_cpu()
    if ext is None:
        raise SystemExit("the CPU extension could not be built here")
    rounds, min_round_s = (3, 0.05) if quick else (7, 0.15)
    results = []
    for name, params, kind in CASES:
        case = make_case(**params)
        fns = backward_fns(case, ext) if kind == "bwd" else {**baselines(case), **kernels(case, ext)}
        times = time_side_by_side(fns, rounds, min_round_s)
        results.append({"case": name, **{k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in params.items()}, "ms": times})
    crossover = []
    for tickets in CROSSOVER_TICKETS:
        for rows in CROSSOVER_ROWS:
            case = make_case(rows=rows, tickets=tickets, n=1024, c=1024, density=0.5, dtype=torch.float32)
            fns = kernels(case, ext)
            pair = {"direct": fns["rtl cpu: weight-stationary kernel"], "grouped": fns["rtl cpu: masked copy + torch.mm"]}
            times = time_side_by_side(pair, rounds, min_round_s)
            crossover.append({"tickets": tickets, "rows": rows, "direct_ms": times["direct"], "grouped_ms": times["grouped"]})
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": _cpu_name(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "isa": ext.isa_name(),
            "clock": "thread CPU time" if CLOCK is time.thread_time else "wall",
            "load_average_1min": os.getloadavg()[0],
        },
        "results": results,
        "crossover_1024x1024": crossover,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ratios(entry: dict) -> dict[str, float]:
    ms = entry["ms"]
    out = {}
    if "dense F.linear (unmasked W)" in ms:
        best = min(ms["rtl cpu: weight-stationary kernel"], ms["rtl cpu: masked copy + torch.mm"])
        out["best rtl / dense"] = best / ms["dense F.linear (unmasked W)"]
        out["naive / best rtl"] = ms["naive per-ticket masking"] / best
        out["cached copies / best rtl"] = ms["loop over K cached masked copies"] / best
        out["routed_linear op / dense"] = ms["rtl.routed_linear(backend='cpu')"] / ms["dense F.linear (unmasked W)"]
    else:
        dense = ms["dense backward (dx = dy W, dW = dyᵀ x)"]
        out["kernels / dense"] = ms["rtl cpu backward: kernels"] / dense
        out["masked copy + mm / dense"] = ms["rtl cpu backward: masked copy + torch.mm"] / dense
    return out


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# CPU kernel benchmark ({report['date']})",
        "",
        f"{m['cpu']}, {m['threads']} threads, torch {m['torch']}, kernel ISA {m['isa']}",
        "",
    ]
    for entry in report["results"]:
        shape = f"{entry['rows']} rows, {entry['tickets']} tickets, {entry['n']}×{entry['c']} {entry['dtype']}, density {entry['density']}"
        lines += [f"## {entry['case']} ({shape})", "", "| method | ms |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in entry["ms"].items()]
        lines += [""] + [f"- {k}: {v:.2f}×" for k, v in ratios(entry).items()] + [""]
    lines += [
        "## direct kernel vs masked copy + torch.mm (1024×1024 fp32)",
        "",
        "| tickets | rows | direct ms | grouped ms |",
        "|---|---|---|---|",
    ]
    lines += [f"| {c['tickets']} | {c['rows']} | {c['direct_ms']:.3f} | {c['grouped_ms']:.3f} |" for c in report["crossover_1024x1024"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing loops")
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument("--cpu-time", action="store_true", help="one thread, timed by thread CPU time (robust on a loaded machine)")
    args = parser.parse_args()
    if args.cpu_time:
        global CLOCK
        CLOCK = time.thread_time
        torch.set_num_threads(1)
    report = run(args.quick)
    text = markdown(report)
    print(text)
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stem = RESULTS / f"cpu_kernel_{dt.date.today().isoformat()}{'_1thread_cputime' if args.cpu_time else ''}"
        stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
        stem.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
