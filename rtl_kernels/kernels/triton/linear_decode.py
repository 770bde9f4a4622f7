"""Small-batch (decode) path: weight-stationary, mask-streaming routed linear (forward and dX).

Computes ``Yᵀ = (W⊙M)·Xᵀ`` so the few rows (≤ ``BLOCK_R``, padded to ≥ 16) are the narrow dot
dimension. Each program owns ``BLOCK_N`` output features and a range of reduction tiles
(split-K): it loads every weight tile once, then streams the bit tile of each *active* ticket
past it (a device-side walk over the ticket segments of the sorted rows, so no host read), and
multiplies the masked tile with that ticket's columns of ``Xᵀ``. Weight bytes are therefore read
once however many tickets the batch touches. ``W_T`` computes ``dXᵀ = (W⊙M)ᵀ·dYᵀ`` with the same
loop. Split-K partials go to an fp32 buffer summed afterwards (deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import auto_split, keep_tile, keep_tile_words


@triton.jit(do_not_specialize=["M", "split_stride"])
def _decode_kernel(
    a_ptr, w_ptr, bits_ptr, flags_ptr, bias_ptr, out_ptr, perm_ptr, st_ptr, offsets_ptr,
    M, OUT, RED, N_W, KIN_W, n_words, n_flag_r, n_flag_c, tiles_per_split, split_stride,
    W_T: tl.constexpr, HAS_BIAS: tl.constexpr, USE_FLAGS: tl.constexpr, WORD_TILES: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < OUT
    cols = tl.arange(0, BLOCK_R)
    col_ok = cols < M
    rows = tl.load(perm_ptr + cols, mask=col_ok, other=0)
    col_t = tl.load(st_ptr + cols, mask=col_ok, other=-1)
    acc = tl.zeros((BLOCK_N, BLOCK_R), dtype=tl.float32)
    kt0 = pid_s * tiles_per_split
    kt1 = tl.minimum(kt0 + tiles_per_split, tl.cdiv(RED, BLOCK_K))
    for kt in range(kt0, kt1):
        offs_k = kt * BLOCK_K + tl.arange(0, BLOCK_K)
        k_ok = offs_k < RED
        x_t = tl.load(a_ptr + rows[None, :] * RED + offs_k[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if W_T:  # weight rows are the reduction, weight columns the output
            valid = k_ok[:, None] & n_ok[None, :]
            w = tl.load(w_ptr + offs_k[:, None].to(tl.int64) * KIN_W + offs_n[None, :], mask=valid, other=0.0)
        else:
            valid = n_ok[:, None] & k_ok[None, :]
            w = tl.load(w_ptr + offs_n[:, None].to(tl.int64) * KIN_W + offs_k[None, :], mask=valid, other=0.0)
        c = tl.load(offsets_ptr)  # = 0, as int64
        while c < M:
            t = tl.load(st_ptr + c)
            c_next = tl.load(offsets_ptr + t + 1)
            go = True
            if USE_FLAGS:
                if W_T:
                    go = tl.load(flags_ptr + (t * n_flag_r + kt) * n_flag_c + pid_n) != 0
                else:
                    go = tl.load(flags_ptr + (t * n_flag_r + pid_n) * n_flag_c + kt) != 0
            if go:
                xs = tl.where((col_t == t)[None, :], x_t, tl.zeros_like(x_t))
                if W_T:
                    if WORD_TILES:
                        keep = keep_tile_words(bits_ptr, t, offs_k.to(tl.int64), k_ok, pid_n * BLOCK_N, N_W, n_words, BLOCK_N)
                    else:
                        keep = keep_tile(bits_ptr, t, offs_k.to(tl.int64), offs_n, valid, N_W, n_words)
                    acc = tl.dot(tl.trans(tl.where(keep, w, tl.zeros_like(w))), xs, acc)
                else:
                    if WORD_TILES:
                        keep = keep_tile_words(bits_ptr, t, offs_n.to(tl.int64), n_ok, kt * BLOCK_K, N_W, n_words, BLOCK_K)
                    else:
                        keep = keep_tile(bits_ptr, t, offs_n.to(tl.int64), offs_k, valid, N_W, n_words)
                    acc = tl.dot(tl.where(keep, w, tl.zeros_like(w)), xs, acc)
            c = c_next
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    out_off = pid_s.to(tl.int64) * split_stride + rows[None, :] * OUT + offs_n[:, None]
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=n_ok[:, None] & col_ok[None, :])


def block_rows_for(m: int) -> int:
    """Padded row count of the decode tile (a power of two, at least 16 for ``tl.dot``)."""
    return max(16, triton.next_power_of_2(max(m, 1)))


def launch_decode(
    a: torch.Tensor,
    weight: torch.Tensor,
    bits: torch.Tensor,
    flags: torch.Tensor | None,
    bias: torch.Tensor | None,
    perm: torch.Tensor,
    sorted_t: torch.Tensor,
    offsets: torch.Tensor,
    transpose_w: bool,
    cfg: dict,
) -> torch.Tensor:
    """Forward ``a @ (W⊙M_r)ᵀ (+bias)`` or, with ``transpose_w``, ``a @ (W⊙M_r)``, rows in original order."""
    m, red = a.shape
    n_w, kin_w = weight.shape
    out_features = kin_w if transpose_w else n_w
    bn, bk = cfg["BLOCK_N"], cfg["BLOCK_K"]
    n_k = triton.cdiv(red, bk)
    split = auto_split(int(cfg.get("SPLIT_K", 1)), triton.cdiv(out_features, bn), n_k, a.device)
    per_split = triton.cdiv(n_k, split)
    split = triton.cdiv(n_k, per_split)
    if split == 1:
        out = torch.empty((m, out_features), dtype=a.dtype, device=a.device)
    else:
        out = torch.empty((split, m, out_features), dtype=torch.float32, device=a.device)
    flag_args = (flags, flags.shape[1], flags.shape[2]) if flags is not None else (bits, 0, 0)
    grid = (triton.cdiv(out_features, bn), split)
    _decode_kernel[grid](
        a, weight, bits, flag_args[0], bias if bias is not None and split == 1 else weight, out, perm, sorted_t, offsets,
        m, out_features, red, n_w, kin_w, bits.shape[2], flag_args[1], flag_args[2], per_split, m * out_features,
        W_T=transpose_w, HAS_BIAS=bias is not None and split == 1, USE_FLAGS=flags is not None,
        WORD_TILES=(bn if transpose_w else bk) % 32 == 0,
        BLOCK_N=bn, BLOCK_K=bk, BLOCK_R=block_rows_for(m), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    if split == 1:
        return out
    y = out.sum(0)
    if bias is not None:
        y += bias.to(torch.float32)
    return y.to(a.dtype)
