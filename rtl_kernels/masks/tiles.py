"""Tile-structured masks: pruning at tile granularity and the per-tile occupancy kernels skip on.

A weight ``[N, *rest]`` is viewed as the matrix ``[N, R]`` (the packed-mask view). Tiles are
``(rows, cols)`` blocks of that matrix; a tile whose mask bits are all zero needs neither a load
nor a multiply, so kernels read ``tile_occupancy`` flags and skip it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .packed import WORD_BITS, PackedMasks, matrix_shape, pack_masks


def _check_tile(tile: Sequence[int]) -> tuple[int, int]:
    if not isinstance(tile, Sequence) or len(tile) != 2 or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in tile):
        raise ValueError(f"tile: expected a pair of positive ints (rows, cols), got {tile!r}")
    return int(tile[0]), int(tile[1])


def _tile_view(values: torch.Tensor, tile: tuple[int, int]) -> torch.Tensor:
    """``[K, N, R]`` zero-padded to whole tiles, viewed as ``[K, nR, tr, nC, tc]``."""
    k, n, r = values.shape
    tr, tc = tile
    nr, nc = math.ceil(n / tr), math.ceil(r / tc)
    padded = torch.nn.functional.pad(values, (0, nc * tc - r, 0, nr * tr - n))
    return padded.reshape(k, nr, tr, nc, tc)


def tile_prune(
    weight_scores: torch.Tensor, sparsity: float | Sequence[float], tile: Sequence[int], *, per_ticket: bool = False
) -> torch.Tensor:
    """Bool masks ``[K, *weight_shape]`` keeping the highest-scoring tiles, zero on whole tiles.

    ``weight_scores`` is ``[*weight_shape]`` (one score per weight, e.g. ``|w|``; K = number of
    sparsities) or, with ``per_ticket=True``, ``[K, *weight_shape]``; a tile's score is the mean of
    its scores. ``sparsity`` (one value or one per ticket) is the fraction of *tiles* removed;
    partial edge tiles count as tiles, so the weight-level sparsity can differ slightly.
    """
    if not isinstance(weight_scores, torch.Tensor) or not weight_scores.is_floating_point():
        raise TypeError(f"weight_scores: expected a floating-point tensor, got {type(weight_scores).__name__}")
    if weight_scores.dim() < (3 if per_ticket else 2):
        want = "[K, *weight_shape]" if per_ticket else "[*weight_shape]"
        raise ValueError(f"weight_scores: expected {want} with a weight of 2 or more dims, got {list(weight_scores.shape)}")
    tile = _check_tile(tile)
    scores = weight_scores
    if isinstance(sparsity, int | float):
        sparsities = [float(sparsity)]
    else:
        sparsities = [float(s) for s in sparsity]
    if not per_ticket:
        scores = scores.unsqueeze(0).expand(len(sparsities), *scores.shape)
    k = scores.shape[0]
    if len(sparsities) == 1:
        sparsities = sparsities * k
    if len(sparsities) != k:
        raise ValueError(f"sparsity: expected one value or {k} values (one per ticket), got {len(sparsities)}")
    if any(not 0.0 <= s <= 1.0 for s in sparsities):
        raise ValueError(f"sparsity: expected values in [0, 1], got {sparsities}")
    weight_shape = scores.shape[1:]
    n, r = matrix_shape(weight_shape)
    view = _tile_view(scores.reshape(k, n, r).to(torch.float32), tile)
    counts = _tile_view(torch.ones(1, n, r, device=scores.device), tile).sum(dim=(2, 4))
    tile_scores = view.sum(dim=(2, 4)) / counts  # [K, nR, nC]
    num_tiles = tile_scores[0].numel()
    keep = torch.zeros_like(tile_scores, dtype=torch.bool)
    for ticket, s in enumerate(sparsities):
        n_keep = num_tiles - round(s * num_tiles)
        if n_keep > 0:
            top = torch.topk(tile_scores[ticket].reshape(-1), n_keep).indices
            keep[ticket].view(-1)[top] = True
    tr, tc = tile
    dense = keep[:, :, None, :, None].expand(k, keep.shape[1], tr, keep.shape[2], tc).reshape(k, keep.shape[1] * tr, keep.shape[2] * tc)
    return dense[:, :n, :r].reshape(k, *weight_shape).contiguous()


def tile_occupancy(masks: torch.Tensor | PackedMasks, tile: Sequence[int]) -> torch.Tensor:
    """uint8 flags ``[K, ceil(N/tr), ceil(R/tc)]``: 1 where ticket k's mask has any bit in that tile.

    Runs on the masks' device without host reads. Column tiles that are a multiple of 32 wide are
    computed on the packed words directly; others unpack first.
    """
    tile = _check_tile(tile)
    packed = pack_masks(masks) if isinstance(masks, torch.Tensor) else masks
    if not isinstance(packed, PackedMasks):
        raise TypeError(f"masks: expected a bool tensor or PackedMasks, got {type(masks).__name__}")
    n, r = matrix_shape(packed.weight_shape)
    tr, tc = tile
    if tc % WORD_BITS == 0:
        # padding bits are zero, so whole words stand in for their 32 columns
        words = packed.bits
        view = _tile_view(words, (tr, tc // WORD_BITS))
        flags = (view != 0).any(dim=4).any(dim=2)
        return flags[:, :, : math.ceil(r / tc)].to(torch.uint8).contiguous()
    bools = packed.unpack().reshape(packed.num_tickets, n, r)
    return _tile_view(bools.to(torch.uint8), tile).any(dim=4).any(dim=2).to(torch.uint8).contiguous()


def tile_density(masks: torch.Tensor | PackedMasks, tile: Sequence[int]) -> torch.Tensor:
    """Fraction of tiles with at least one kept weight, per ticket (float32 ``[K]``)."""
    flags = tile_occupancy(masks, tile)
    return flags.to(torch.float32).mean(dim=(1, 2))
