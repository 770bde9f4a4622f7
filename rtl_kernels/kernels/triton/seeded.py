"""Seeded-weight routed linear in Triton: the weight tile is regenerated with ``tl.randint4x``, never read.

Same stream as :mod:`rtl_kernels.init.philox` (key ``(layer << 32) | seed``): signed_constant
element ``i`` is bit ``i & 31`` of word ``(i >> 5) & 3`` of block ``i >> 7``; uniform element ``i``
is word ``i & 3`` of block ``i >> 2``; normal element ``i`` is Box–Muller of words ``2 (i & 1)``
and ``2 (i & 1) + 1`` of block ``i >> 1``. Each program owns one row and ``BLOCK_N`` outputs (forward)
or ``BLOCK_C`` inputs (dX) and loops over the reduction in tiles, generating each weight tile,
masking it with that row's ticket bits and reducing in float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

DIST_IDS = {"signed_constant": 0, "uniform": 1, "normal": 2}
# the generators round every product and sum on their own (as the reference): no FMA contraction
NO_FMA = {"enable_fp_fusion": False}


@triton.jit
def _word(r0, r1, r2, r3, sel):
    return tl.where(sel == 0, r0, tl.where(sel == 1, r1, tl.where(sel == 2, r2, r3)))


@triton.jit
def _unit(key, idx, DIST: tl.constexpr):
    """float32 unit value of flattened elements ``idx`` (int64) of the layer's stream."""
    if DIST == 0:
        r0, r1, r2, r3 = tl.randint4x(key, idx >> 7)
        w = _word(r0, r1, r2, r3, (idx >> 5) & 3)
        bit = (w >> (idx & 31).to(tl.uint32)) & 1
        return tl.where(bit == 1, 1.0, -1.0).to(tl.float32)
    elif DIST == 1:
        r0, r1, r2, r3 = tl.randint4x(key, idx >> 2)
        w = _word(r0, r1, r2, r3, idx & 3)
        t = ((w >> 9) * 2 + 1).to(tl.int32) - (1 << 23)
        return t.to(tl.float32) * 1.1920928955078125e-07
    else:
        r0, r1, r2, r3 = tl.randint4x(key, idx >> 1)
        odd = (idx & 1) == 1
        return _normal(tl.where(odd, r2, r0), tl.where(odd, r3, r1))


@triton.jit
def _normal(w0, w1):
    """Box–Muller of two uint32 words, operation for operation as ``init/philox.py`` (correctly rounded
    ``/`` and sqrt; the kernels are launched without FMA contraction)."""
    u1 = ((w0 >> 8) + 1).to(tl.float32) * 5.9604644775390625e-08  # (0, 1]
    u2 = (w1 >> 8).to(tl.float32) * 5.9604644775390625e-08  # [0, 1)
    ub = u1.to(tl.uint32, bitcast=True)
    m = ((ub & 0x807FFFFF) | 0x3F000000).to(tl.float32, bitcast=True)
    e = (ub >> 23).to(tl.int32) - 126
    small = m < 0.70710677
    m = tl.where(small, m * 2.0, m)
    e = tl.where(small, e - 1, e)
    s = tl.math.div_rn(m - 1.0, m + 1.0)
    s2 = s * s
    p = s2 * 0.1111111111111111 + 0.14285714285714285
    p = p * s2 + 0.2
    p = p * s2 + 0.3333333333333333
    p = p * s2 + 1.0
    lg = e.to(tl.float32) * 0.6931472 + (s * 2.0) * p
    radius = tl.sqrt_rn(lg * -2.0)
    a = tl.where(u2 > 0.5, 1.0 - u2, u2)
    neg = a > 0.25
    x = tl.where(neg, 0.5 - a, a) * 6.2831855
    x2 = x * x
    c = x2 * -1.1470745597729725e-11 + 2.08767569878681e-09
    c = c * x2 + -2.755731922398589e-07
    c = c * x2 + 2.48015873015873e-05
    c = c * x2 + -0.001388888888888889
    c = c * x2 + 0.041666666666666664
    c = c * x2 + -0.5
    c = c * x2 + 1.0
    return radius * tl.where(neg, -c, c)


@triton.jit
def _generate_kernel(out_ptr, scale_ptr, N, C, row0, key, DIST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = (n[:, None] < N) & (c[None, :] < C)
    idx = n[:, None].to(tl.int64) * C + c[None, :]
    s = tl.load(scale_ptr + n, mask=n < N, other=0.0)
    tl.store(out_ptr + idx, _unit(key, idx + row0.to(tl.int64) * C, DIST) * s[:, None], mask=ok)


@triton.jit
def _forward_kernel(
    x_ptr, bits_ptr, routes_ptr, scale_ptr, bias_ptr, y_ptr, N, C, n_words, row0, key,
    DIST: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    m = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    ticket = tl.load(routes_ptr + m)
    s = tl.load(scale_ptr + n, mask=n_ok, other=0.0)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        ok = n_ok[:, None] & c_ok[None, :]
        idx = (n[:, None] + row0).to(tl.int64) * C + c[None, :]
        w = _unit(key, idx, DIST) * s[:, None]
        word = tl.load(bits_ptr + (ticket * N + n[:, None]).to(tl.int64) * n_words + (c[None, :] >> 5), mask=ok, other=0)
        keep = ((word >> (c[None, :] & 31)) & 1) != 0
        xv = tl.load(x_ptr + m.to(tl.int64) * C + c, mask=c_ok, other=0.0)
        acc += tl.sum(tl.where(keep & ok, w, 0.0) * xv[None, :], axis=1)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + n, mask=n_ok, other=0.0)
    tl.store(y_ptr + m.to(tl.int64) * N + n, acc, mask=n_ok)


@triton.jit
def _grad_x_kernel(
    dy_ptr, bits_ptr, routes_ptr, scale_ptr, dx_ptr, N, C, n_words, row0, key,
    DIST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    m = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    ticket = tl.load(routes_ptr + m)
    acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < N
        ok = n_ok[:, None] & c_ok[None, :]
        idx = (n[:, None] + row0).to(tl.int64) * C + c[None, :]
        s = tl.load(scale_ptr + n, mask=n_ok, other=0.0)
        w = _unit(key, idx, DIST) * s[:, None]
        word = tl.load(bits_ptr + (ticket * N + n[:, None]).to(tl.int64) * n_words + (c[None, :] >> 5), mask=ok, other=0)
        keep = ((word >> (c[None, :] & 31)) & 1) != 0
        d = tl.load(dy_ptr + m.to(tl.int64) * N + n, mask=n_ok, other=0.0)
        acc += tl.sum(tl.where(keep & ok, w, 0.0) * d[:, None], axis=0)
    tl.store(dx_ptr + m.to(tl.int64) * C + c, acc, mask=c_ok)


def triton_key(seed: int, layer: int) -> int:
    """The ``tl.randint4x`` seed of a layer: key words ``(seed, layer)``."""
    return (layer << 32) | seed


def generate(row_scale: torch.Tensor, in_features: int, seed: int, layer: int, dist: str, row0: int = 0) -> torch.Tensor:
    """Rows ``[row0, row0 + N)`` of the seeded weight (float32, ``[N, in_features]``) on ``row_scale``'s device."""
    n = row_scale.shape[0]
    out = torch.empty(n, in_features, dtype=torch.float32, device=row_scale.device)
    if out.numel():
        grid = (triton.cdiv(n, 16), triton.cdiv(in_features, 64))
        _generate_kernel[grid](
            out, row_scale, n, in_features, row0, triton_key(seed, layer), DIST=DIST_IDS[dist], BLOCK_N=16, BLOCK_C=64, **NO_FMA
        )
    return out


def forward(x, bits, routes, row_scale, bias, seed: int, layer: int, dist: str, row0: int = 0) -> torch.Tensor:
    """``y[m] = x[m] @ (W ⊙ mask[routes[m]])ᵀ + bias`` (float32 ``x``)."""
    m, c = x.shape
    n = row_scale.shape[0]
    y = torch.empty(m, n, dtype=torch.float32, device=x.device)
    if m and n:
        grid = (m, triton.cdiv(n, 32))
        _forward_kernel[grid](
            x, bits, routes, row_scale, bias if bias is not None else row_scale, y, n, c, bits.shape[2], row0, triton_key(seed, layer),
            DIST=DIST_IDS[dist], HAS_BIAS=bias is not None, BLOCK_N=32, BLOCK_C=64, **NO_FMA,
        )  # fmt: skip
    return y


def grad_x(dy, bits, routes, row_scale, in_features: int, seed: int, layer: int, dist: str, row0: int = 0) -> torch.Tensor:
    """``dx[m] = dy[m] @ (W ⊙ mask[routes[m]])`` (float32)."""
    m, n = dy.shape
    dx = torch.empty(m, in_features, dtype=torch.float32, device=dy.device)
    if m and in_features:
        grid = (m, triton.cdiv(in_features, 64))
        _grad_x_kernel[grid](
            dy,
            bits,
            routes,
            row_scale,
            dx,
            n,
            in_features,
            bits.shape[2],
            row0,
            triton_key(seed, layer),
            DIST=DIST_IDS[dist],
            BLOCK_N=32,
            BLOCK_C=64,
            **NO_FMA,
        )
    elif m:
        dx.zero_()
    return dx
