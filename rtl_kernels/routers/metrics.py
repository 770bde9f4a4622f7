"""How well a router routes: accuracy, per-ticket recall, confusion matrix, and its plot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def confusion_matrix(predicted: torch.Tensor, target: torch.Tensor, num_tickets: int) -> torch.Tensor:
    """``C[i, j]`` = number of samples of subset ``i`` routed to ticket ``j`` (int64 ``[K, K]``, on CPU)."""
    predicted = torch.as_tensor(predicted).reshape(-1).to("cpu", torch.int64)
    target = torch.as_tensor(target).reshape(-1).to("cpu", torch.int64)
    if predicted.shape != target.shape:
        raise ValueError(f"subset_ids: expected {predicted.numel()} ids (one per routed sample), got {target.numel()}")
    for name, t in (("subset_ids", target), ("routes", predicted)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_tickets):
            raise ValueError(f"{name}: expected ids in [0, {num_tickets}), got values in [{int(t.min())}, {int(t.max())}]")
    flat = target * num_tickets + predicted
    return torch.bincount(flat, minlength=num_tickets * num_tickets).reshape(num_tickets, num_tickets)


def routing_report(predicted: torch.Tensor, target: torch.Tensor, num_tickets: int) -> dict[str, Any]:
    """Accuracy, per-subset recall and the confusion matrix of ``predicted`` routes against ``target`` subset ids."""
    conf = confusion_matrix(predicted, target, num_tickets)
    total = int(conf.sum())
    per_subset = conf.diagonal().double() / conf.sum(dim=1).clamp_min(1).double()
    return {
        "accuracy": float(conf.diagonal().sum()) / max(total, 1),
        "per_ticket_accuracy": per_subset.tolist(),
        "confusion": conf,
        "num_samples": total,
    }


def plot_confusion(
    confusion: torch.Tensor,
    *,
    labels: Sequence[str] | None = None,
    normalize: bool = True,
    title: str = "Routing confusion",
    path: str | None = None,
    ax: Any = None,
) -> Any:
    """Draw a routing confusion matrix (rows: true subset, columns: chosen ticket); returns the matplotlib Figure.

    Needs matplotlib (the ``plot`` extra). ``path`` also saves the figure there.
    """
    try:
        import matplotlib

        if ax is None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plot_confusion needs matplotlib: install it with `pip install rtl-kernels[plot]`") from exc
    conf = torch.as_tensor(confusion).to("cpu", torch.float64)
    if conf.dim() != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion: expected a square [K, K] matrix, got shape {list(conf.shape)}")
    k = conf.shape[0]
    if labels is not None and len(labels) != k:
        raise ValueError(f"labels: expected {k} names (one per ticket), got {len(labels)}")
    shown = conf / conf.sum(dim=1, keepdim=True).clamp_min(1) if normalize else conf
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.0 + 0.6 * k, 0.8 + 0.6 * k))
    else:
        fig = ax.figure
    image = ax.imshow(shown.numpy(), cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    names = list(labels) if labels is not None else [str(i) for i in range(k)]
    ax.set_xticks(range(k), names)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("routed to ticket")
    ax.set_ylabel("true subset")
    ax.set_title(title)
    for i in range(k):
        for j in range(k):
            text = f"{shown[i, j]:.2f}" if normalize else f"{int(shown[i, j])}"
            ax.text(j, i, text, ha="center", va="center", color="white" if shown[i, j] > 0.5 * float(shown.max()) else "black")
    fig.colorbar(image, ax=ax)
    if path is not None:
        fig.savefig(path, bbox_inches="tight")
    return fig
