"""Tile-granular pruning, tile density and the occupancy flags the Triton kernels skip on."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import rtl_kernels as rtl
from rtl_kernels.masks.tiles import tile_density, tile_occupancy, tile_prune


def occupancy_ref(masks: torch.Tensor, tile: tuple[int, int]) -> torch.Tensor:
    k, n = masks.shape[:2]
    m2 = masks.reshape(k, n, -1)
    r = m2.shape[2]
    tr, tc = tile
    out = torch.zeros(k, -(-n // tr), -(-r // tc), dtype=torch.uint8)
    for t in range(k):
        for i in range(out.shape[1]):
            for j in range(out.shape[2]):
                out[t, i, j] = bool(m2[t, i * tr : (i + 1) * tr, j * tc : (j + 1) * tc].any())
    return out


@given(
    k=st.integers(1, 3),
    n=st.integers(1, 40),
    r=st.integers(1, 80),
    tile=st.tuples(st.integers(1, 20), st.sampled_from([1, 5, 16, 32, 64])),
    density=st.sampled_from([0.0, 0.02, 0.5]),
    seed=st.integers(0, 1000),
)
def test_occupancy_matches_bruteforce(k, n, r, tile, density, seed):
    masks = torch.rand(k, n, r, generator=torch.Generator().manual_seed(seed)) < density
    ref = occupancy_ref(masks, tile)
    assert torch.equal(tile_occupancy(masks, tile), ref)
    assert torch.equal(tile_occupancy(rtl.pack_masks(masks), tile), ref)  # packed-word path for 32-multiples
    assert torch.allclose(tile_density(masks, tile), ref.float().mean(dim=(1, 2)))


def test_tile_prune_zero_on_whole_tiles_and_keeps_best():
    scores = torch.arange(8 * 12, dtype=torch.float32).reshape(8, 12)
    masks = tile_prune(scores, [0.5, 0.75], (4, 4))
    assert masks.shape == (2, 8, 12) and masks.dtype == torch.bool
    flags = tile_occupancy(masks, (4, 4))
    # every tile is all-kept or all-zero
    blocks = masks.reshape(2, 2, 4, 3, 4)
    assert torch.equal(blocks.all(dim=4).all(dim=2), blocks.any(dim=4).any(dim=2))
    assert flags.sum(dim=(1, 2)).tolist() == [3, 2]
    # highest mean scores are at the bottom right
    assert flags[1].tolist() == [[0, 0, 0], [0, 1, 1]]
    assert tile_density(masks, (4, 4)).tolist() == [0.5, pytest.approx(2 / 6)]


def test_tile_prune_conv_weight_and_per_ticket_scores():
    scores = torch.rand(3, 6, 4, 3, 3)
    masks = tile_prune(scores, 0.5, (2, 16), per_ticket=True)
    assert masks.shape == (3, 6, 4, 3, 3)
    flat = masks.reshape(3, 6, 36)
    assert tile_occupancy(flat, (2, 16)).sum(dim=(1, 2)).tolist() == [9 - round(0.5 * 9)] * 3  # 3×3 = 9 tiles


def test_tile_prune_bad_arguments():
    with pytest.raises(ValueError, match="tile"):
        tile_prune(torch.rand(4, 4), 0.5, (0, 2))
    with pytest.raises(ValueError, match="sparsity"):
        tile_prune(torch.rand(4, 4), 1.5, (2, 2))
    with pytest.raises(ValueError, match="sparsity"):
        tile_prune(torch.rand(2, 4, 4), [0.1, 0.2, 0.3], (2, 2), per_ticket=True)
    with pytest.raises(TypeError, match="weight_scores"):
        tile_prune(torch.ones(4, 4, dtype=torch.long), 0.5, (2, 2))
