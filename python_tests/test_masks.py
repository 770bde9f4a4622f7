"""PackedMasks, pack_masks and jaccard."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import rtl_kernels as rtl
from rtl_kernels.masks.packed import ones_bits, popcount


@st.composite
def bool_masks(draw, max_k=6):
    k = draw(st.integers(1, max_k))
    shape = draw(st.lists(st.integers(0, 9), min_size=1, max_size=4))
    density = draw(st.floats(0.0, 1.0))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    return torch.rand((k, *shape), generator=g) < density


@given(bool_masks())
def test_pack_unpack_round_trip_is_exact(masks):
    packed = rtl.pack_masks(masks)
    assert packed.num_tickets == masks.shape[0]
    assert packed.weight_shape == masks.shape[1:]
    assert torch.equal(packed.unpack(), masks)


@given(bool_masks())
def test_density_counts_kept_weights(masks):
    packed = rtl.pack_masks(masks)
    numel = math.prod(masks.shape[1:])
    expected = masks.reshape(masks.shape[0], -1).sum(1).float() / max(numel, 1)
    torch.testing.assert_close(packed.density(), expected)


def test_storage_is_one_bit_per_weight_plus_row_padding():
    masks = torch.ones(8, 256, 1024, dtype=torch.bool)
    packed = rtl.pack_masks(masks)
    assert packed.nbytes() == 8 * 256 * 1024 // 8
    odd = rtl.pack_masks(torch.ones(3, 5, 33, dtype=torch.bool))
    assert odd.bits.shape == (3, 5, 2)  # 33 bits -> two words per row


def test_padding_bits_are_zero_and_ones_bits_matches_packing():
    shape = (7, 3, 5, 3)  # 45 columns: last word has 13 bits
    packed = rtl.pack_masks(torch.ones(2, *shape, dtype=torch.bool))
    assert torch.equal(packed.bits, ones_bits(2, shape))
    assert int(popcount(packed.bits).sum()) == 2 * math.prod(shape)


def test_bit_layout_is_lsb_first_along_flattened_columns():
    masks = torch.zeros(1, 2, 40, dtype=torch.bool)
    masks[0, 1, 33] = True
    masks[0, 0, 31] = True
    bits = rtl.pack_masks(masks).bits
    assert bits[0, 1, 1] == 1 << 1
    assert bits[0, 0, 0] == -(2**31)  # bit 31 set: int32 sign bit


def test_to_device_and_select():
    masks = torch.rand(4, 3, 6) < 0.5
    packed = rtl.pack_masks(masks).to("cpu")
    assert torch.equal(packed.select([2, 0]).unpack(), masks[[2, 0]])
    assert packed == rtl.pack_masks(masks)


@pytest.mark.parametrize(
    ("bad", "exc", "match"),
    [
        (torch.ones(2, 3), TypeError, "dtype torch.bool"),
        ([[True]], TypeError, "bool tensor"),
        (torch.ones(0, 3, dtype=torch.bool), ValueError, "K >= 1"),
    ],
)
def test_pack_masks_rejects_bad_input(bad, exc, match):
    with pytest.raises(exc, match=match):
        rtl.pack_masks(bad)


def test_packed_masks_rejects_wrong_bits():
    with pytest.raises(TypeError, match="int32"):
        rtl.PackedMasks(torch.zeros(1, 2, 1, dtype=torch.int64), (2, 3))
    with pytest.raises(ValueError, match=r"\[K, 2, 1\]"):
        rtl.PackedMasks(torch.zeros(1, 2, 2, dtype=torch.int32), (2, 3))


def _jaccard_naive(masks: torch.Tensor) -> torch.Tensor:
    k = masks.shape[0]
    flat = masks.reshape(k, -1)
    out = torch.empty(k, k, dtype=torch.float64)
    for i in range(k):
        for j in range(k):
            inter = (flat[i] & flat[j]).sum().item()
            union = (flat[i] | flat[j]).sum().item()
            out[i, j] = 1.0 if union == 0 else inter / union
    return out


@given(bool_masks())
def test_jaccard_matches_definition(masks):
    jac = rtl.jaccard(masks)
    assert jac.dtype == torch.float64 and jac.shape == (masks.shape[0],) * 2
    torch.testing.assert_close(jac, _jaccard_naive(masks))
    torch.testing.assert_close(rtl.jaccard(rtl.pack_masks(masks)), jac)


def test_jaccard_both_empty_is_one():
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[2, 0, 0] = True
    jac = rtl.jaccard(masks)
    assert jac[0, 1] == 1.0 and jac[0, 2] == 0.0 and jac[2, 2] == 1.0


def test_jaccard_dict_sums_counts_over_layers():
    a = torch.rand(3, 5, 7) < 0.5
    b = torch.rand(3, 11) < 0.3
    both = torch.cat([a.reshape(3, -1), b], dim=1)
    torch.testing.assert_close(rtl.jaccard({"a": a, "b": rtl.pack_masks(b)}), _jaccard_naive(both))


def test_jaccard_rejects_bad_input():
    with pytest.raises(ValueError, match="empty dict"):
        rtl.jaccard({})
    with pytest.raises(ValueError, match=r"masks\['b'\].*3 tickets"):
        rtl.jaccard({"a": torch.ones(3, 2, dtype=torch.bool), "b": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(TypeError, match="bool tensor"):
        rtl.jaccard(torch.ones(2, 3))
