"""Which regime do mask-based merges (TALL, EMR) need? A sweep over the merge bench's set-up.

Each configuration (task set, width, base pre-training, expert fine-tuning) pre-trains a base,
fine-tunes K experts and merges them with task arithmetic, TIES, EMR and TALL exactly as
``bench/merge_bench.py`` does (same code, ``validation=`` for the coefficients); every accuracy
here is on the **dev** split (500 training digits held out from fitting and from validation),
never on the test split, so the configuration the committed bench uses is chosen without it.

    python bench/merge_sweep.py --out bench/results            # the committed sweep (also --part fc1, --part sft)
    python bench/merge_sweep.py --quick --out /tmp             # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import merge_bench

import rtl_kernels as rtl
from rtl_kernels.benchmarks.machine import cpu_model, utc_now, versions

logger = logging.getLogger("merge_sweep")
METHODS = {"TA": ("task_arithmetic", False), "TIES": ("ties", False), "EMR": ("emr", True), "TALL": ("tall", True)}
FINETUNES = (("adam", 1e-3, 10), ("adam", 1e-4, 10), ("sgd", 0.02, 5), ("sgd", 0.05, 10))
# (task set, hidden, pre-training, (optimizer, lr, epochs)): every task set and fine-tuning at width 256,
# then a wider base and a rotation-pre-trained base on the configuration last session used
GRID = [(ts, 256, "plain", ft) for ts in ("conflict", "dihedral", "shift") for ft in FINETUNES]
GRID += [("conflict", 256, "rotate", FINETUNES[0]), ("conflict", 1024, "plain", FINETUNES[0]), ("dihedral", 1024, "plain", FINETUNES[0])]
# fine-tuning the input layer only (the rest stays the base's): the tasks differ in their inputs
GRID_FC1 = [(ts, 256, "plain", ft) for ts in ("conflict", "dihedral", "shift") for ft in (FINETUNES[0], FINETUNES[3])]
# sparse (LT-SFT) against dense fine-tuning, on the mild warps (the base keeps 20-47 %), the conflicting tasks and
# the disjoint cells: (task set, hidden, pre-training, fine-tuning, expert density): Adam lr 1e-3 x 10 epochs per fit, every layer
GRID_SFT = [("warp", h, "plain", FINETUNES[0], d) for h in (256, 1024) for d in (1.0, 0.1, 0.05)]
GRID_SFT += [(ts, 256, "plain", FINETUNES[0], d) for ts in ("conflict", "cells", "dihedral") for d in (1.0, 0.1)]
PARTS = {"all-layers": GRID, "fc1": GRID_FC1, "sft": GRID_SFT}
# FDA's stage II on the default bench configuration (width 1024: 64 anchors per task fit a 1M-entry layer)
FDA_VARIANTS = (
    {"adapt_lr": 1e-3, "adapt_epochs": 60},
    {"adapt_lr": 1e-3, "adapt_epochs": 5},
    {"adapt_lr": 1e-4, "adapt_epochs": 20},
    {"anchors": 256, "adapt_lr": 1e-4, "adapt_epochs": 20},
)


def run_fda(quick: bool) -> dict:
    """Dev-split mean accuracy of task arithmetic and of FDA from TA under each of ``FDA_VARIANTS``."""
    args = merge_bench.parse_args(["--quick"] if quick else [])
    setup = merge_bench.prepare(args)
    acc = merge_bench.accuracy

    def dev_mean(model) -> float:
        return sum(acc(model, x, y) for x, y in setup.dev) / len(setup.dev)

    kw = {"routed": False, "validation": setup.validation}
    rows = {"experts": sum(acc(e, x, y) for e, (x, y) in zip(setup.experts, setup.dev)) / len(setup.dev)}
    rows["task arithmetic"] = dev_mean(rtl.merge.merge_experts(setup.base, setup.experts, method="task_arithmetic", **kw))
    steps = args.fda_construct_steps
    for options in FDA_VARIANTS[:2] if quick else FDA_VARIANTS:
        t0 = time.time()
        model = rtl.merge.merge_experts(setup.base, setup.experts, method="fda", start="ta", construct_steps=steps, **options, **kw)
        label = ", ".join(f"{k} {v}" for k, v in options.items())
        rows[f"FDA from TA ({label})"] = dev_mean(model)
        logger.info("%s: %.4f (%.0f s)", label, rows[f"FDA from TA ({label})"], time.time() - t0)
    return rows


def run_config(argv: list[str]) -> dict:
    """Dev-split mean accuracy of the base, the experts and each merge for one bench configuration."""
    args = merge_bench.parse_args(argv)
    t0 = time.time()
    setup = merge_bench.prepare(args)
    acc = merge_bench.accuracy
    row = {
        "base": [acc(setup.base, x, y) for x, y in setup.dev],
        "experts": [acc(e, x, y) for e, (x, y) in zip(setup.experts, setup.dev)],
    }
    for label, (method, routed) in METHODS.items():
        model = rtl.merge.merge_experts(setup.base, setup.experts, method=method, routed=routed, validation=setup.validation)
        row[label] = [acc(model, x, y, t if routed else None) for t, (x, y) in enumerate(setup.dev)]
    means = {k: sum(v) / len(v) for k, v in row.items()}
    return {"argv": argv, "dev_accuracy": row, "dev_mean": means, "seconds": time.time() - t0}


def markdown(result: dict) -> str:
    lines = [
        f"# Merge regime sweep ({result['date']})",
        "",
        f"CPU: {result['cpu']}, 1 torch thread; 1-min load average {result['load_start']:.1f} at start, "
        f"{result['load_end']:.1f} at end (shared machine). Mean **dev** accuracy over the K tasks "
        "(dev = 500 held-out training digits; the test split is not used here). "
        "ratio = method mean / experts' mean.",
        "",
        "| task set | hidden | pre-training | fine-tuning | base | experts | TA | TIES | EMR | TALL | EMR ratio | TALL ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        c, m = r["config"], r["dev_mean"]
        cells = " | ".join(f"{100 * m[k]:.1f}" for k in ("base", "experts", "TA", "TIES", "EMR", "TALL"))
        lines.append(
            f"| {c['task_set']} | {c['hidden']} | {c['pretrain']} | {c['finetune']} | {cells} | "
            f"{m['EMR'] / m['experts']:.3f} | {m['TALL'] / m['experts']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def write_fda(rows: dict, out: Path) -> dict:
    """``merge_sweep_fda.{json,md}``: the FDA variants' dev accuracy."""
    result = {"date": utc_now().isoformat(timespec="seconds"), "cpu": cpu_model(), "versions": versions(), "dev_mean": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "merge_sweep_fda.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# FDA stage II options, default bench configuration ({result['date']})",
        "",
        f"CPU: {result['cpu']}, 1 torch thread. Mean **dev** accuracy over the 8 tasks (never the test split).",
        "",
        "| model | dev accuracy |",
        "|---|---|",
    ]
    lines += [f"| {label} | {100 * value:.2f} |" for label, value in rows.items()]
    (out / "merge_sweep_fda.md").write_text("\n".join(lines) + "\n")
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--quick", action="store_true", help="digits, 4 tasks, two configurations")
    parser.add_argument(
        "--part",
        choices=(*PARTS, "fda"),
        default="all-layers",
        help="which grid: experts fine-tuned densely in every layer, in fc1 only, sparse (LT-SFT) against dense; "
        "or fda: FDA's stage II options on the default configuration",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.part == "fda":
        return write_fda(run_fda(args.quick), Path(args.out))
    grid = list(PARTS[args.part])
    if args.quick:
        grid = grid[:2]
    result = {"date": utc_now().isoformat(timespec="seconds"), "cpu": cpu_model(), "versions": versions(), "load_start": os.getloadavg()[0]}
    runs = []
    for task_set, hidden, pretrain, (opt, lr, epochs), *density in grid:
        density = density[0] if density else 1.0
        bench_argv = ["--task-set", task_set, "--hidden", str(hidden), "--pretrain", pretrain]
        bench_argv += ["--expert-opt", opt, "--expert-lr", str(lr), "--expert-epochs", str(epochs)]
        bench_argv += ["--expert-layers", "fc1" if args.part == "fc1" else "all", "--expert-density", str(density)]
        if pretrain == "rotate":
            bench_argv += ["--base-epochs", "30"]
        if args.quick:
            bench_argv += ["--quick"]
        r = run_config(bench_argv)
        layers = "fc1 only" if args.part == "fc1" else "all layers"
        if density < 1.0:
            layers += f", LT-SFT at density {density}"
        r["config"] = {"task_set": task_set, "hidden": hidden, "pretrain": pretrain, "finetune": f"{opt} lr {lr} × {epochs} ep, {layers}"}
        runs.append(r)
        m = r["dev_mean"]
        logger.info("%s: experts %.3f EMR %.3f TALL %.3f (%.0f s)", r["config"], m["experts"], m["EMR"], m["TALL"], r["seconds"])
        result["runs"] = runs
        result["load_end"] = os.getloadavg()[0]
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"merge_sweep_{args.part}.json").write_text(json.dumps(result, indent=2))
        (out / f"merge_sweep_{args.part}.md").write_text(markdown(result))
    return result


if __name__ == "__main__":
    main()
