"""Padding bits (past the last column of each packed row) are always zero: hand-built masks with them set are rejected."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import rtl_kernels as rtl
from rtl_kernels.masks.packed import padding_bits_set


@given(
    k=st.integers(1, 3),
    rows=st.integers(1, 4),
    cols=st.integers(1, 70),
    seed=st.integers(0, 2**16),
    bit=st.integers(0, 31),
)
def test_packed_masks_reject_any_set_padding_bit_and_valid_masks_have_none(k, rows, cols, seed, bit):
    g = torch.Generator().manual_seed(seed)
    packed = rtl.pack_masks(torch.rand(k, rows, cols, generator=g) < 0.5)
    assert padding_bits_set(packed.bits, cols) == 0
    assert rtl.PackedMasks(packed.bits, (rows, cols)) == packed
    density = packed.density()
    assert bool(((density >= 0) & (density <= 1)).all())
    if cols % 32 == 0 or bit < cols % 32:
        return  # no padding bit at this position
    bad = packed.bits.clone()
    bad[k - 1, rows - 1, -1] |= torch.tensor(1 << bit, dtype=torch.int64).to(torch.int32)
    with pytest.raises(ValueError, match=f"bits: expected zero padding bits past column {cols} of each row, got 1 set"):
        rtl.PackedMasks(bad, (rows, cols))


def test_all_ones_masks_with_padding_set_would_read_more_than_full_density():
    bits = torch.full((2, 3, 1), -1, dtype=torch.int32)  # every bit set, but only 5 columns exist
    with pytest.raises(ValueError, match="padding bits"):
        rtl.PackedMasks(bits, (3, 5))
