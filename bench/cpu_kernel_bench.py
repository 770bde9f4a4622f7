"""CPU routed-linear kernel benchmark: the C++ kernels side by side with dense and masked baselines.

Run ``python bench/cpu_kernel_bench.py``; prints a table and writes
``bench/results/cpu_kernel_<date>.json`` and ``.md``. Times are per call on the
threads torch uses (``torch.get_num_threads()``); methods are timed in interleaved rounds. Times
are the best round; ratios are the median over rounds of the ratio within one round, which stays
honest when a shared machine's speed drifts between rounds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import rtl_kernels as rtl
from rtl_kernels.backends import extension
from rtl_kernels.benchmarks.machine import cpu_model
from rtl_kernels.benchmarks.timing import time_rounds
from rtl_kernels.routing_plans.plan import make_plan

RESULTS = Path(__file__).resolve().parent / "results"


CLOCK = "wall"  # --cpu-time: "thread"


def time_side_by_side(fns: dict[str, Callable[[], object]], rounds: int, min_round_s: float) -> dict[str, list[float]]:
    """ms per call of each function in each round (:func:`rtl_kernels.benchmarks.timing.time_rounds`)."""
    return {name: [t * 1e3 for t in ts] for name, ts in time_rounds(fns, rounds, min_round_s, CLOCK).items()}


def paired_ratio(rounds: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of ``num`` time / ``den`` time measured in the same round."""
    return statistics.median(a / b for a, b in zip(rounds[num], rounds[den]))


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
    fns = {
        "rtl cpu: weight-stationary kernel": lambda: ext.forward(x, w, bits, perm, offsets, None),
        "rtl cpu: masked copy + torch.mm": lambda: ext.forward_grouped(x, w, bits, perm, offsets, None),
    }
    if x.dtype == torch.float32 and ext.gemm_supported():
        fns["rtl cpu: fused masked GEMM"] = lambda: ext.forward_gemm(x, w, bits, perm, offsets, None)
    fns["rtl.routed_linear(backend='cpu')"] = lambda: rtl.routed_linear(x, w, packed, routes, backend="cpu")
    return fns


KERNELS = {
    "direct": "rtl cpu: weight-stationary kernel",
    "grouped": "rtl cpu: masked copy + torch.mm",
    "gemm": "rtl cpu: fused masked GEMM",
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
CROSSOVER_ROWS = (8, 16, 32, 64, 128, 256, 512, 1024)
CROSSOVER_TICKETS = (1, 8)
CROSSOVER_DTYPES = (torch.float32, torch.bfloat16)


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
        shape = {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in params.items()}
        results.append({"case": name, **shape, "ms": {k: min(v) for k, v in times.items()}, "rounds_ms": times})
    crossover = []
    for dtype in CROSSOVER_DTYPES:
        for tickets in CROSSOVER_TICKETS:
            for rows in CROSSOVER_ROWS:
                case = make_case(rows=rows, tickets=tickets, n=1024, c=1024, density=0.5, dtype=dtype)
                fns = kernels(case, ext)
                paths = {short: fns[name] for short, name in KERNELS.items() if name in fns}
                times = time_side_by_side(paths, rounds, min_round_s)
                crossover.append({"dtype": str(dtype), "tickets": tickets, "rows": rows, **{f"{k}_ms": min(v) for k, v in times.items()}})
    backward_crossover = []
    for dtype in CROSSOVER_DTYPES:
        for tickets in CROSSOVER_TICKETS:
            for rows in CROSSOVER_ROWS[:-1]:
                case = make_case(rows=rows, tickets=tickets, n=1024, c=1024, density=0.5, dtype=dtype)
                fns = backward_fns(case, ext)
                paths = {"direct": fns["rtl cpu backward: kernels"], "grouped": fns["rtl cpu backward: masked copy + torch.mm"]}
                times = time_side_by_side(paths, rounds, min_round_s)
                backward_crossover.append(
                    {"dtype": str(dtype), "tickets": tickets, "rows": rows, **{f"{k}_ms": min(v) for k, v in times.items()}}
                )
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "isa": ext.isa_name(),
            "kernel_threads": ext.max_threads(),
            "clock": "thread CPU time" if CLOCK == "thread" else "wall",
            "load_average_1min": os.getloadavg()[0],
        },
        "results": results,
        "crossover_1024x1024": crossover,
        "backward_crossover_1024x1024": backward_crossover,
    }


def ratios(entry: dict) -> dict[str, float]:
    """Headline ratios, each the median over rounds of a ratio taken within one round."""
    ms, rounds = entry["ms"], entry["rounds_ms"]
    out = {}
    if "dense F.linear (unmasked W)" in ms:
        short, best = min(((k, v) for k, v in KERNELS.items() if v in ms), key=lambda kv: ms[kv[1]])
        out[f"best rtl ({short}) / dense"] = paired_ratio(rounds, best, "dense F.linear (unmasked W)")
        out["naive / best rtl"] = paired_ratio(rounds, "naive per-ticket masking", best)
        out["cached copies / best rtl"] = paired_ratio(rounds, "loop over K cached masked copies", best)
        out["routed_linear op / dense"] = paired_ratio(rounds, "rtl.routed_linear(backend='cpu')", "dense F.linear (unmasked W)")
    else:
        dense = "dense backward (dx = dy W, dW = dyᵀ x)"
        out["kernels / dense"] = paired_ratio(rounds, "rtl cpu backward: kernels", dense)
        out["masked copy + mm / dense"] = paired_ratio(rounds, "rtl cpu backward: masked copy + torch.mm", dense)
    return out


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# CPU kernel benchmark ({report['date']})",
        "",
        f"{m['cpu']}, {m['threads']} threads (kernels: {m['kernel_threads']}), torch {m['torch']}, kernel ISA {m['isa']}, {m['clock']} clock",
        "",
    ]
    for entry in report["results"]:
        shape = f"{entry['rows']} rows, {entry['tickets']} tickets, {entry['n']}×{entry['c']} {entry['dtype']}, density {entry['density']}"
        lines += [f"## {entry['case']} ({shape})", "", "| method | ms |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in entry["ms"].items()]
        lines += ["", "Times: best round. Ratios: median over rounds of the ratio within a round."]
        lines += [""] + [f"- {k}: {v:.2f}×" for k, v in ratios(entry).items()] + [""]
    lines += [
        "## forward paths by batch size (1024×1024; direct = weight-stationary kernel, grouped = masked copy + torch.mm, gemm = fused masked GEMM)",
        "",
        "| dtype | tickets | rows | direct ms | grouped ms | gemm ms |",
        "|---|---|---|---|---|---|",
    ]
    for c in report["crossover_1024x1024"]:
        gemm = f"{c['gemm_ms']:.3f}" if "gemm_ms" in c else "—"
        lines.append(f"| {c['dtype']} | {c['tickets']} | {c['rows']} | {c['direct_ms']:.3f} | {c['grouped_ms']:.3f} | {gemm} |")
    lines += [
        "",
        "## backward paths by batch size (1024×1024; dx and dW; direct = grad kernels, grouped = masked copy + torch.mm)",
        "",
        "| dtype | tickets | rows | direct ms | grouped ms |",
        "|---|---|---|---|---|",
    ]
    for c in report["backward_crossover_1024x1024"]:
        lines.append(f"| {c['dtype']} | {c['tickets']} | {c['rows']} | {c['direct_ms']:.3f} | {c['grouped_ms']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing loops")
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument("--cpu-time", action="store_true", help="one thread, timed by thread CPU time (robust on a loaded machine)")
    args = parser.parse_args()
    if args.cpu_time:
        global CLOCK
        CLOCK = "thread"
        torch.set_num_threads(1)
    report = run(args.quick)
    text = markdown(report)
    print(text)
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d-%H%M")
        stem = RESULTS / f"cpu_kernel_{stamp}{'_1thread_cputime' if args.cpu_time else ''}"
        stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
        stem.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
