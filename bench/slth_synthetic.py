"""SLTH synthetic experiment (Otsuka et al. §4.1, papers.md §2.6): error of a pruned random attention vs n_K.

Task: angular-velocity estimation. A sequence x_t = (cos(ωt + θ0), sin(ωt + θ0)), ω ∈ [−π, π],
θ0 ∈ [0, π], t = 0..T−1 (T = 4, the paper's Fig. 4), after a regression token (a learned vector,
initialised to zero). The target is a single-head attention (input dim 2, d_K = d_V = 2, output 1),
kept at spectral norm ≤ 1 (the theory's assumption; projected after every step) and trained on ω at
the regression token with AdamW (lr 0.1, wd 0.01, batch 1024, 25 epochs; 10,000 sequences each for train/test).

Sources: random single-head attentions with n_K = n_V ∈ {8, …, 128}, every weight U[−1, 1]
(``rtl.init.seeded_``, the theory's setup), with or without the query/key weights scaled by
n_K^{1/4} (``rtl.init.scale_qk_``). Masks by two methods:

- ``construction``: the paper's own method for this experiment — the subset-sum construction of its
  Lemma 4 (each input coordinate j owns half of the hidden units; M_K and M_V keep only coordinate
  j's column of those units; M_Q and M_O pick, per target entry, the subset of that block whose
  products sum closest to the target entry of W_QK = W_Q W_Kᵀ/√d_K or W_VO = W_V W_O), each subset
  sum solved as a mixed-integer program (scipy's HiGHS; the paper used Gurobi) with a time limit;
- ``edge_popup``: ``rtl.pipeline.find_strong_tickets`` at a fixed sparsity (the method of the
  paper's GPT-2 experiments), trained on the MSE to the target's outputs at every token.

Error (Theorem 3's quantity): per test sequence, max over the T + 1 query tokens of
|Attn_S(x_i) − Attn_T(x_i)|, averaged over the sequences; also relative to the same statistic of
|Attn_T|. Mean ± std over source seeds. The paper: 100 source nets per target, ε ≈ 0.8 exp(−0.06 n_K).

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

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

import rtl_kernels as rtl
from rtl_kernels.benchmarks.machine import cpu_model, utc_now

RESULTS = Path(__file__).resolve().parent / "results"
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")


class SingleHeadAttention(nn.Module):
    """softmax(q_i Kᵀ / √n_K) V W_O for every query token i; no biases. Returns ``[B, T]`` (output dim 1)."""

    def __init__(self, d: int, n_k: int, n_v: int, out: int = 1) -> None:
        super().__init__()
        self.head_dim = n_k
        self.q_proj, self.k_proj = nn.Linear(d, n_k, bias=False), nn.Linear(d, n_k, bias=False)
        self.v_proj, self.o_proj = nn.Linear(d, n_v, bias=False), nn.Linear(n_v, out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(self.head_dim), dim=-1)
        return self.o_proj(att @ v)[..., 0]


def sequences(n: int, t: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    omega = (torch.rand(n, 1, generator=gen) * 2 - 1) * math.pi
    theta = torch.rand(n, 1, generator=gen) * math.pi
    ang = omega * torch.arange(t).float() + theta
    return torch.stack([ang.cos(), ang.sin()], dim=-1), omega[:, 0]


def with_token(x: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    return torch.cat([token.expand(x.shape[0], 1, 2), x], dim=1)


@torch.no_grad()
def _project(model: nn.Module) -> None:
    """Every projection weight onto spectral norm ≤ 1 (Theorem 3's assumption on the target)."""
    for name in PROJ:
        w = getattr(model, name).weight
        w.div_(max(1.0, float(torch.linalg.matrix_norm(w, 2))))


@torch.no_grad()
def _uniform_target(gen: torch.Generator, *, exact_norm: bool) -> SingleHeadAttention:
    """A d_K = d_V = 2 target with U[−1, 1] weights, each scaled to spectral norm 1 (``exact_norm``) or to at most 1."""
    target = SingleHeadAttention(2, 2, 2)
    for name in PROJ:
        w = getattr(target, name).weight
        w.copy_(torch.rand(w.shape, generator=gen) * 2 - 1)
        norm = torch.linalg.matrix_norm(w, 2)
        w.div_(norm if exact_norm else max(1.0, float(norm)))
    return target


def train_target(xs, ys, epochs: int, seed: int):
    """The theory's target: weights U[−1, 1], trained on ω at token 0, kept at spectral norm ≤ 1 (projected each step)."""
    gen = torch.Generator().manual_seed(seed)
    target = _uniform_target(gen, exact_norm=False)
    token = nn.Parameter(torch.zeros(1, 1, 2))
    opt = torch.optim.AdamW([*target.parameters(), token], lr=0.1, weight_decay=0.01)
    for _ in range(epochs):
        for idx in torch.randperm(len(xs), generator=gen).split(1024):
            opt.zero_grad()
            loss = ((target(with_token(xs[idx], token))[:, 0] - ys[idx]) ** 2).mean()
            loss.backward()
            opt.step()
            _project(target)
    return target.eval(), token.detach()


def random_target(seed: int) -> tuple[SingleHeadAttention, torch.Tensor]:
    """An untrained target at the edge of the theory's class: U[−1, 1] weights scaled to spectral norm 1; zero regression token."""
    return _uniform_target(torch.Generator().manual_seed(seed), exact_norm=True).eval(), torch.zeros(1, 1, 2)


def merged(model: SingleHeadAttention) -> tuple[torch.Tensor, torch.Tensor]:
    """W_QK = W_Qᵀ W_K / √n_K ``[d, d]`` and W_VO = W_Vᵀ W_Oᵀ ``[d, out]`` in input coordinates (x W_QK x'ᵀ)."""
    wq, wk, wv, wo = (getattr(model, n).weight.detach().double() for n in PROJ)
    return wq.T @ wk / math.sqrt(model.head_dim), wv.T @ wo.T


def subset_sum(items: np.ndarray, target: float, time_limit: float) -> tuple[np.ndarray, float]:
    """The subset of ``items`` whose sum is closest to ``target``: min e s.t. |Σ m a − t| ≤ e, m binary (HiGHS MIP)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    n = len(items)
    if n == 0:
        return np.zeros(0, dtype=bool), abs(target)
    a = np.vstack([np.r_[items, -1.0], np.r_[-items, -1.0]])
    res = milp(
        np.r_[np.zeros(n), 1.0], constraints=LinearConstraint(a, -np.inf, [target, -target]),
        integrality=np.r_[np.ones(n), 0.0], bounds=Bounds(np.zeros(n + 1), np.r_[np.ones(n), np.inf]),
        options={"time_limit": time_limit},
    )  # fmt: skip
    if res.x is None:  # no incumbent inside the time limit: the empty subset
        return np.zeros(n, dtype=bool), abs(target)
    m = res.x[:n] > 0.5
    return m, abs(float(items[m].sum()) - target)


def construction_masks(source: SingleHeadAttention, target: SingleHeadAttention, time_limit: float) -> dict[str, torch.Tensor]:
    """Lemma 4's masks: block-diagonal M_K, M_V (unit k serves input coordinate k mod d), subset sums for M_Q, M_O."""
    wq, wk, wv, wo = (getattr(source, n).weight.detach().double().numpy() for n in PROJ)
    t_qk, t_vo = (t.numpy() for t in merged(target))
    n_k, d = wq.shape
    n_v = wv.shape[0]
    m_q, m_k = np.zeros_like(wq, dtype=bool), np.zeros_like(wk, dtype=bool)
    m_v, m_o = np.zeros_like(wv, dtype=bool), np.zeros_like(wo, dtype=bool)
    for j in range(d):
        units = np.arange(j, n_k, d)
        m_k[units, j] = True
        for i in range(d):  # W_QK[i, j] ≈ Σ_{k ∈ block j} m_Q[k, i] · W̃_Q[k, i] W̃_K[k, j] / √n_K
            items = wq[units, i] * wk[units, j] / math.sqrt(n_k)
            m_q[units, i] = subset_sum(items, float(t_qk[i, j]), time_limit)[0]
        units_v = np.arange(j, n_v, d)
        m_v[units_v, j] = True
        for o in range(wo.shape[0]):  # W_VO[j, o] ≈ Σ_{k ∈ block j} m_O[o, k] · W̃_V[k, j] W̃_O[o, k]
            m_o[o, units_v] = subset_sum(wv[units_v, j] * wo[o, units_v], float(t_vo[j, o]), time_limit)[0]
    return {n: torch.from_numpy(m).unsqueeze(0) for n, m in zip(PROJ, (m_q, m_k, m_v, m_o))}


def source_net(n_k: int, scaled: bool, seed: int) -> nn.Module:
    source = rtl.convert(SingleHeadAttention(2, n_k, n_k), 1)
    rtl.init.seeded_(source, seed, dist="uniform")  # U[−1, 1], the theory's source distribution
    if scaled:
        rtl.init.scale_qk_(source)  # n_K^{1/4} on W_Q and W_K
    return source


def errors(source: nn.Module, x_test: torch.Tensor, t_test: torch.Tensor) -> dict:
    with torch.no_grad(), rtl.routing(source, 0):
        diff = (source(x_test).double() - t_test.double()).abs()
    per_seq = diff.max(dim=1).values
    return {
        "error": float(per_seq.mean()),
        "relative_error": float(per_seq.mean() / t_test.double().abs().max(dim=1).values.mean()),
        "max_error": float(per_seq.max()),
        "token0_mean_abs_error": float(diff[:, 0].mean()),
    }


def run_one(method: str, n_k: int, scaled: bool, seed: int, data: dict, args) -> dict:
    source = source_net(n_k, scaled, seed)
    t0 = time.perf_counter()
    if method == "construction":
        masks = construction_masks(source, data["target"], args.mip_time_limit)
        rtl.set_masks(source, masks)
    else:
        masks = rtl.pipeline.find_strong_tickets(
            source, [TensorDataset(data["x_train"], data["t_train"])], sparsity=args.sparsity, epochs=args.epochs,
            loss_fn=nn.functional.mse_loss, lr=args.lr, batch_size=args.batch_size, seed=seed, progress=False,
            lr_schedule=args.lr_schedule,
        )  # fmt: skip
    kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    return {**errors(source, data["x_test"], data["t_test"]), "kept_fraction": kept, "seconds": time.perf_counter() - t0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 seeds, 2,000 sequences, 3 edge-popup epochs (a smoke run)")
    ap.add_argument("--methods", default="construction,edge_popup", help="comma list of construction, edge_popup")
    ap.add_argument("--widths", default="8,16,32,64,128", help="n_K = n_V values")
    ap.add_argument("--seeds", type=int, default=3, help="source networks per width (edge-popup)")
    ap.add_argument("--construction-seeds", type=int, default=6, help="source networks per width (construction)")
    ap.add_argument("--mip-time-limit", type=float, default=0.5, help="seconds per subset-sum MIP")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--lr-schedule", default="cosine", choices=("constant", "cosine"))
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--targets", default="trained,random", help="comma list: trained (the paper's Fig. 4 target), random (untrained)")
    ap.add_argument("--train", type=int, default=10000, help="training (and test) sequences")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.construction_seeds, args.train, args.epochs = 2, 2, 2000, 3
    torch.set_num_threads(1)
    methods = [m for m in args.methods.split(",") if m]
    widths = [int(w) for w in args.widths.split(",")]
    t_len = 4
    gen = torch.Generator().manual_seed(0)
    x_tr, y_tr = sequences(args.train, t_len, gen)
    x_te, y_te = sequences(args.train, t_len, gen)
    info = {"cpu": cpu_model(), "threads": 1, "loadavg_before": os.getloadavg(), "date": utc_now().isoformat()}
    setup = {
        "train_sequences": args.train, "test_sequences": args.train, "T": t_len, "tokens": t_len + 1,
        "source": "all weights U[-1,1] (rtl.init.seeded_ uniform); scaled: W_Q, W_K x n_K^(1/4) (rtl.init.scale_qk_)",
        "construction": f"Lemma 4 subset sums, scipy HiGHS MIP, {args.mip_time_limit} s per subset sum, {args.construction_seeds} seeds",
        "edge_popup": f"find_strong_tickets, sparsity {args.sparsity} per layer, {args.epochs} epochs, Adam lr {args.lr} ({args.lr_schedule}), "
        f"batch {args.batch_size}, MSE to the target at all tokens, {args.seeds} seeds",
        "quick": args.quick, "targets": {},
    }  # fmt: skip
    runs = []
    start = time.perf_counter()
    for kind in [t for t in args.targets.split(",") if t]:
        if kind == "trained":
            target, token = train_target(x_tr, y_tr, 25, 0)
        elif kind == "random":
            target, token = random_target(1)
        else:
            raise SystemExit(f"--targets: expected trained and/or random, got {kind!r}")
        xs, xt = with_token(x_tr, token), with_token(x_te, token)
        with torch.no_grad():
            t_tr, t_te = target(xs), target(xt)
        w_qk, w_vo = merged(target)
        setup["targets"][kind] = {
            "init": "U[-1,1], projected to spectral norm <= 1 after every step; AdamW lr 0.1 wd 0.01 batch 1024, 25 epochs on omega at token 0"
            if kind == "trained" else "U[-1,1] scaled to spectral norm 1, untrained (cf. the paper's untrained targets of Fig. 6)",
            "task_mse": float(((t_te[:, 0] - y_te) ** 2).mean()), "var_omega": float(y_te.var()),
            "W_QK": w_qk.tolist(), "W_VO": w_vo.tolist(),
            "spectral_norms": {"W_QK": float(torch.linalg.matrix_norm(w_qk, 2)), "W_VO": float(torch.linalg.matrix_norm(w_vo, 2))},
            "mean_max_abs_output": float(t_te.abs().max(dim=1).values.mean()),
        }  # fmt: skip
        data = {"target": target, "x_train": xs, "t_train": t_tr, "x_test": xt, "t_test": t_te}
        for method in methods:
            seeds = args.construction_seeds if method == "construction" else args.seeds
            for n_k in widths:
                for scaled in (False, True):
                    per_seed = [run_one(method, n_k, scaled, s, data, args) for s in range(seeds)]
                    errs = [e["error"] for e in per_seed]
                    runs.append(
                        {"target": kind, "method": method, "n_k": n_k, "scaled": scaled, "seeds": seeds, "error": statistics.mean(errs),
                         "std": statistics.stdev(errs) if len(errs) > 1 else 0.0,
                         "relative_error": statistics.mean(e["relative_error"] for e in per_seed),
                         "kept_fraction": statistics.mean(e["kept_fraction"] for e in per_seed), "per_seed": per_seed}
                    )  # fmt: skip
                    print(kind, method, n_k, scaled, f"{runs[-1]['error']:.3g} ± {runs[-1]['std']:.2g}", flush=True)
    info["loadavg_after"] = os.getloadavg()
    info["seconds"] = time.perf_counter() - start
    groups = list(dict.fromkeys((r["target"], r["method"]) for r in runs))
    direction = {f"{t} target, {m}": _direction([r for r in runs if (r["target"], r["method"]) == (t, m)], widths) for t, m in groups}
    result = {"machine": info, "setup": setup, "runs": runs, "direction": direction}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"slth_synthetic_{utc_now():%Y-%m-%d-%H%M}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    _plot(runs, groups, stem.with_suffix(".png"))
    stem.with_suffix(".md").write_text(_markdown(result, stem.with_suffix(".png").name))
    print(stem.with_suffix(".md").read_text())
    return 0


def _direction(rs: list[dict], widths: list[int]) -> str:
    parts = []
    for scaled in (False, True):
        e = [r["error"] for r in rs if r["scaled"] == scaled]
        dec = sum(b < a for a, b in zip(e, e[1:]))
        a, b = _log_fit(widths, e)
        parts.append(f"{'scaled' if scaled else 'unscaled'}: falls in {dec} of {len(e) - 1} steps, fit ε ≈ {a:.3g}·exp({b:+.4f} n_K)")
    wins = sum(u["error"] > s["error"] for u, s in zip(rs[0::2], rs[1::2]))
    parts.append(f"scaling lowers the error at {wins} of {len(widths)} widths")
    return "; ".join(parts)


def _log_fit(xs: list[int], ys: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return ys[0], 0.0
    ly = [math.log(max(y, 1e-12)) for y in ys]
    mx, my = statistics.mean(xs), statistics.mean(ly)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ly)) / sum((x - mx) ** 2 for x in xs)
    return math.exp(my - slope * mx), slope


def _markdown(result: dict, png: str) -> str:
    info, setup = result["machine"], result["setup"]
    md = [f"# SLTH synthetic (angular velocity): pruned random attention vs n_K ({info['date']})", "",
          f"CPU {info['cpu']}, 1 thread, load average {info['loadavg_before'][0]:.1f} → {info['loadavg_after'][0]:.1f} "
          f"(shared machine), {info['seconds']:.0f} s.", "", "Setup:", ""]  # fmt: skip
    md += [f"- {k}: {v}" for k, v in setup.items()]
    md += ["", "Error = mean over test sequences of max over the tokens of |Attn_S(x_i) − Attn_T(x_i)|; relative = that / the same of |Attn_T|.", "",
           "| target | method | n_K = n_V | Q/K × n_K^1/4 | error (mean ± std over seeds) | relative | kept fraction | seeds |",
           "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["runs"]:
        md.append(
            f"| {r['target']} | {r['method']} | {r['n_k']} | {'yes' if r['scaled'] else 'no'} | {r['error']:.3g} ± {r['std']:.2g} | "
            f"{r['relative_error']:.3g} | {r['kept_fraction']:.3f} | {r['seeds']} |"
        )
    md += ["", "Direction:", ""] + [f"- {m}: {d}" for m, d in result["direction"].items()] + ["", f"Plot: {png}"]
    return "\n".join(md) + "\n"


def _plot(runs: list[dict], groups: list[tuple[str, str]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.6), squeeze=False)
    titles = {"construction": "Lemma 4 subset sums (MIP)", "edge_popup": "edge-popup"}
    for ax, (kind, method) in zip(axes[0], groups):
        for scaled, label in ((False, "U[-1,1]"), (True, "Q/K × n_K^1/4")):
            rs = [r for r in runs if (r["target"], r["method"], r["scaled"]) == (kind, method, scaled)]
            ax.errorbar([r["n_k"] for r in rs], [r["error"] for r in rs], yerr=[r["std"] for r in rs], marker="o", capsize=3, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("n_K = n_V")
        ax.set_ylabel("mean_seq max_i |Attn_S − Attn_T|")
        ax.set_title(f"{titles.get(method, method)}, {kind} target", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
