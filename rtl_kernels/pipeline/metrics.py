"""Task metrics: balanced accuracy, per-class recall/precision, one-vs-rest ticket scores, PSNR and SI-SNR(i)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError(f"pred, target: expected tensors, got {type(pred).__name__} and {type(target).__name__}")
    if pred.shape != target.shape:
        raise ValueError(f"pred: expected the shape of target {list(target.shape)}, got {list(pred.shape)}")


def confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Confusion counts ``[true class, predicted class]`` (int64)."""
    _check_pair(pred, target)
    idx = target.long().reshape(-1) * num_classes + pred.long().reshape(-1)
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_report(pred: torch.Tensor, target: torch.Tensor, num_classes: int | None = None) -> dict:
    """Balanced accuracy (mean recall over the classes present), accuracy, per-class recall and precision."""
    _check_pair(pred, target)
    if num_classes is None:
        num_classes = int(max(int(pred.max()), int(target.max())) + 1) if target.numel() else 1
    cm = confusion(pred, target, num_classes).double()
    support, predicted = cm.sum(1), cm.sum(0)
    recall = torch.where(support > 0, cm.diagonal() / support.clamp_min(1), torch.full_like(support, float("nan")))
    precision = torch.where(predicted > 0, cm.diagonal() / predicted.clamp_min(1), torch.zeros_like(predicted))
    present = support > 0
    return {
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "accuracy": float(cm.diagonal().sum() / cm.sum().clamp_min(1)),
        "recall": recall.tolist(),
        "precision": precision.tolist(),
    }


def binary_scores(pred: torch.Tensor, target: torch.Tensor) -> dict:
    """Binary detector scores: balanced accuracy (TPR+TNR)/2, recall (TPR), TNR and precision."""
    _check_pair(pred, target)
    pred, target = pred.bool(), target.bool()
    tp = float((pred & target).sum())
    tn = float((~pred & ~target).sum())
    pos, neg = float(target.sum()), float((~target).sum())
    recall = tp / pos if pos else float("nan")
    tnr = tn / neg if neg else float("nan")
    npred = float(pred.sum())
    return {"balanced_accuracy": (recall + tnr) / 2, "recall": recall, "tnr": tnr, "precision": tp / npred if npred else 0.0}


def one_vs_rest(pred_per_ticket: Sequence[torch.Tensor], subset_ids: torch.Tensor, ticket_classes: Sequence[Sequence[int]]) -> dict:
    """The paper's protocol: ticket k as a detector of subset k over the whole test set.

    ``pred_per_ticket[k]`` are ticket k's predicted classes for every test sample; the ticket says
    "mine" when the prediction is one of the classes it was trained on (``ticket_classes[k]``).
    Returns per-ticket scores and their means.
    """
    per = []
    for k, pred in enumerate(pred_per_ticket):
        mine = torch.isin(pred.long(), torch.as_tensor(list(ticket_classes[k]), dtype=torch.long))
        per.append(binary_scores(mine, subset_ids == k))
    keys = ("balanced_accuracy", "recall", "tnr", "precision")
    return {"per_ticket": per, **{f"mean_{key}": float(torch.tensor([p[key] for p in per]).nanmean()) for key in keys}}


def psnr(pred: torch.Tensor, target: torch.Tensor, max_value: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(MAX² / MSE)``."""
    _check_pair(pred, target)
    mse = float(((pred.double() - target.double()) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * torch.log10(torch.tensor(max_value**2 / mse, dtype=torch.float64)).item()


def si_snr(estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SNR in dB over the last dimension (zero-mean signals): ``10 log10(‖αs‖² / ‖αs − ŝ‖²)``."""
    _check_pair(estimate, reference)
    est = estimate.double() - estimate.double().mean(-1, keepdim=True)
    ref = reference.double() - reference.double().mean(-1, keepdim=True)
    alpha = (est * ref).sum(-1, keepdim=True) / ((ref * ref).sum(-1, keepdim=True) + eps)
    target = alpha * ref
    return 10 * torch.log10(((target**2).sum(-1) + eps) / (((target - est) ** 2).sum(-1) + eps))


def si_snr_improvement(estimate: torch.Tensor, noisy: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """SI-SNRi: SI-SNR of the estimate minus SI-SNR of the unprocessed input, in dB."""
    return si_snr(estimate, reference) - si_snr(noisy, reference)
