"""Does routed BatchNorm (per-ticket running statistics) help RTL? The MNIST CNN recipe, 5k subset.

One ticket search (``--preset mnist --model cnn``: K = 5 class pairs, IMP with rewinding to θ0,
30% of the remaining weights per round, 3 epochs per round; Adam 1.2e-3, batch 60), then, from the
same tickets, RTL retrained (5 epochs) and evaluated with BatchNorm

- shared: one set of running statistics for every ticket (the default),
- routed: per-ticket running statistics during joint retraining (``routed_bn``),
- shared + recalibration: shared during retraining, then each ticket's statistics recomputed
  from its own training subset (``recalibrate_bn``), and routed + recalibration,

for sequential retraining (the paper: one ticket per batch, so shared and routed BatchNorm train
the same weights and differ only in the running statistics) and fused retraining (mixed batches:
routed BatchNorm also normalises each ticket's rows by their own batch statistics).
Per-stage keys make every variant reuse the tickets, and recalibration reuse the retrained model.

    python bench/routed_bn_cnn.py --out /tmp/routed_bn   # writes bench/results/routed_bn_cnn_mnist5k.{json,md}
    python bench/routed_bn_cnn.py --out /tmp/routed_bn_inv --inverted   # ..._inverted: tickets see different inputs

``--inverted`` inverts the digits (x -> 1 - x) of every other class pair, in training and test
data, so two of the five tickets see inputs with other statistics: the case per-ticket
statistics are for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from rtl_kernels.benchmarks.machine import cpu_model
from rtl_kernels.data import load_mnist_5k, register_dataset
from rtl_kernels.pipeline import Run, packaged_recipe

VARIANTS = {
    "shared": {},
    "routed": {"routed_bn": True},
    "shared + recalibration": {"recalibrate_bn": True},
    "routed + recalibration": {"routed_bn": True, "recalibrate_bn": True},
}


def inverted_pairs(*, seed: int, data_dir: str, max_train: int):
    """MNIST 5k with the digits of class pairs {2, 3} and {6, 7} inverted (x -> 1 - x), train and test."""
    data = load_mnist_5k(seed=seed)
    for part in data:
        x, y = part.tensors
        flip = (y // 2) % 2 == 1
        x[flip] = 1.0 - x[flip]
    return data


def rows_of(report: dict) -> dict[float, dict[str, float]]:
    out: dict[float, dict[str, float]] = {}
    for level in report["levels"]:
        methods = level["methods"]
        out[round(level["target"], 4)] = {
            "router": methods["rtl"]["balanced_accuracy"],
            "oracle": methods["rtl_oracle"]["balanced_accuracy"],
            "entropy": methods["rtl_entropy"]["balanced_accuracy"],
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="run directory (tickets are searched once and reused)")
    p.add_argument("--rewrite", type=Path, help="only re-render the markdown page of this results JSON")
    p.add_argument("--inverted", action="store_true", help="invert the digits of every other class pair (tickets see other inputs)")
    p.add_argument("--modes", nargs="*", default=["sequential", "fused"], help="joint retraining modes to compare")
    p.add_argument("--results", type=Path, default=Path(__file__).parent / "results", help="where the table goes")
    args = p.parse_args()
    if args.rewrite:
        return rewrite(args.rewrite)
    if args.out is None:
        p.error("--out is required")
    torch.set_num_threads(1)
    base = packaged_recipe("mnist").replace(model="cnn")
    stem = "routed_bn_cnn_mnist5k"
    if args.inverted:
        register_dataset("mnist_inverted_pairs", inverted_pairs)
        base, stem = base.replace(dataset="mnist_inverted_pairs"), stem + "_inverted"
    results: dict = {"recipe": base.to_dict(), "inverted": args.inverted, "variants": {}, "timings_s": {}}
    start = time.perf_counter()
    for mode in args.modes:
        for name, changes in VARIANTS.items():
            first = mode == args.modes[0] and name == "shared"
            recipe = base.replace(mode=mode, baselines=first, **changes)  # baselines once: they do not depend on the variant
            t = time.perf_counter()
            report = Run(recipe, args.out, progress=False).execute()
            key = f"{mode} / {name}"
            results["variants"][key] = {str(s): v for s, v in rows_of(report).items()}
            results["timings_s"][key] = round(time.perf_counter() - t, 1)
            results.setdefault("router", report["router"])
            if first:
                results["baselines"] = {
                    "dense": next(r["balanced_accuracy"] for r in report["rows"] if r["method"] == "dense"),
                    "single": {str(round(r["sparsity"], 2)): r["balanced_accuracy"] for r in report["rows"] if r["method"] == "single"},
                }
    results["machine"] = {
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "loadavg_end": os.getloadavg(),
        "total_s": round(time.perf_counter() - start, 1),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{stem}.json").write_text(json.dumps(results, indent=2))
    (args.results / f"{stem}.md").write_text(table(results) + "\n")
    print(table(results))


def rewrite(path: Path) -> None:
    """Re-render the markdown page from a saved JSON (``python bench/routed_bn_cnn.py --rewrite FILE.json``)."""
    results = json.loads(path.read_text())
    path.with_suffix(".md").write_text(table(results) + "\n")


def table(results: dict) -> str:
    """The markdown page: protocol, machine, the accuracy table, and the largest change against shared BatchNorm."""
    levels = sorted(next(iter(results["variants"].values())), key=float)
    m = results["machine"]
    lines = [
        "# Routed BatchNorm (per-ticket statistics) on the MNIST CNN recipe, 5k subset"
        + (", digits of class pairs {2,3} and {6,7} inverted" if results.get("inverted") else ""),
        "",
        __doc__.split("\n\n", 1)[1].split("\n\n    python")[0],
        "",
        f"CPU {m['cpu']} (shared with other jobs), 1 torch thread, load average at the end {m['loadavg_end'][0]:.1f}, "
        f"{m['total_s']:.0f} s in all. Balanced accuracy on the 1,000 test digits (one digit ≈ 0.1 point).",
        "",
        "| retraining / BatchNorm | " + " | ".join(f"{float(s):.0%}: router / oracle" for s in levels) + " |",
        "|" + " --- |" * (len(levels) + 1),
    ]
    for key, rows in results["variants"].items():
        cells = [f"{rows[s]['router']:.3f} / {rows[s]['oracle']:.3f}" for s in levels]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    base = results.get("baselines")
    if base:
        single = " | ".join(f"{base['single'].get(str(round(float(s), 2)), float('nan')):.3f}" for s in levels)
        lines.append(f"| single-mask IMP (shared BN) | {single} |")
        lines += ["", f"Dense CNN on all the training data, same retraining budget: {base['dense']:.3f}."]
    r = results["router"]
    lines.append(f"Router: {r['chosen']}, routing accuracy on test {r['test_accuracy']:.3f} (fit on training inputs only).")
    for mode in dict.fromkeys(key.split(" / ")[0] for key in results["variants"]):
        shared = results["variants"][f"{mode} / shared"]
        diffs = [
            abs(rows[s][col] - shared[s][col])
            for key, rows in results["variants"].items()
            if key.startswith(mode + " /")
            for s in levels
            for col in ("router", "oracle")
        ]
        lines.append(f"Largest change against shared BatchNorm ({mode} retraining): {max(diffs) * 100:.1f} points.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
