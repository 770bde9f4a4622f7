"""Strong tickets: bytes of a seeded save and CPU speed of the regenerated-weight kernel.

Storage: an MLP of 2048² layers, seeded, K = 1, 4, 16 masks; bytes of the ``rtl.save`` directory
against dense fp32 / bf16 weights. Speed: decode (16 rows over 8 tickets) and a large batch on a
2048² layer: ``seeded_linear`` (decode: the panel kernel, weight regenerated, never read; large
batch: W generated once per call, then the stored-weight GEMM) against ``F.linear`` on a stored
fp32 weight and against the stored-weight routed kernel. Methods are timed in interleaved rounds;
a ratio is the median over rounds of the ratio within one round, on thread CPU time (wall time
alongside): honest on a shared machine. dX of the seeded kernel is compared with dense ``dy @ W``.

``python bench/strong_speed_storage.py [--quick]`` writes ``bench/results/strong_speed_storage_<date>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import rtl_kernels as rtl
from rtl_kernels.backends.extension import load_cpu
from rtl_kernels.benchmarks.machine import cpu_model, utc_now
from rtl_kernels.init.seeded import seeded_forward_args
from rtl_kernels.ops.seeded import KERNEL_DISTS, seeded_linear

RESULTS = Path(__file__).resolve().parent / "results"


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def storage(width: int, layers: int) -> list[dict]:
    rows = []
    for k in (1, 4, 16):
        torch.manual_seed(0)
        model = rtl.convert(nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(layers)]), k)
        rtl.init.seeded_(model, 1234)
        g = torch.Generator().manual_seed(k)
        for layer in rtl.models.rtl_layers(model):
            layer.set_masks(torch.rand(k, width, width, generator=g) < 0.5)
        n = layers * width * width
        with tempfile.TemporaryDirectory() as d:
            rtl.save(model, d)
            files = {p.name: p.stat().st_size for p in Path(d).iterdir()}
            total = dir_bytes(Path(d))
        rows.append(
            {
                "K": k, "weights": n, "save_bytes": total, "files": files, "dense_fp32_bytes": 4 * n, "dense_bf16_bytes": 2 * n,
                "goal_bytes": k * 4 * n // 32, "ratio_vs_fp32": total / (4 * n), "goal_ratio": k / 32,
            }
        )  # fmt: skip
    return rows


def interleaved(fns: dict, rounds: int, inner: int) -> dict:
    """Per method and round: thread CPU seconds per call (not inflated by waiting for a shared core) and wall seconds."""
    for f in fns.values():
        f()
    cpu, wall = {k: [] for k in fns}, {k: [] for k in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            t, w = time.thread_time(), time.perf_counter()
            for _ in range(inner):
                f()
            cpu[name].append((time.thread_time() - t) / inner * 1e3)
            wall[name].append((time.perf_counter() - w) / inner * 1e3)
    return {"cpu": cpu, "wall": wall}


def ratios(times: dict, base: str) -> dict:
    """Median over rounds of each method's time over ``base``'s time in the same round (dX methods: over dense dX)."""
    return {k: statistics.median(a / b for a, b in zip(v, times[DENSE_DX if "dX" in k else base])) for k, v in times.items()}


DENSE, STORED = "F.linear (stored fp32, dense)", "routed stored-weight (cpu)"
SEEDED, SEEDED_DX, DENSE_DX = "seeded (regenerated, cpu)", "seeded dX (panel kernel, cpu)", "dense dX (dy @ W, stored fp32)"


def speed(size: int, rows: int, tickets: int, rounds: int, inner: int, dist: str) -> dict:
    torch.manual_seed(0)
    layer = rtl.init.seeded_(rtl.convert(nn.Sequential(nn.Linear(size, size, bias=False)), tickets), 7, dist=dist)[0]
    layer.set_masks(torch.rand(tickets, size, size) < 0.5)
    spec, row_scale = seeded_forward_args(layer, torch.empty(1))
    w = layer.weight.detach().clone()
    masks = layer.packed_masks
    x = torch.randn(rows, size)
    dy = torch.randn(rows, size)
    routes = torch.arange(rows) % tickets
    plan = rtl.plan_routes(routes, tickets)
    cpu = load_cpu()
    d = KERNEL_DISTS.index(dist)
    fns = {
        SEEDED: lambda: seeded_linear(x, masks, plan, seed=spec.seed, layer=spec.layer_id, dist=dist, row_scale=row_scale, backend="cpu"),
        DENSE: lambda: F.linear(x, w),
        STORED: lambda: rtl.routed_linear(x, w, masks, plan, backend="cpu"),
        SEEDED_DX: lambda: cpu.seeded_grad_input(dy, masks.bits, plan.perm, plan.offsets, row_scale, size, spec.seed, spec.layer_id, d),
        DENSE_DX: lambda: dy @ w,
    }
    with torch.no_grad():
        times = interleaved(fns, rounds, inner)
    out = {"rows": rows, "tickets": tickets, "size": size, "dist": dist, "clock": "thread CPU time (wall in *_wall)"}
    for clock, t in times.items():
        sfx = "" if clock == "cpu" else "_wall"
        out["best_ms" + sfx] = {k: min(v) for k, v in t.items()}
        out["ratio_vs_dense" + sfx] = ratios(t, DENSE)
        out["ratio_vs_stored_routed" + sfx] = {k: v for k, v in ratios(t, STORED).items() if "dX" not in k}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds, a smaller storage model")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the timings (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    info = {
        "cpu": cpu_model(),
        "threads": threads,
        "loadavg_before": os.getloadavg(),
        "date": utc_now().isoformat(),
        "torch": torch.__version__,
    }
    rounds, inner = (5, 3) if args.quick else (9, 5)
    result = {"machine": info, "storage": storage(1024 if args.quick else 2048, 2), "speed": []}
    for dist in KERNEL_DISTS:
        result["speed"].append(speed(2048, 16, 8, rounds, inner, dist))
        result["speed"].append(speed(2048, 1024, 8, max(3, rounds // 2), 1, dist))
    info["loadavg_after"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"strong_speed_storage_{utc_now():%Y-%m-%d-%H%M}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    md = [f"# Strong tickets: storage and CPU speed ({info['date']})", "", f"CPU {info['cpu']}, {threads} torch threads, load average "
          f"{info['loadavg_before'][0]:.1f} before / {info['loadavg_after'][0]:.1f} after (machine shared with other jobs).", "",
          "## Storage of an `rtl.save` of a seeded model (2 bias-free layers; masks 50 % dense, random)", "",
          "| K | weights | save bytes | of dense fp32 | goal K/32 | dense fp32 | dense bf16 |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["storage"]:
        md.append(
            f"| {r['K']} | {r['weights']:,} | {r['save_bytes']:,} | {r['ratio_vs_fp32']:.4f} | {r['goal_ratio']:.4f} | {r['dense_fp32_bytes']:,} | {r['dense_bf16_bytes']:,} |"
        )
    md += ["", "## Speed, 2048 × 2048 layer, fp32 compute", "",
           "Thread CPU time per call (best of the rounds) and the median over rounds of the ratio within a round; "
           "wall-clock ratios in brackets. dX rows are compared with the dense `dy @ W` (× dense column: against dense dX).", ""]  # fmt: skip
    md += ["| dist | rows / tickets | method | best ms | × dense | × stored routed |", "|---|---|---|---|---|---|"]
    for s in result["speed"]:
        for name, ms in s["best_ms"].items():
            rd, rdw = s["ratio_vs_dense"][name], s["ratio_vs_dense_wall"][name]
            stored = "—" if "dX" in name else f"{s['ratio_vs_stored_routed'][name]:.2f} ({s['ratio_vs_stored_routed_wall'][name]:.2f})"
            md.append(f"| {s['dist']} | {s['rows']} / {s['tickets']} | {name} | {ms:.3f} | {rd:.2f} ({rdw:.2f}) | {stored} |")
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
