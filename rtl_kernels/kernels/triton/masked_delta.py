"""Triton masked-delta linear: ``Yᵀ = (base + s_t · (delta ⊙ M_t)) · Xᵀ`` per ticket segment, fused.

Each program owns ``BLOCK_N`` output features and ``BLOCK_R`` consecutive rows of the sorted
order. For every reduction tile it loads the base and delta tiles once, then walks the ticket
segments inside its rows (a device-side walk, no host read): the ticket's weight tile is formed
in registers with a select on its mask bits (a delta value outside the mask is never used) and
multiplied with that ticket's columns of ``Xᵀ``. ``W_T`` computes ``dXᵀ = W_tᵀ · dYᵀ`` with the
same loop (the gradient for ``x``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["M"])
def _masked_delta_kernel(
    a_ptr, base_ptr, delta_ptr, bits_ptr, scales_ptr, out_ptr, perm_ptr, st_ptr, offsets_ptr,
    M, OUT, RED, N_W, KIN_W, n_words,
    W_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_r = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < OUT
    pos0 = pid_r * BLOCK_R
    pos = pos0 + tl.arange(0, BLOCK_R)
    pos_ok = pos < M
    pos_end = tl.minimum(pos0 + BLOCK_R, M)
    rows = tl.load(perm_ptr + pos, mask=pos_ok, other=0)
    col_t = tl.load(st_ptr + pos, mask=pos_ok, other=-1)
    acc = tl.zeros((BLOCK_N, BLOCK_R), dtype=tl.float32)
    for kt in range(0, tl.cdiv(RED, BLOCK_K)):
        offs_k = kt * BLOCK_K + tl.arange(0, BLOCK_K)
        k_ok = offs_k < RED
        x_t = tl.load(a_ptr + rows[None, :].to(tl.int64) * RED + offs_k[:, None], mask=k_ok[:, None] & pos_ok[None, :], other=0.0).to(
            tl.float32
        )
        if W_T:  # weight rows are the reduction: tile [BLOCK_K (n), BLOCK_N (c)]
            valid = k_ok[:, None] & n_ok[None, :]
            w_off = offs_k[:, None].to(tl.int64) * KIN_W + offs_n[None, :]
            bit_rows, bit_cols = offs_k[:, None].to(tl.int64), offs_n[None, :]
        else:
            valid = n_ok[:, None] & k_ok[None, :]
            w_off = offs_n[:, None].to(tl.int64) * KIN_W + offs_k[None, :]
            bit_rows, bit_cols = offs_n[:, None].to(tl.int64), offs_k[None, :]
        b = tl.load(base_ptr + w_off, mask=valid, other=0.0).to(tl.float32)
        d = tl.load(delta_ptr + w_off, mask=valid, other=0.0).to(tl.float32)
        c = pos0
        while c < pos_end:
            t = tl.load(st_ptr + c)
            c_next = tl.minimum(tl.load(offsets_ptr + t + 1), pos_end)
            words = tl.load(bits_ptr + (t.to(tl.int64) * N_W + bit_rows) * n_words + bit_cols // 32, mask=valid, other=0)
            keep = ((words >> (bit_cols % 32).to(tl.int32)) & 1) != 0
            s = tl.load(scales_ptr + t).to(tl.float32)
            w = b + s * tl.where(keep, d, tl.zeros_like(d))
            xs = tl.where((col_t == t)[None, :], x_t, tl.zeros_like(x_t))
            if W_T:
                acc = tl.dot(tl.trans(w), xs, acc)
            else:
                acc = tl.dot(w, xs, acc)
            c = c_next
    out_off = rows[None, :].to(tl.int64) * OUT + offs_n[:, None]
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=n_ok[:, None] & pos_ok[None, :])


def launch(
    a: torch.Tensor,
    base: torch.Tensor,
    delta: torch.Tensor,
    bits: torch.Tensor,
    scales: torch.Tensor,
    perm: torch.Tensor,
    sorted_tickets: torch.Tensor,
    offsets: torch.Tensor,
    transpose_w: bool,
    block_n: int = 32,
    block_k: int = 32,
    block_r: int = 16,
) -> torch.Tensor:
    """``a @ W_rᵀ`` or, with ``transpose_w``, ``a @ W_r``, rows in their original order (float32 accumulation)."""
    m, red = a.shape
    n_w, kin_w = base.shape
    out_features = kin_w if transpose_w else n_w
    out = torch.empty((m, out_features), dtype=a.dtype, device=a.device)
    if m == 0 or out_features == 0:
        return out.zero_()
    grid = (triton.cdiv(out_features, block_n), triton.cdiv(m, block_r))
    _masked_delta_kernel[grid](
        a, base, delta, bits, scales, out, perm, sorted_tickets, offsets,
        m, out_features, red, n_w, kin_w, bits.shape[2],
        W_T=transpose_w, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_R=block_r,
    )  # fmt: skip
    return out
