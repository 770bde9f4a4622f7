"""Pieces every routed Triton kernel shares: mask-bit expansion in registers and cached tile flags."""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict

import torch
import triton
import triton.language as tl

from ...masks.packed import PackedMasks
from ...masks.tiles import tile_occupancy


@triton.jit
def keep_tile(bits_ptr, ticket, rows, cols, valid, n_rows, n_words):
    """Ticket's mask bits for weight elements ``(rows[i], cols[j])`` as a bool tile (canonical packed layout)."""
    base = (ticket.to(tl.int64) * n_rows + rows[:, None]) * n_words
    words = tl.load(bits_ptr + base + (cols[None, :] // 32), mask=valid, other=0)
    return ((words >> (cols[None, :] % 32).to(tl.int32)) & 1) != 0


@triton.jit
def block_pixels(perm_ptr, bs_ptr, be_ptr, blk, Hs, Ws, IS_LINEAR: tl.constexpr, BLOCK_M: tl.constexpr):
    """Schedule block ``blk``'s rows: validity and (image, y, x) of each sorted pixel row on an ``Hs × Ws`` grid."""
    start = tl.load(bs_ptr + blk)
    end = tl.load(be_ptr + blk)
    pos = start + tl.arange(0, BLOCK_M)
    row_ok = pos < end
    p = tl.load(perm_ptr + pos, mask=row_ok, other=0)
    if IS_LINEAR:
        return row_ok, p, p * 0, p * 0
    b = p // (Hs * Ws)
    rem = p - b * (Hs * Ws)
    y = rem // Ws
    return row_ok, b, y, rem - y * Ws


@triton.jit
def masked_weight_tile(w_ptr, bits_ptr, ticket, rows, cols, valid, n_rows, row_len, n_words):
    """Weight tile ``w[rows, cols]`` (row-major ``[n_rows, row_len]``) with the ticket's mask applied by select."""
    w = tl.load(w_ptr + rows[:, None] * row_len + cols[None, :], mask=valid, other=0.0)
    # bit expansion inlined (not a call to keep_tile): device-function calls are costly in the interpreter
    words = tl.load(bits_ptr + (ticket.to(tl.int64) * n_rows + rows[:, None]) * n_words + (cols[None, :] // 32), mask=valid, other=0)
    keep = ((words >> (cols[None, :] % 32).to(tl.int32)) & 1) != 0
    return tl.where(keep, w, tl.zeros_like(w))


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).multi_processor_count)
    return 2


def auto_split(requested: int, tiles: int, max_split: int, device: torch.device) -> int:
    """Split factor: ``requested``, or for 0 enough to give ~2 programs per SM; within ``[1, max_split]``."""
    split = requested if requested > 0 else -(-2 * _sm_count(device) // max(tiles, 1))
    return max(1, min(split, max_split))


@triton.jit
def keep_tile_words(bits_ptr, ticket, rows, row_ok, col0, n_rows, n_words, BLOCK_C: tl.constexpr):
    """``keep_tile`` for the 32-aligned column range ``col0 … col0+BLOCK_C``: one word load per 32 bits, expanded by shifts.

    Far fewer load addresses (registers) than the per-element gather; needs ``BLOCK_C % 32 == 0``.
    """
    wcols = col0 // 32 + tl.arange(0, BLOCK_C // 32)
    ptrs = bits_ptr + (ticket.to(tl.int64) * n_rows + rows[:, None]) * n_words + wcols[None, :]
    words = tl.load(ptrs, mask=row_ok[:, None] & (wcols < n_words)[None, :], other=0)
    expanded = (words[:, :, None] >> tl.arange(0, 32)[None, None, :]) & 1
    return tl.reshape(expanded, (rows.shape[0], BLOCK_C)) != 0


@triton.jit
def masked_weight_tile_words(w_ptr, bits_ptr, ticket, rows, cols, valid, row_ok, col0, n_rows, row_len, n_words, BLOCK_C: tl.constexpr):
    """``masked_weight_tile`` with the word-expanded mask (``cols = col0 + arange(BLOCK_C)``, ``col0 % 32 == 0``)."""
    w = tl.load(w_ptr + rows[:, None] * row_len + cols[None, :], mask=valid, other=0.0)
    keep = keep_tile_words(bits_ptr, ticket, rows, row_ok, col0, n_rows, n_words, BLOCK_C)
    return tl.where(keep, w, tl.zeros_like(w))


_FLAG_CACHE: OrderedDict[tuple, tuple[torch.Tensor, object]] = OrderedDict()
_FLAG_CACHE_SIZE = 64
_FLAG_LOCK = threading.Lock()  # serving threads share the cache: LRU moves and evictions must not interleave


def _cache_get(key: tuple) -> object | None:
    with _FLAG_LOCK:
        hit = _FLAG_CACHE.get(key)
        if hit is None:
            return None
        _FLAG_CACHE.move_to_end(key)
        return hit[1]


def _cache_put(key: tuple, bits: torch.Tensor, value: object) -> None:
    if bits.is_cuda and torch.cuda.is_current_stream_capturing():
        return  # computed only at graph replay: never cache it for eager use
    with _FLAG_LOCK:
        _FLAG_CACHE[key] = (bits, value)
        while len(_FLAG_CACHE) > _FLAG_CACHE_SIZE:
            _FLAG_CACHE.popitem(last=False)


def cached_tile_flags(masks: PackedMasks, tile: tuple[int, int]) -> torch.Tensor:
    """uint8 ``[K, nR, nC]`` tile occupancy of ``masks``, cached by the bits' storage and version.

    The cache holds a reference to the bits tensor, so its address cannot be reused by another
    tensor while the entry lives; an in-place update bumps the version and misses the cache.
    """
    bits = masks.bits
    key = (bits.data_ptr(), bits._version, tuple(bits.shape), str(bits.device), tuple(masks.weight_shape), tile)
    hit = _cache_get(key)
    if hit is not None:
        return hit
    flags = tile_occupancy(masks, tile)
    _cache_put(key, bits, flags)
    return flags


def cached_tile_lists(masks: PackedMasks, tile: tuple[int, int], along_rows: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (ticket, tile row) the column-tile indices whose flag is set, first and ascending, plus their count.

    ``along_rows`` swaps the roles (per tile column, the row tiles), for a reduction over weight rows.
    Both are int32 and computed on the device (stable sort, no host read); cached like the flags.
    """
    bits = masks.bits
    key = ("lists", bits.data_ptr(), bits._version, tuple(bits.shape), str(bits.device), tuple(masks.weight_shape), tile, along_rows)
    hit = _cache_get(key)
    if hit is not None:
        return hit
    flags = cached_tile_flags(masks, tile)
    if along_rows:
        flags = flags.transpose(1, 2)
    order = torch.argsort(flags.to(torch.int32), dim=2, descending=True, stable=True).to(torch.int32).contiguous()
    counts = flags.to(torch.int32).sum(dim=2, dtype=torch.int32).contiguous()
    _cache_put(key, bits, (order, counts))
    return order, counts


def sorted_tickets(plan_routes: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Ticket of each position of ``perm`` (rows in ticket order)."""
    return plan_routes.index_select(0, perm)
