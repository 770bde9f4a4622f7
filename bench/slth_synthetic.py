"""SLTH synthetic experiment (Otsuka et al. §4.1, papers.md §2.6), reproduced with edge-popup.

Task: angular-velocity estimation. A sequence x_t = (cos(ωt + θ0), sin(ωt + θ0)), ω ∈ [−π, π],
θ0 ∈ [0, π], t = 0..T−1, after a regression token (a learned vector, initialised to zero). A target
single-head attention (input dim 2, d_K = d_V = 2, output 1, read at the regression token) is
trained on ω with AdamW (lr 0.1, wd 0.01, batch 1024). Then, for n_K = n_V in {8, …, 128}, a random
source attention (weights U[−1, 1], seeded; optionally Q/K scaled by n_K^{1/4} with
``rtl.init.scale_qk_``) is pruned by ``rtl.pipeline.find_strong_tickets`` to approximate the target's
output (MSE to the target, 50 % sparsity, per layer). Reported: the approximation error
mean |Attn_S − Attn_T| on held-out sequences (and the max), mean ± std over seeds.

Shortened for a shared 2-core CPU: 4,000 training sequences (the paper: 10,000), 8 epochs of
edge-popup, 3 seeds (the paper: 100 source networks per target). The paper finds its masks by a subset-sum MIP (Gurobi) and reports ε ≈ 0.8 exp(−0.06 n_K) (T = 4);
we use edge-popup, the method of its GPT-2 experiments, so only the direction is comparable.

``python bench/slth_synthetic.py [--quick]`` writes ``bench/results/slth_synthetic_<date>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

import rtl_kernels as rtl
from rtl_kernels.benchmarks.machine import cpu_model, utc_now

RESULTS = Path(__file__).resolve().parent / "results"


class SingleHeadAttention(nn.Module):
    """softmax(q_0 Kᵀ / √n_K) V W_O at the regression token (token 0); no biases."""

    def __init__(self, d: int, n_k: int, n_v: int, out: int = 1) -> None:
        super().__init__()
        self.head_dim = n_k
        self.q_proj, self.k_proj = nn.Linear(d, n_k, bias=False), nn.Linear(d, n_k, bias=False)
        self.v_proj, self.o_proj = nn.Linear(d, n_v, bias=False), nn.Linear(n_v, out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.q_proj(x[:, :1])
        k, v = self.k_proj(x), self.v_proj(x)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(self.head_dim), dim=-1)
        return self.o_proj(att @ v)[:, 0, 0]


def sequences(n: int, t: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    omega = (torch.rand(n, 1, generator=gen) * 2 - 1) * math.pi
    theta = torch.rand(n, 1, generator=gen) * math.pi
    ang = omega * torch.arange(t).float() + theta
    return torch.stack([ang.cos(), ang.sin()], dim=-1), omega[:, 0]


def with_token(x: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    return torch.cat([token.expand(x.shape[0], 1, 2), x], dim=1)


def train_target(xs, ys, epochs: int, seed: int):
    torch.manual_seed(seed)
    target = SingleHeadAttention(2, 2, 2)
    token = nn.Parameter(torch.zeros(1, 1, 2))
    opt = torch.optim.AdamW([*target.parameters(), token], lr=0.1, weight_decay=0.01)
    for _ in range(epochs):
        for idx in torch.randperm(len(xs)).split(1024):
            opt.zero_grad()
            loss = ((target(with_token(xs[idx], token)) - ys[idx]) ** 2).mean()
            loss.backward()
            opt.step()
    return target.eval(), token.detach()


def strong_ticket(n_k: int, scaled: bool, xs, targets, x_test, t_test, args, seed: int) -> dict:
    torch.manual_seed(seed)
    source = rtl.convert(SingleHeadAttention(2, n_k, n_k), 1)
    rtl.init.seeded_(source, seed, dist="uniform")  # U[−1, 1], the theory's source distribution
    if scaled:
        rtl.init.scale_qk_(source)  # n_K^{1/4} on W_Q and W_K
    rtl.pipeline.find_strong_tickets(
        source, [TensorDataset(xs, targets)], sparsity=args.sparsity, epochs=args.epochs, loss_fn=nn.functional.mse_loss,
        lr=args.lr, batch_size=args.batch_size, seed=seed, progress=False,
    )  # fmt: skip
    with torch.no_grad(), rtl.routing(source, 0):
        err = (source(x_test) - t_test).abs()
    return {"mean_abs_error": float(err.mean()), "max_abs_error": float(err.max())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples, epochs and seeds")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--lr", type=float, default=0.003)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(1)
    n_train, n_test, args.epochs, seeds, target_epochs = (2000, 1000, 6, 2, 25) if args.quick else (4000, 1000, 8, 3, 25)
    t_len = 4
    gen = torch.Generator().manual_seed(0)
    x_tr, y_tr = sequences(n_train, t_len, gen)
    x_te, y_te = sequences(n_test, t_len, gen)
    target, token = train_target(x_tr, y_tr, target_epochs, 0)
    xs, xt = with_token(x_tr, token), with_token(x_te, token)
    with torch.no_grad():
        t_tr, t_te = target(xs), target(xt)
        task_mse = float(((t_te - y_te) ** 2).mean())
    info = {"cpu": cpu_model(), "threads": 1, "loadavg_before": os.getloadavg(), "date": utc_now().isoformat()}
    runs = []
    start = time.perf_counter()
    for n_k in (8, 16, 32, 64, 128):
        for scaled in (False, True):
            errs = [strong_ticket(n_k, scaled, xs, t_tr, xt, t_te, args, seed) for seed in range(seeds)]
            means = [e["mean_abs_error"] for e in errs]
            runs.append(
                {"n_k": n_k, "scaled": scaled, "seeds": seeds, "mean_abs_error": statistics.mean(means),
                 "std": statistics.stdev(means) if len(means) > 1 else 0.0, "max_abs_error": max(e["max_abs_error"] for e in errs), "per_seed": errs}
            )  # fmt: skip
            print(runs[-1]["n_k"], scaled, f"{runs[-1]['mean_abs_error']:.4f} ± {runs[-1]['std']:.4f}", flush=True)
    info["loadavg_after"] = os.getloadavg()
    info["seconds"] = time.perf_counter() - start
    setup = {
        "train": n_train, "test": n_test, "T": t_len, "target": "d_K = d_V = 2, AdamW lr 0.1 wd 0.01 batch 1024, 25 epochs",
        "target_task_mse": task_mse, "target_output_std": float(t_te.std()), "search": f"edge-popup, sparsity {args.sparsity}, "
        f"{args.epochs} epochs, Adam lr {args.lr}, batch {args.batch_size}, source U[-1,1] seeded", "quick": args.quick,
    }  # fmt: skip
    result = {"machine": info, "setup": setup, "runs": runs}
    direction = _direction(runs)
    result["direction"] = direction
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"slth_synthetic_{utc_now():%Y-%m-%d-%H%M}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    _plot(runs, stem.with_suffix(".png"))
    md = [f"# SLTH synthetic (angular velocity), strong tickets by edge-popup ({info['date']})", "",
          f"CPU {info['cpu']}, 1 thread, load average {info['loadavg_before'][0]:.1f} → {info['loadavg_after'][0]:.1f} (shared machine), {info['seconds']:.0f} s.",
          f"Setup: {json.dumps(setup)}", "", "| n_K = n_V | Q/K scaled by n_K^1/4 | mean abs error (± std over seeds) | max abs error |", "|---|---|---|---|"]  # fmt: skip
    for r in runs:
        md.append(
            f"| {r['n_k']} | {'yes' if r['scaled'] else 'no'} | {r['mean_abs_error']:.4f} ± {r['std']:.4f} | {r['max_abs_error']:.4f} |"
        )
    md += ["", f"Direction: {direction}", "", f"Plot: {stem.with_suffix('.png').name}"]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


def _direction(runs: list[dict]) -> str:
    parts = []
    for scaled in (False, True):
        e = [r["mean_abs_error"] for r in runs if r["scaled"] == scaled]
        dec = sum(b < a for a, b in zip(e, e[1:]))
        fit = _log_fit([r["n_k"] for r in runs if r["scaled"] == scaled], e)
        parts.append(
            f"{'scaled' if scaled else 'unscaled'}: error falls in {dec} of 4 steps of n_K, log-linear fit ε ≈ {fit[0]:.3f}·exp({fit[1]:+.4f} n_K)"
        )
    wins = sum(a["mean_abs_error"] > b["mean_abs_error"] for a, b in zip(runs[0::2], runs[1::2]))
    parts.append(f"scaling lowers the error at {wins} of 5 widths")
    return "; ".join(parts)


def _log_fit(xs: list[int], ys: list[float]) -> tuple[float, float]:
    ly = [math.log(max(y, 1e-12)) for y in ys]
    mx, my = statistics.mean(xs), statistics.mean(ly)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ly)) / sum((x - mx) ** 2 for x in xs)
    return math.exp(my - slope * mx), slope


def _plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for scaled, label in ((False, "U[-1,1]"), (True, "Q/K × n_K^1/4")):
        rs = [r for r in runs if r["scaled"] == scaled]
        ax.errorbar(
            [r["n_k"] for r in rs], [r["mean_abs_error"] for r in rs], yerr=[r["std"] for r in rs], marker="o", capsize=3, label=label
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("n_K = n_V")
    ax.set_ylabel("mean |Attn_S − Attn_T|")
    ax.set_title("strong ticket of a random attention (edge-popup)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
