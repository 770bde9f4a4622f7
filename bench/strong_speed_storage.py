"""Strong tickets: bytes of a seeded save and CPU speed of the regenerated-weight kernel.

Storage: an MLP of 2048² layers, seeded, K = 1, 4, 16 masks; bytes of the ``rtl.save`` directory
against dense fp32 / bf16 weights. Speed: decode (16 rows over 8 tickets) and a large batch on a
2048² layer: the seeded kernel (weight regenerated, never read) against ``F.linear`` on a stored
fp32 weight and against the stored-weight routed kernel. Methods are timed in interleaved rounds;
a ratio is the median over rounds of the ratio within one round (honest on a shared machine).

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
from rtl_kernels.benchmarks.machine import cpu_model, utc_now
from rtl_kernels.init.seeded import seeded_forward_args
from rtl_kernels.ops.seeded import seeded_linear

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
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            t = time.perf_counter()
            for _ in range(inner):
                f()
            times[name].append((time.perf_counter() - t) / inner * 1e3)
    return times


def speed(size: int, rows: int, tickets: int, rounds: int, inner: int, dist: str) -> dict:
    torch.manual_seed(0)
    layer = rtl.init.seeded_(rtl.convert(nn.Sequential(nn.Linear(size, size, bias=False)), tickets), 7, dist=dist)[0]
    layer.set_masks(torch.rand(tickets, size, size) < 0.5)
    spec, row_scale = seeded_forward_args(layer, torch.empty(1))
    w = layer.weight.detach().clone()
    masks = layer.packed_masks
    x = torch.randn(rows, size)
    routes = torch.arange(rows) % tickets
    plan = rtl.plan_routes(routes, tickets)
    fns = {
        "seeded (regenerated, cpu)": lambda: seeded_linear(
            x, masks, plan, seed=spec.seed, layer=spec.layer_id, dist=dist, row_scale=row_scale, backend="cpu"
        ),
        "F.linear (stored fp32, dense)": lambda: F.linear(x, w),
        "routed stored-weight (cpu)": lambda: rtl.routed_linear(x, w, masks, plan, backend="cpu"),
    }
    with torch.no_grad():
        times = interleaved(fns, rounds, inner)
    base = "F.linear (stored fp32, dense)"
    out = {"rows": rows, "tickets": tickets, "size": size, "dist": dist, "best_ms": {k: min(v) for k, v in times.items()}}
    out["ratio_vs_dense"] = {k: statistics.median(a / b for a, b in zip(v, times[base])) for k, v in times.items()}
    out["ratio_vs_stored_routed"] = {
        k: statistics.median(a / b for a, b in zip(v, times["routed stored-weight (cpu)"])) for k, v in times.items()
    }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds, a smaller storage model")
    args = ap.parse_args()
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
    for dist in ("signed_constant", "uniform"):
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
    md += ["", "## Speed, 2048 × 2048 layer, fp32 compute (best ms per call; ratios = median of per-round ratios)", ""]
    md += ["| dist | rows / tickets | method | best ms | × dense F.linear | × stored routed |", "|---|---|---|---|---|---|"]
    for s in result["speed"]:
        for name, ms in s["best_ms"].items():
            md.append(
                f"| {s['dist']} | {s['rows']} / {s['tickets']} | {name} | {ms:.3f} | {s['ratio_vs_dense'][name]:.2f} | {s['ratio_vs_stored_routed'][name]:.2f} |"
            )
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
