"""Flat mask bits (the save layout): exact inverse of the padded layout, no padding stored, bad bytes refused."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rtl_kernels.masks import flat
from rtl_kernels.masks.flat import flat_bits, padded_bits, saved_tickets
from rtl_kernels.masks.packed import pack_masks


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 4), rows=st.integers(0, 19), cols=st.integers(0, 70), density=st.sampled_from([0.0, 0.5, 1.0]), seed=st.integers(0, 99)
)
def test_flat_bits_round_trip_and_store_no_padding(k, rows, cols, density, seed):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(k, rows, cols, generator=g) < density
    packed = pack_masks(masks)
    f = flat_bits(packed.bits, cols)
    assert f.dtype == torch.uint8 and list(f.shape) == [(k * rows * cols + 7) // 8]
    assert torch.equal(padded_bits(f, k, rows, cols), packed.bits)
    # bit j of the stream is element j of the masks in row-major order, least significant bit first
    stream = ((f.unsqueeze(-1).to(torch.int32) >> torch.arange(8, dtype=torch.int32)) & 1).reshape(-1)[: k * rows * cols]
    assert torch.equal(stream.bool(), masks.reshape(-1))
    assert saved_tickets(f, rows, cols) == (k if rows * cols >= 8 else saved_tickets(f, rows, cols))
    assert saved_tickets(f, rows, cols) in (k, None)


def test_chunked_conversion_matches_the_unchunked_one(monkeypatch):
    masks = torch.rand(2, 37, 45, generator=torch.Generator().manual_seed(0)) < 0.5
    bits = pack_masks(masks).bits
    whole = flat_bits(bits, 45)
    monkeypatch.setattr(flat, "_CHUNK_ROWS", 8)
    assert torch.equal(flat_bits(bits, 45), whole)
    assert torch.equal(padded_bits(whole, 2, 37, 45), bits)


def test_bad_flat_bytes_are_refused_with_the_argument_named():
    bits = pack_masks(torch.ones(2, 3, 5, dtype=torch.bool)).bits
    f = flat_bits(bits, 5)  # 2 x 15 bits: 4 bytes, bits 30 and 31 unused
    with pytest.raises(ValueError, match=r"flat: expected 4 uint8 bytes for 2 masks of 3×5, got torch.uint8 of shape \[3\]"):
        padded_bits(f[:3], 2, 3, 5)
    with pytest.raises(ValueError, match=r"flat: expected 4 uint8 bytes"):
        padded_bits(f.to(torch.int32), 2, 3, 5)
    assert saved_tickets(f[:3], 3, 5) is None and saved_tickets(f, 3, 5) == 2
    f[-1] |= 0x80
    with pytest.raises(ValueError, match="flat: expected zero bits past the last of the 30 mask bits"):
        padded_bits(f, 2, 3, 5)
