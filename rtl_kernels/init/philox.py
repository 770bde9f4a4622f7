"""Philox4x32-10 in pure PyTorch, bit-identical to Triton's ``tl.randint4x`` (and our C++ kernels).

Triton's ``tl.randint4x(seed, offset)`` runs Philox4x32 with key ``(seed & 0xffffffff, seed >> 32)``
and counter ``(offset & 0xffffffff, offset >> 32, 0, 0)``. Every op here works on int64 tensors
holding uint32 values, so nothing overflows and the result is the same on every device.

How a seeded weight uses it (``GENERATOR``/``GENERATOR_VERSION`` name this layout): the Triton
seed is ``(layer_id << 32) | seed`` and the flattened (row-major) element index ``i`` selects

- ``signed_constant``: block ``i >> 7``, word ``(i >> 5) & 3``, bit ``i & 31`` (1 → +1, 0 → −1);
- ``uniform``: block ``i >> 2``, word ``i & 3``: ``(2 * (word >> 9) + 1 − 2**23) * 2**−23``, an odd
  multiple of 2**−23 in (−1, 1), exact in float32;
- ``normal``: block ``i >> 1``, words ``2 * (i & 1)`` and ``2 * (i & 1) + 1`` through Box–Muller with
  the float32 ``log``/``cos`` polynomials below (only +, ×, /, sqrt: the same bits everywhere).

The unit value is then multiplied by the layer's float32 scale (one rounding).
"""

from __future__ import annotations

import math

import torch

GENERATOR = "philox4x32-10"
GENERATOR_VERSION = 1
DISTS = ("signed_constant", "uniform", "normal")
# elements per Philox block, by distribution
PER_BLOCK = {"signed_constant": 128, "uniform": 4, "normal": 2}

_M32 = 0xFFFFFFFF
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of the 64-bit product of the constant ``a`` and uint32 values ``b``."""
    lo16, hi16 = b & 0xFFFF, b >> 16
    p_lo = lo16 * a  # < 2**48
    p_hi = hi16 * a  # < 2**48
    mid = p_lo + ((p_hi & 0xFFFF) << 16)  # < 2**49
    return (p_hi >> 16) + (mid >> 32), mid & _M32


def philox4x32(key_lo: int, key_hi: int, c0: torch.Tensor, c1: torch.Tensor, rounds: int = 10) -> tuple[torch.Tensor, ...]:
    """Philox4x32 of counters ``(c0, c1, 0, 0)`` (int64 tensors of uint32 values) under key ``(key_lo, key_hi)``."""
    c0 = c0.to(torch.int64)
    c1 = c1.to(torch.int64)
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0, k1 = key_lo & _M32, key_hi & _M32
    for _ in range(rounds):
        hi_b, lo_b = _mulhilo(_ROUND_B, c2)
        hi_a, lo_a = _mulhilo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    return c0, c1, c2, c3


def randint4x(seed: int, offset: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What ``tl.randint4x(seed, offset)`` returns, as int64 tensors of uint32 values."""
    offset = offset.to(torch.int64)
    return philox4x32(seed & _M32, (seed >> 32) & _M32, offset & _M32, (offset >> 32) & _M32)


def _words(seed: int, blocks: torch.Tensor, word: torch.Tensor) -> torch.Tensor:
    w = torch.stack(randint4x(seed, blocks))
    return w.gather(0, word.unsqueeze(0)).squeeze(0)


def _log(u: torch.Tensor) -> torch.Tensor:
    """float32 natural log of u in (0, 1] from +, ×, / only (frexp split, atanh series)."""
    m, e = torch.frexp(u)  # u = m * 2**e, m in [0.5, 1)
    small = m < 0.70710677
    m = torch.where(small, m * 2.0, m)
    e = torch.where(small, e - 1, e).to(torch.float32)
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    p = s2 * (1.0 / 9.0) + (1.0 / 7.0)
    p = p * s2 + (1.0 / 5.0)
    p = p * s2 + (1.0 / 3.0)
    p = p * s2 + 1.0
    return e * 0.6931472 + (s * 2.0) * p


def _cos2pi(t: torch.Tensor) -> torch.Tensor:
    """float32 cos(2πt) for t in [0, 1) from +, × only (symmetry to [0, 1/4], Taylor to x**14)."""
    a = torch.where(t > 0.5, 1.0 - t, t)  # cos(2π t) = cos(2π (1 − t)); a in [0, 1/2]
    neg = a > 0.25
    b = torch.where(neg, 0.5 - a, a)  # cos(2π a) = −cos(2π (1/2 − a)); b in [0, 1/4]
    x = b * 6.2831855
    x2 = x * x
    c = x2 * (-1.0 / 87178291200.0) + (1.0 / 479001600.0)
    for coef in (-1.0 / 3628800.0, 1.0 / 40320.0, -1.0 / 720.0, 1.0 / 24.0, -0.5, 1.0):
        c = c * x2 + coef
    return torch.where(neg, -c, c)


def unit_values(dist: str, seed: int, layer_id: int, start: int, count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """float32 unit values (before the layer scale) of flattened elements ``[start, start + count)``."""
    key = (layer_id << 32) | seed
    i = torch.arange(start, start + count, dtype=torch.int64, device=device)
    if dist == "signed_constant":
        word = _words(key, i >> 7, (i >> 5) & 3)
        return torch.where(((word >> (i & 31)) & 1).bool(), 1.0, -1.0).to(torch.float32)
    if dist == "uniform":
        word = _words(key, i >> 2, i & 3)
        return ((word >> 9) * 2 + 1 - (1 << 23)).to(torch.float32) * (2.0**-23)
    if dist == "normal":
        w0 = _words(key, i >> 1, (i & 1) * 2)
        w1 = _words(key, i >> 1, (i & 1) * 2 + 1)
        u1 = ((w0 >> 8) + 1).to(torch.float32) * (2.0**-24)  # (0, 1]
        u2 = (w1 >> 8).to(torch.float32) * (2.0**-24)  # [0, 1)
        return torch.sqrt(_log(u1) * -2.0) * _cos2pi(u2)
    raise ValueError(f"dist: expected one of {DISTS}, got {dist!r}")


def generate(shape: tuple[int, ...], dist: str, seed: int, layer_id: int, scale: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """The float32 seeded weight of ``shape``: unit values times ``scale`` (rounded to float32)."""
    n = math.prod(shape)
    scale32 = torch.tensor(scale, dtype=torch.float32, device=device)
    chunk = 1 << 20
    parts = [unit_values(dist, seed, layer_id, s, min(chunk, n - s), device) * scale32 for s in range(0, n, chunk)]
    out = torch.cat(parts) if parts else torch.empty(0, dtype=torch.float32, device=device)
    return out.reshape(shape)
