"""Bit-packed ticket masks: 1 bit per weight per ticket.

Layout (what every kernel reads): a weight of shape ``[N, *rest]`` is viewed as a matrix
``[N, R]`` with ``R = prod(rest)`` in row-major order; ticket ``k``'s mask bit for element
``(n, r)`` is bit ``r % 32`` (least significant first) of the int32 word ``bits[k, n, r // 32]``.
Padding bits past ``R`` are always zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

WORD_BITS = 32


def matrix_shape(weight_shape: Sequence[int]) -> tuple[int, int]:
    """Rows and columns of the 2-D view kernels use for a weight of ``weight_shape``."""
    shape = tuple(int(s) for s in weight_shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    return shape[0], math.prod(shape[1:])


def words_per_row(cols: int) -> int:
    """Number of int32 words that hold ``cols`` bits."""
    return (cols + WORD_BITS - 1) // WORD_BITS


def _bit_weights(device: torch.device) -> torch.Tensor:
    # 1 << j as int32; 1 << 31 wraps to INT32_MIN, which is exactly the bit pattern we need.
    return torch.bitwise_left_shift(
        torch.ones(WORD_BITS, dtype=torch.int32, device=device), torch.arange(WORD_BITS, dtype=torch.int32, device=device)
    )


class PackedMasks:
    """K binary masks over one weight shape, stored as bits (see module docstring for layout)."""

    __slots__ = ("bits", "weight_shape")

    def __init__(self, bits: torch.Tensor, weight_shape: Sequence[int]) -> None:
        shape = torch.Size(int(s) for s in weight_shape)
        rows, cols = matrix_shape(shape)
        if not isinstance(bits, torch.Tensor) or bits.dtype != torch.int32:
            raise TypeError(f"bits: expected an int32 tensor, got {type(bits).__name__} {getattr(bits, 'dtype', '')}")
        if bits.dim() != 3 or bits.shape[1] != rows or bits.shape[2] != words_per_row(cols):
            raise ValueError(
                f"bits: expected shape [K, {rows}, {words_per_row(cols)}] for weight_shape {list(shape)}, got {list(bits.shape)}"
            )
        if bits.shape[0] < 1:
            raise ValueError("bits: expected at least one ticket (K >= 1), got K = 0")
        set_padding = padding_bits_set(bits, cols)
        if set_padding:
            raise ValueError(
                f"bits: expected zero padding bits past column {cols} of each row, got {set_padding} set "
                "(a corrupt or hand-built mask; padding bits would count as kept weights)"
            )
        self.bits = bits
        self.weight_shape = shape

    @classmethod
    def trusted(cls, bits: torch.Tensor, weight_shape: Sequence[int]) -> PackedMasks:
        """Wrap ``bits`` already checked against ``weight_shape`` (the ops' hot path) without checking again."""
        out = cls.__new__(cls)
        out.bits = bits
        out.weight_shape = weight_shape if type(weight_shape) is torch.Size else torch.Size(weight_shape)
        return out

    @property
    def num_tickets(self) -> int:
        return int(self.bits.shape[0])

    @property
    def device(self) -> torch.device:
        return self.bits.device

    def unpack(self) -> torch.Tensor:
        """Bool tensor ``[K, *weight_shape]``; the exact inverse of :func:`pack_masks`."""
        rows, cols = matrix_shape(self.weight_shape)
        shifts = torch.arange(WORD_BITS, dtype=torch.int32, device=self.bits.device)
        flat = torch.bitwise_and(torch.bitwise_right_shift(self.bits.unsqueeze(-1), shifts), 1).to(torch.bool)
        flat = flat.reshape(self.num_tickets, rows, self.bits.shape[2] * WORD_BITS)[:, :, :cols]
        return flat.reshape(self.num_tickets, *self.weight_shape)

    def count(self) -> torch.Tensor:
        """Number of kept weights per ticket (int64 ``[K]``)."""
        return popcount(self.bits).sum(dim=(1, 2))

    def density(self) -> torch.Tensor:
        """Fraction of weights kept per ticket (float ``[K]``); sparsity is ``1 - density``."""
        numel = max(math.prod(self.weight_shape), 1)
        return self.count().to(torch.float32) / numel

    def to(self, device: torch.device | str) -> PackedMasks:
        return PackedMasks.trusted(self.bits.to(device), self.weight_shape)

    def select(self, tickets: Sequence[int] | torch.Tensor) -> PackedMasks:
        """The masks of the given tickets, in that order."""
        index = torch.as_tensor(tickets, dtype=torch.long, device=self.bits.device)
        return PackedMasks.trusted(self.bits.index_select(0, index), self.weight_shape)

    def nbytes(self) -> int:
        return self.bits.numel() * self.bits.element_size()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PackedMasks):
            return NotImplemented
        return self.weight_shape == other.weight_shape and torch.equal(self.bits.cpu(), other.bits.cpu())

    __hash__ = None  # mutable tensor contents

    def __repr__(self) -> str:
        return f"PackedMasks(num_tickets={self.num_tickets}, weight_shape={list(self.weight_shape)}, device={self.device})"


def popcount(words: torch.Tensor) -> torch.Tensor:
    """Set bits per int32 word, as int64 (SWAR popcount, works on every device)."""
    v = words.to(torch.int64) & 0xFFFFFFFF
    v = v - ((v >> 1) & 0x55555555)
    v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F
    return ((v * 0x01010101) & 0xFFFFFFFF) >> 24


def padding_word(cols: int) -> int:
    """The int32 value whose set bits are the padding bits of a row's last word (0 when ``cols`` fills it)."""
    tail = cols % WORD_BITS
    # bits tail..31 set; bit 31 makes it negative as an int32
    return 0 if tail == 0 else -(1 << tail)


def padding_bits_set(bits: torch.Tensor, cols: int) -> int:
    """How many padding bits (past column ``cols``) are set in ``bits`` ``[K, rows, words]``; 0 for valid masks."""
    pad = padding_word(cols)
    if pad == 0 or bits.numel() == 0:
        return 0
    return int(popcount(bits[:, :, -1] & pad).sum())


def pack_masks(masks: torch.Tensor) -> PackedMasks:
    """Pack a bool tensor ``[K, *weight_shape]`` into :class:`PackedMasks` (on the same device)."""
    if isinstance(masks, PackedMasks):
        return masks
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"masks: expected a bool tensor [K, *weight_shape], got {type(masks).__name__}")
    if masks.dtype != torch.bool:
        raise TypeError(f"masks: expected dtype torch.bool, got {masks.dtype} (use `masks != 0` to convert)")
    if masks.dim() < 1 or masks.shape[0] < 1:
        raise ValueError(f"masks: expected shape [K, *weight_shape] with K >= 1, got {list(masks.shape)}")
    k = masks.shape[0]
    weight_shape = masks.shape[1:]
    rows, cols = matrix_shape(weight_shape)
    n_words = words_per_row(cols)
    flat = masks.reshape(k, rows, cols).to(torch.int32)
    pad = n_words * WORD_BITS - cols
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    words = (flat.reshape(k, rows, n_words, WORD_BITS) * _bit_weights(masks.device)).sum(dim=-1, dtype=torch.int32)
    return PackedMasks.trusted(words.contiguous(), weight_shape)


def ones_bits(num_tickets: int, weight_shape: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """Packed bits of ``num_tickets`` all-ones masks (padding bits zero)."""
    rows, cols = matrix_shape(weight_shape)
    n_words = words_per_row(cols)
    bits = torch.full((num_tickets, rows, n_words), -1, dtype=torch.int32, device=device)
    tail = cols - (n_words - 1) * WORD_BITS
    if n_words and tail < WORD_BITS:
        bits[:, :, -1] = (1 << tail) - 1
    return bits
