"""Run plots (matplotlib, optional extra "plot"): accuracy vs sparsity, K×K similarity, similarity vs sparsity, per-layer density."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from .run import METHOD_NAMES


def accuracy_vs_sparsity(rows: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = [(r["sparsity"], r["balanced_accuracy"]) for r in rows if r["method"] == method]
        ax.plot([p[0] * 100 for p in pts], [p[1] for p in pts], marker="o", label=METHOD_NAMES.get(method, method))
    ax.set(xlabel="sparsity (% of prunable weights removed)", ylabel="balanced accuracy", title="accuracy vs sparsity")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def similarity_heatmap(matrix: list[list[float]], path: Path, title: str = "ticket similarity (Jaccard)") -> Path:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    k = len(matrix)
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{matrix[i][j]:.2f}", ha="center", va="center", fontsize=7, color="w" if matrix[i][j] < 0.6 else "k")
    ax.set(xticks=range(k), yticks=range(k), xlabel="ticket", ylabel="ticket", title=title)
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def similarity_vs_sparsity(history: list[dict], collapse: dict | None, path: Path, controller: dict | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [0.0] + [h["sparsity"] * 100 for h in history]
    per_ticket = list(zip(*[h["score"] for h in history]))
    for k, ys in enumerate(per_ticket):
        ax.plot(xs, [1.0, *ys], color="0.7", lw=0.8, label="per ticket" if k == 0 else None)
    ax.plot(xs, [1.0] + [h["mean_score"] for h in history], marker="o", color="C0", label="mean score")
    if collapse is not None:
        ax.axvline(collapse["sparsity"] * 100, color="C3", ls="--", label=f"fastest change ({collapse['sparsity']:.0%})")
    if controller:
        ax.axvline(controller["sparsity"] * 100, color="C1", ls=":", label=f"controller: {controller['action']}")
    ax.set(xlabel="sparsity (%)", ylabel="mean Jaccard with other tickets", title="similarity score vs sparsity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def layer_density(masks: dict[str, torch.Tensor], path: Path) -> Path:
    names = list(masks)
    k = next(iter(masks.values())).shape[0]
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(names) + 2), 3.5))
    width = 0.8 / (k + 1)
    for t in range(k):
        ax.bar([i + t * width for i in range(len(names))], [float(masks[n][t].float().mean()) for n in names], width, label=f"ticket {t}")
    ax.bar(
        [i + k * width for i in range(len(names))], [float(masks[n].any(0).float().mean()) for n in names], width, color="k", label="union"
    )
    ax.set_xticks([i + 0.4 for i in range(len(names))], names, rotation=60, ha="right", fontsize=7)
    ax.set(ylabel="density (fraction kept)", title="per-layer density")
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def plot_run(report: dict, final_masks: dict[str, torch.Tensor], directory: Path) -> list[Path]:
    """All four plots of a run into ``directory/plots``."""
    out = Path(directory) / "plots"
    out.mkdir(exist_ok=True)
    cp = report.get("collapse_point")
    last = report["levels"][-1]
    return [
        accuracy_vs_sparsity(report["rows"], out / "accuracy_vs_sparsity.png"),
        similarity_heatmap(last["similarity"]["jaccard"], out / "similarity_heatmap.png", f"Jaccard at {last['sparsity']:.0%} sparsity"),
        similarity_vs_sparsity(report["similarity_history"], cp, out / "similarity_vs_sparsity.png", report.get("collapse_controller")),
        layer_density(final_masks, out / "layer_density.png"),
    ]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
