"""Grouped (large-batch) path: tiles of one ticket's rows × output features, mask applied in registers.

One kernel pair serves linear and conv2d: rows are output pixels (forward) or input pixels (dX)
sorted by ticket via ``block_schedule`` of the pixel-level plan; the reduction runs over
``(kh, kw)`` then channel blocks, so channels_last activations are read contiguously. A linear
layer is the 1×1-on-1×1 case (``IS_LINEAR`` drops the pixel math). The grid is N-tile-major:
consecutive programs share one weight tile across every ticket's row blocks, so it stays in L2.
The weight tile is loaded once per step, combined with the ticket's bits by select, and fed to
``tl.dot`` with fp32 accumulation. For 1×1 ungrouped problems (linear) the reduction walks only
the tiles where the ticket's mask is non-empty (BSR-like tile lists from the tile flags), with an
unconditional loop body so Triton still software-pipelines the loads; bias and the scatter to original row order are fused into
the epilogue. Unused schedule blocks (ticket -1) exit at once, so the grid is a static bound.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...routing_plans.plan import BlockSchedule
from .common import block_pixels, masked_weight_tile, masked_weight_tile_words
from .geometry import Geometry, strides4


@triton.jit(do_not_specialize=["max_blocks"])
def _fwd_kernel(
    x_ptr, w_ptr, bits_ptr, list_ptr, count_ptr, bias_ptr, y_ptr, perm_ptr, bt_ptr, bs_ptr, be_ptr,
    max_blocks, n_tiles, H, W, Ho, Wo, Cig, Cog, C_out, R, n_words, n_list_r, n_list_c,
    sxb, sxc, sxh, sxw, syb, syc, syh, syw,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    DH: tl.constexpr, DW: tl.constexpr, IS_LINEAR: tl.constexpr, USE_LIST: tl.constexpr, WORD_TILES: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    tile = pid // max_blocks
    blk = pid - tile * max_blocks
    ticket = tl.load(bt_ptr + blk)
    if ticket < 0:
        return
    g = tile // n_tiles
    nt = tile - g * n_tiles
    row_ok, b, oh, ow = block_pixels(perm_ptr, bs_ptr, be_ptr, blk, Ho, Wo, IS_LINEAR, BLOCK_M)
    co_l = nt * BLOCK_N + tl.arange(0, BLOCK_N)
    co_ok = co_l < Cog
    co = (g * Cog + co_l).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    w_ok = co_ok[:, None]
    if USE_LIST:  # 1×1 ungrouped: visit only the reduction tiles where this ticket's mask is non-empty
        pix_ok = row_ok & (oh * SH - PH >= 0) & (oh * SH - PH < H) & (ow * SW - PW >= 0) & (ow * SW - PW < W)
        x_row = b * sxb + (oh * SH - PH) * sxh + (ow * SW - PW) * sxw
        lbase = ticket.to(tl.int64) * n_list_r + nt
        for i in range(0, tl.load(count_ptr + lbase)):
            c0 = tl.load(list_ptr + lbase * n_list_c + i) * BLOCK_K
            ci = c0 + offs_k
            ci_ok = ci < Cig
            a = tl.load(x_ptr + x_row[:, None] + (ci.to(tl.int64) * sxc)[None, :], mask=pix_ok[:, None] & ci_ok[None, :], other=0.0)
            if WORD_TILES:
                wm = masked_weight_tile_words(w_ptr, bits_ptr, ticket, co, ci, w_ok & ci_ok[None, :], co_ok, c0, C_out, R, n_words, BLOCK_K)
            else:
                wm = masked_weight_tile(w_ptr, bits_ptr, ticket, co, ci, w_ok & ci_ok[None, :], C_out, R, n_words)
            acc = tl.dot(a, tl.trans(wm), acc)
    else:
        for kh in range(KH):
            for kw in range(KW):
                ih = oh * SH - PH + kh * DH
                iw = ow * SW - PW + kw * DW
                pix_ok = row_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                x_row = b * sxb + ih * sxh + iw * sxw
                for c0 in range(0, Cig, BLOCK_K):
                    ci = c0 + offs_k
                    ci_ok = ci < Cig
                    a = tl.load(
                        x_ptr + x_row[:, None] + ((g * Cig + ci).to(tl.int64) * sxc)[None, :],
                        mask=pix_ok[:, None] & ci_ok[None, :],
                        other=0.0,
                    )
                    r = ci * (KH * KW) + kh * KW + kw
                    wm = masked_weight_tile(w_ptr, bits_ptr, ticket, co, r, w_ok & ci_ok[None, :], C_out, R, n_words)
                    acc = tl.dot(a, tl.trans(wm), acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + co, mask=co_ok, other=0.0).to(tl.float32)[None, :]
    y_off = (b * syb + oh * syh + ow * syw)[:, None] + (co * syc)[None, :]
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & co_ok[None, :])


@triton.jit(do_not_specialize=["max_blocks"])
def _dx_kernel(
    dy_ptr, w_ptr, bits_ptr, list_ptr, count_ptr, dx_ptr, perm_ptr, bt_ptr, bs_ptr, be_ptr,
    max_blocks, n_tiles, H, W, Ho, Wo, Cig, Cog, C_out, R, n_words, n_list_r, n_list_c,
    syb, syc, syh, syw, sxb, sxc, sxh, sxw,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    DH: tl.constexpr, DW: tl.constexpr, IS_LINEAR: tl.constexpr, USE_LIST: tl.constexpr, WORD_TILES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    tile = pid // max_blocks
    blk = pid - tile * max_blocks
    ticket = tl.load(bt_ptr + blk)
    if ticket < 0:
        return
    g = tile // n_tiles
    nt = tile - g * n_tiles
    row_ok, b, ih, iw = block_pixels(perm_ptr, bs_ptr, be_ptr, blk, H, W, IS_LINEAR, BLOCK_M)
    ci_l = nt * BLOCK_N + tl.arange(0, BLOCK_N)
    ci_ok = ci_l < Cig
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    w_ok = ci_ok[None, :]
    if USE_LIST:  # linear / 1×1 stride-1 unpadded: visit only the ticket's non-empty weight-row tiles
        dy_row = b * syb + ih * syh + iw * syw
        lbase = ticket.to(tl.int64) * n_list_r + nt
        for i in range(0, tl.load(count_ptr + lbase)):
            co_l = tl.load(list_ptr + lbase * n_list_c + i) * BLOCK_K + offs_k
            co_ok = co_l < Cog
            co = co_l.to(tl.int64)
            dyt = tl.load(dy_ptr + dy_row[:, None] + (co * syc)[None, :], mask=row_ok[:, None] & co_ok[None, :], other=0.0)
            if WORD_TILES:
                wm = masked_weight_tile_words(
                    w_ptr, bits_ptr, ticket, co, ci_l, co_ok[:, None] & w_ok, co_ok, nt * BLOCK_N, C_out, R, n_words, BLOCK_N
                )
            else:
                wm = masked_weight_tile(w_ptr, bits_ptr, ticket, co, ci_l, co_ok[:, None] & w_ok, C_out, R, n_words)
            acc = tl.dot(dyt, wm, acc)
    else:
        for kh in range(KH):
            for kw in range(KW):
                th = ih + PH - kh * DH
                tw = iw + PW - kw * DW
                ok = row_ok & (th >= 0) & (tw >= 0)
                th = tl.where(ok, th, 0)
                tw = tl.where(ok, tw, 0)
                oh = th // SH
                ow = tw // SW
                ok = ok & (oh * SH == th) & (ow * SW == tw) & (oh < Ho) & (ow < Wo)
                dy_row = b * syb + oh * syh + ow * syw
                for c0 in range(0, Cog, BLOCK_K):
                    co_l = c0 + offs_k
                    co_ok = co_l < Cog
                    co = (g * Cog + co_l).to(tl.int64)
                    dyt = tl.load(dy_ptr + dy_row[:, None] + (co * syc)[None, :], mask=ok[:, None] & co_ok[None, :], other=0.0)
                    r = ci_l * (KH * KW) + kh * KW + kw
                    wm = masked_weight_tile(w_ptr, bits_ptr, ticket, co, r, co_ok[:, None] & w_ok, C_out, R, n_words)
                    acc = tl.dot(dyt, wm, acc)
    dx_off = (b * sxb + ih * sxh + iw * sxw)[:, None] + ((g * Cig + ci_l).to(tl.int64) * sxc)[None, :]
    tl.store(dx_ptr + dx_off, acc.to(dx_ptr.dtype.element_ty), mask=row_ok[:, None] & ci_ok[None, :])


def _list_args(tile_list: tuple[torch.Tensor, torch.Tensor] | None, bits: torch.Tensor) -> tuple:
    if tile_list is None:
        return bits, bits, 0, 0
    lists, counts = tile_list
    return lists, counts, lists.shape[1], lists.shape[2]


def _schedule_args(sched: BlockSchedule, perm: torch.Tensor) -> tuple:
    return perm, sched.block_ticket, sched.block_start, sched.block_end


def launch_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bits: torch.Tensor,
    tile_list: tuple[torch.Tensor, torch.Tensor] | None,
    bias: torch.Tensor | None,
    y: torch.Tensor,
    perm: torch.Tensor,
    sched: BlockSchedule,
    geom: Geometry,
    cfg: dict,
) -> None:
    """``y = routed op(x)`` for rows of output pixels; ``perm``/``sched`` are the pixel-level plan's."""
    meta = {k: cfg[k] for k in ("BLOCK_N", "BLOCK_K")}
    n_tiles = triton.cdiv(geom.cog, meta["BLOCK_N"])
    grid = (geom.groups * n_tiles * sched.max_blocks,)
    list_args = _list_args(tile_list, bits)
    _fwd_kernel[grid](
        x, weight, bits, *list_args[:2], bias if bias is not None else weight, y, *_schedule_args(sched, perm),
        sched.max_blocks, n_tiles, geom.h, geom.w, geom.ho, geom.wo, geom.cig, geom.cog, geom.c_out, geom.row_len,
        bits.shape[2], *list_args[2:], *strides4(x), *strides4(y),
        **geom.constexprs(), USE_LIST=tile_list is not None, WORD_TILES=meta["BLOCK_K"] % 32 == 0, HAS_BIAS=bias is not None,
        BLOCK_M=sched.block_rows, **meta, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip


def launch_dx(
    dy: torch.Tensor,
    weight: torch.Tensor,
    bits: torch.Tensor,
    tile_list: tuple[torch.Tensor, torch.Tensor] | None,
    dx: torch.Tensor,
    perm: torch.Tensor,
    sched: BlockSchedule,
    geom: Geometry,
    cfg: dict,
) -> None:
    """``dx`` of each input pixel with its ticket's masked filter; ``perm``/``sched`` cover input pixels."""
    meta = {k: cfg[k] for k in ("BLOCK_N", "BLOCK_K")}
    n_tiles = triton.cdiv(geom.cig, meta["BLOCK_N"])
    grid = (geom.groups * n_tiles * sched.max_blocks,)
    list_args = _list_args(tile_list, bits)
    _dx_kernel[grid](
        dy, weight, bits, *list_args[:2], dx, *_schedule_args(sched, perm),
        sched.max_blocks, n_tiles, geom.h, geom.w, geom.ho, geom.wo, geom.cig, geom.cog, geom.c_out, geom.row_len,
        bits.shape[2], *list_args[2:], *strides4(dy), *strides4(dx),
        **geom.constexprs(), USE_LIST=tile_list is not None, WORD_TILES=meta["BLOCK_N"] % 32 == 0,
        BLOCK_M=sched.block_rows, **meta, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
