"""Mask bits without row padding, the layout saves use: exactly ``K · rows · cols``
bits (rounded up to a byte).

In memory each mask row is padded to whole int32 words (what the kernels read, see
:mod:`rtl_kernels.masks.packed`); a 784-column row takes 800 bits. Saved, the rows follow each other
bit after bit (least significant bit first, bytes in order), so K masks cost K/32 of an fp32 weight.
"""

from __future__ import annotations

import numpy as np
import torch

from .packed import WORD_BITS, words_per_row

# rows converted per step (a multiple of 8, so every step starts on a byte): bounds the temporary bit arrays
_CHUNK_ROWS = 1 << 13


def flat_nbytes(num_tickets: int, rows: int, cols: int) -> int:
    """Bytes of ``num_tickets`` flat masks over a ``rows × cols`` matrix."""
    return (num_tickets * rows * cols + 7) // 8


def flat_bits(bits: torch.Tensor, cols: int) -> torch.Tensor:
    """Padded int32 mask bits ``[K, rows, words]`` as one flat uint8 tensor of ``ceil(K·rows·cols / 8)`` bytes."""
    k, rows, nwords = bits.shape
    words = np.ascontiguousarray(bits.detach().cpu().numpy()).astype("<i4", copy=False).view(np.uint8).reshape(k * rows, nwords * 4)
    if cols == nwords * WORD_BITS:  # no padding: the same bytes
        return torch.from_numpy(words.reshape(-1).copy())
    parts = [
        np.packbits(np.unpackbits(words[i : i + _CHUNK_ROWS], axis=1, bitorder="little")[:, :cols], axis=None, bitorder="little")
        for i in range(0, k * rows, _CHUNK_ROWS)
    ]
    return torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8))


def padded_bits(flat: torch.Tensor, num_tickets: int, rows: int, cols: int) -> torch.Tensor:
    """The inverse of :func:`flat_bits`: int32 ``[K, rows, words]`` with zero padding bits.

    Raises ValueError when ``flat`` has the wrong dtype or size, or bits set past the last mask bit.
    """
    expected = flat_nbytes(num_tickets, rows, cols)
    if flat.dtype != torch.uint8 or flat.dim() != 1 or flat.numel() != expected:
        raise ValueError(
            f"flat: expected {expected} uint8 bytes for {num_tickets} masks of {rows}×{cols}, got {flat.dtype} of shape {list(flat.shape)}"
        )
    data = flat.cpu().numpy()
    nbits, nwords, total = rows * cols, words_per_row(cols), num_tickets * rows
    if (num_tickets * nbits) % 8 and int(data[-1]) >> ((num_tickets * nbits) % 8):
        raise ValueError(f"flat: expected zero bits past the last of the {num_tickets * nbits} mask bits, got some set")
    if cols == nwords * WORD_BITS:
        return torch.from_numpy(np.ascontiguousarray(data).view("<i4").astype(np.int32).reshape(num_tickets, rows, nwords))
    out = np.empty((total, nwords * 4), dtype=np.uint8)
    step = _CHUNK_ROWS * cols // 8
    for j, i in enumerate(range(0, total, _CHUNK_ROWS)):
        n = min(_CHUNK_ROWS, total - i)
        chunk = np.unpackbits(data[j * step : j * step + (n * cols + 7) // 8], bitorder="little")[: n * cols].reshape(n, cols)
        out[i : i + n] = np.packbits(np.pad(chunk, ((0, 0), (0, nwords * WORD_BITS - cols))), axis=1, bitorder="little")
    return torch.from_numpy(out.view("<i4").astype(np.int32).reshape(num_tickets, rows, nwords))


def saved_tickets(flat: torch.Tensor, rows: int, cols: int) -> int | None:
    """How many tickets a flat mask tensor holds for a ``rows × cols`` matrix; None when no count, or
    more than one (matrices of fewer than 8 entries), gives its size."""
    if flat.dim() != 1 or rows * cols == 0:
        return None
    n = flat.numel()
    fits = [k for k in range(max((n - 1) * 8 // (rows * cols), 0), n * 8 // (rows * cols) + 1) if flat_nbytes(k, rows, cols) == n]
    return fits[0] if len(fits) == 1 else None
