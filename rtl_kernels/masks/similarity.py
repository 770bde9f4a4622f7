"""Jaccard overlap of ticket masks: the subnetwork similarity score."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .packed import PackedMasks, pack_masks, popcount

MaskLike = torch.Tensor | PackedMasks


def _as_packed(masks: MaskLike, name: str) -> PackedMasks:
    if isinstance(masks, PackedMasks):
        return masks
    if isinstance(masks, torch.Tensor):
        if masks.dtype != torch.bool:
            raise TypeError(f"{name}: expected a bool tensor or PackedMasks, got a {masks.dtype} tensor")
        return pack_masks(masks)
    raise TypeError(f"{name}: expected a bool tensor, a PackedMasks or a dict of them, got {type(masks).__name__}")


def overlap_counts(masks: MaskLike) -> tuple[torch.Tensor, torch.Tensor]:
    """``(intersection, union)`` counts, int64 ``[K, K]``, computed on the packed bits."""
    packed = _as_packed(masks, "masks")
    words = packed.bits.reshape(packed.num_tickets, -1)
    inter = popcount(words.unsqueeze(1) & words.unsqueeze(0)).sum(-1)
    union = popcount(words.unsqueeze(1) | words.unsqueeze(0)).sum(-1)
    return inter, union


def jaccard_from_counts(inter: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    """``|a∧b| / |a∨b|`` as float64, 1.0 where both masks are empty."""
    inter = inter.to(torch.float64)
    union = union.to(torch.float64)
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def jaccard(masks: MaskLike | Mapping[str, MaskLike]) -> torch.Tensor:
    """K×K Jaccard matrix (float64, on the CPU); a dict sums counts over all its entries."""
    if isinstance(masks, Mapping):
        if not masks:
            raise ValueError("masks: expected a non-empty dict of masks, got an empty dict")
        inter_total = union_total = None
        num_tickets = None
        for name, value in masks.items():
            packed = _as_packed(value, f"masks[{name!r}]")
            if num_tickets is None:
                num_tickets = packed.num_tickets
            elif packed.num_tickets != num_tickets:
                raise ValueError(f"masks[{name!r}]: expected {num_tickets} tickets like the other entries, got {packed.num_tickets}")
            inter, union = overlap_counts(packed)
            inter_total = inter.cpu() if inter_total is None else inter_total + inter.cpu()
            union_total = union.cpu() if union_total is None else union_total + union.cpu()
        return jaccard_from_counts(inter_total, union_total)
    inter, union = overlap_counts(masks)
    return jaccard_from_counts(inter.cpu(), union.cpu())
