"""Magnitude pruning among the weights a mask still keeps: global or per-layer ranking, exact counts."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

SCOPES = ("global", "layer")


def keep_counts(numels: Mapping[str, int], sparsity: float, scope: str) -> dict[str, int] | int:
    """Kept-weight target: one total for ``global``, one count per tensor for ``layer``."""
    if scope == "global":
        return round((1.0 - sparsity) * sum(numels.values()))
    if scope == "layer":
        return {name: round((1.0 - sparsity) * n) for name, n in numels.items()}
    raise ValueError(f"scope: expected one of {SCOPES}, got {scope!r}")


def _smallest(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the ``n`` smallest entries (ties broken by position, so results are deterministic)."""
    if n <= 0:
        return torch.empty(0, dtype=torch.long)
    order = torch.sort(scores, stable=True).indices
    return order[:n]


@torch.no_grad()
def prune_by_magnitude(
    weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], target: dict[str, int] | int
) -> dict[str, torch.Tensor]:
    """New masks that drop the lowest-|w| kept weights until ``target`` kept weights remain.

    Only weights with ``mask = True`` are ranked; pruned weights stay pruned (masks only shrink).
    """
    out = {name: m.clone() for name, m in masks.items()}
    if isinstance(target, int):
        names = list(masks)
        kept = [masks[n].reshape(-1) for n in names]
        scores = torch.cat([weights[n].detach().abs().reshape(-1).float().cpu()[k.cpu()] for n, k in zip(names, kept)])
        n_prune = int(scores.numel()) - target
        if n_prune < 0:
            raise ValueError(f"target: expected at most {scores.numel()} kept weights (the masks keep that many), got {target}")
        drop = _smallest(scores, n_prune)
        flags = torch.zeros(scores.numel(), dtype=torch.bool)
        flags[drop] = True
        start = 0
        for n, k in zip(names, kept):
            count = int(k.sum())
            idx = k.cpu().nonzero().squeeze(1)
            flat = out[n].reshape(-1)
            flat[idx[flags[start : start + count]].to(flat.device)] = False
            start += count
        return out
    for name, m in masks.items():
        flat_m = m.reshape(-1)
        idx = flat_m.cpu().nonzero().squeeze(1)
        scores = weights[name].detach().abs().reshape(-1).float().cpu()[idx]
        n_prune = idx.numel() - target[name]
        if n_prune < 0:
            raise ValueError(f"target[{name!r}]: expected at most {idx.numel()} kept weights, got {target[name]}")
        flat = out[name].reshape(-1)
        flat[idx[_smallest(scores, n_prune)].to(flat.device)] = False
    return out


def sparsity_of(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of weights removed over all tensors of one ticket's mask."""
    total = sum(math.prod(m.shape) for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 1.0 - kept / max(total, 1)
