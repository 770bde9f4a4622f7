"""Weight gradient ``dW = Σ_k M_k ⊙ (dY_kᵀ X_k)`` for linear and conv2d, mask applied in the epilogue.

Each program owns one ``[BLOCK_N, BLOCK_K]`` tile of the weight's ``[C_out, R]`` view and walks a
contiguous run of row blocks from ``block_schedule`` (rows = output pixels sorted by ticket) one
ticket segment at a time: an unconditional inner loop (software-pipelined) accumulates that
ticket's ``dYᵀ X`` in fp32, then it is added into the result through the ticket's mask bits, so
every ticket's mask is expanded once per tile. A ticket whose
mask is empty on the tile is skipped outright (tile flags). ``SPLIT`` programs per tile cover
disjoint block runs and write fp32 partials that are summed afterwards (deterministic, no atomics).
``PER_TICKET`` instead stores each ticket's unmasked ``dY_kᵀ X_k`` (for score-based mask training).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...routing_plans.plan import BlockSchedule
from .common import auto_split, block_pixels, keep_tile, keep_tile_words
from .geometry import Geometry, strides4


@triton.jit
def _flush(
    acc,
    acc_t,
    cur,
    bits_ptr,
    out_ptr,
    co,
    co_ok,
    r,
    r0,
    valid,
    C_out,
    R,
    n_words,
    PER_TICKET: tl.constexpr,
    WORD_TILES: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    if PER_TICKET:
        tl.store(out_ptr + (cur.to(tl.int64) * C_out + co[:, None]) * R + r[None, :], acc_t, mask=valid)
    else:
        if WORD_TILES:
            keep = keep_tile_words(bits_ptr, cur, co, co_ok, r0, C_out, n_words, BLOCK_K)
        else:
            keep = keep_tile(bits_ptr, cur, co, r, valid, C_out, n_words)
        acc += tl.where(keep, acc_t, tl.zeros_like(acc_t))
    return acc


@triton.jit(do_not_specialize=["max_blocks", "blocks_per_split"])
def _dw_kernel(
    dy_ptr, x_ptr, bits_ptr, flags_ptr, out_ptr, perm_ptr, bt_ptr, bs_ptr, be_ptr, seg_end_ptr,
    max_blocks, blocks_per_split, n_tiles_n, n_tiles_r, H, W, Ho, Wo, Cig, Cog, C_out, R, n_words, n_flag_r, n_flag_c,
    syb, syc, syh, syw, sxb, sxc, sxh, sxw,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    DH: tl.constexpr, DW: tl.constexpr, IS_LINEAR: tl.constexpr, USE_FLAGS: tl.constexpr, PER_TICKET: tl.constexpr, WORD_TILES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    split = tl.program_id(1)
    per_group = n_tiles_n * n_tiles_r
    g = tile // per_group
    rest = tile - g * per_group
    nt = rest // n_tiles_r
    rt = rest - nt * n_tiles_r
    co_l = nt * BLOCK_N + tl.arange(0, BLOCK_N)
    co_ok = co_l < Cog
    co = (g * Cog + co_l).to(tl.int64)
    r = rt * BLOCK_K + tl.arange(0, BLOCK_K)
    r_ok = r < R
    ci = r // (KH * KW)
    kk = r - ci * (KH * KW)
    kh = kk // KW
    kw = kk - kh * KW
    x_chan = ((g * Cig + ci).to(tl.int64) * sxc)[None, :]
    valid = co_ok[:, None] & r_ok[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    blk = split * blocks_per_split
    b1 = tl.minimum(blk + blocks_per_split, max_blocks)
    while blk < b1:  # one pass per ticket segment that overlaps this split's block range
        t = tl.load(bt_ptr + blk)
        live = t >= 0
        seg_end = tl.where(live, tl.minimum(tl.load(seg_end_ptr + t, mask=live, other=0), b1), b1)
        go = live
        if USE_FLAGS:
            go = go & (tl.load(flags_ptr + (t * n_flag_r + nt) * n_flag_c + rt, mask=live, other=0) != 0)
        if go:
            acc_t = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
            for bb in range(blk, seg_end):  # unconditional body: Triton software-pipelines the loads
                row_ok, b, oh, ow = block_pixels(perm_ptr, bs_ptr, be_ptr, bb, Ho, Wo, IS_LINEAR, BLOCK_M)
                # loaded [rows, C_out] (contiguous along channels, so the copy vectorises) and transposed in registers
                dy_rows = tl.load(
                    dy_ptr + (b * syb + oh * syh + ow * syw)[:, None] + (co * syc)[None, :],
                    mask=row_ok[:, None] & co_ok[None, :],
                    other=0.0,
                )
                ih = oh[:, None] * SH - PH + (kh * DH)[None, :]
                iw = ow[:, None] * SW - PW + (kw * DW)[None, :]
                x_ok = row_ok[:, None] & r_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                xa = tl.load(x_ptr + (b * sxb)[:, None] + x_chan + ih * sxh + iw * sxw, mask=x_ok, other=0.0)
                acc_t = tl.dot(tl.trans(dy_rows), xa, acc_t)
            acc = _flush(
                acc, acc_t, t, bits_ptr, out_ptr, co, co_ok, r, rt * BLOCK_K, valid, C_out, R, n_words, PER_TICKET, WORD_TILES, BLOCK_K
            )
        blk = seg_end
    if not PER_TICKET:
        out_off = split.to(tl.int64) * C_out * R + co[:, None] * R + r[None, :]
        tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=valid)


def launch_dw(
    dy: torch.Tensor,
    x: torch.Tensor,
    bits: torch.Tensor,
    flags: torch.Tensor | None,
    perm: torch.Tensor,
    offsets: torch.Tensor,
    sched: BlockSchedule,
    geom: Geometry,
    cfg: dict,
    out_dtype: torch.dtype,
    per_ticket: bool = False,
) -> torch.Tensor:
    """``[C_out, R]`` masked weight gradient (or ``[K, C_out, R]`` unmasked per-ticket grads)."""
    bn, bk = cfg["BLOCK_N"], cfg["BLOCK_K"]
    n_tiles_n = triton.cdiv(geom.cog, bn)
    n_tiles_r = triton.cdiv(geom.row_len, bk)
    max_blocks = sched.max_blocks
    split = 1 if per_ticket else auto_split(int(cfg.get("SPLIT", 1)), geom.groups * n_tiles_n * n_tiles_r, max_blocks, x.device)
    per_split = triton.cdiv(max_blocks, split)
    split = triton.cdiv(max_blocks, per_split)
    shape = (geom.c_out, geom.row_len)
    if per_ticket:
        out = torch.zeros((bits.shape[0], *shape), dtype=torch.float32, device=x.device)
    elif split == 1:
        out = torch.empty(shape, dtype=out_dtype, device=x.device)
    else:
        out = torch.empty((split, *shape), dtype=torch.float32, device=x.device)
    flag_args = (flags, flags.shape[1], flags.shape[2]) if flags is not None else (bits, 0, 0)
    # end block (exclusive) of each ticket's segment in the schedule
    seg_end = torch.cumsum((offsets[1:] - offsets[:-1] + sched.block_rows - 1) // sched.block_rows, 0).to(torch.int32)
    grid = (geom.groups * n_tiles_n * n_tiles_r, split)
    _dw_kernel[grid](
        dy, x, bits, flag_args[0], out, perm, sched.block_ticket, sched.block_start, sched.block_end, seg_end,
        max_blocks, per_split, n_tiles_n, n_tiles_r, geom.h, geom.w, geom.ho, geom.wo, geom.cig, geom.cog, geom.c_out,
        geom.row_len, bits.shape[2], flag_args[1], flag_args[2], *strides4(dy), *strides4(x),
        **geom.constexprs(), USE_FLAGS=flags is not None, PER_TICKET=per_ticket, WORD_TILES=bk % 32 == 0,
        BLOCK_M=sched.block_rows, BLOCK_N=bn, BLOCK_K=bk, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    if per_ticket or split == 1:
        return out
    return out.sum(0).to(out_dtype)
