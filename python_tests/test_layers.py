"""RTLLinear / RTLConv2d: construction, masks, routing, from_dense/to_dense, deepcopy."""

import copy

import pytest
import torch
from torch import nn

import rtl_kernels as rtl
from rtl_kernels.nn import RTLConv2d, RTLLinear


def test_fresh_layers_have_all_ones_masks_and_nn_parameter_names():
    lin = RTLLinear(5, 3, num_tickets=4)
    conv = RTLConv2d(4, 6, 3, num_tickets=2, groups=2, bias=False)
    assert lin.get_masks().all() and lin.get_masks().shape == (4, 3, 5)
    assert conv.get_masks().all() and conv.get_masks().shape == (2, 6, 2, 3, 3)
    assert [n for n, _ in lin.named_parameters()] == ["weight", "bias"]
    assert [n for n, _ in conv.named_parameters()] == ["weight"]
    assert lin.num_tickets == 4 and conv.num_tickets == 2


def test_initialisation_matches_torch_layers():
    torch.manual_seed(0)
    ref = nn.Linear(7, 3)
    torch.manual_seed(0)
    ours = RTLLinear(7, 3, 2)
    torch.testing.assert_close(ours.weight, ref.weight)
    torch.testing.assert_close(ours.bias, ref.bias)
    torch.manual_seed(0)
    ref_c = nn.Conv2d(3, 4, (3, 2))
    torch.manual_seed(0)
    ours_c = RTLConv2d(3, 4, (3, 2), 2)
    torch.testing.assert_close(ours_c.weight, ref_c.weight)


def test_linear_forward_routes_rows_to_their_masks():
    torch.manual_seed(0)
    lin = RTLLinear(6, 4, 3)
    masks = torch.rand(3, 4, 6) < 0.5
    lin.set_masks(masks)
    x, routes = torch.randn(5, 6), torch.tensor([2, 0, 1, 1, 2])
    y = lin(x, routes)
    for i in range(5):
        torch.testing.assert_close(y[i], lin.to_dense(int(routes[i]))(x[i]))


def test_conv_forward_matches_to_dense_per_image_for_padding_modes():
    torch.manual_seed(0)
    for mode in ("zeros", "reflect", "circular"):
        dense = nn.Conv2d(4, 6, 3, padding=1, groups=2, padding_mode=mode)
        layer = RTLConv2d.from_dense(dense, 3)
        masks = torch.rand(3, *dense.weight.shape) < 0.5
        layer.set_masks(rtl.pack_masks(masks))
        x, routes = torch.randn(3, 4, 5, 5), torch.tensor([1, 0, 2])
        y = layer(x, routes)
        for b in range(3):
            torch.testing.assert_close(y[b : b + 1], layer.to_dense(int(routes[b]))(x[b : b + 1]))


def test_from_dense_shares_parameters_and_reproduces_the_module():
    dense = nn.Linear(6, 4)
    layer = RTLLinear.from_dense(dense, 5)
    assert layer.weight is dense.weight and layer.bias is dense.bias
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x, torch.tensor([0, 4, 2])), dense(x))
    conv = nn.Conv2d(3, 5, 3, stride=2, padding="valid", dilation=1, bias=False).eval()
    clayer = RTLConv2d.from_dense(conv, 2)
    assert clayer.weight is conv.weight and clayer.bias is None and not clayer.training
    xc = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(clayer(xc, 1), conv(xc))


def test_to_dense_bakes_in_one_mask_without_touching_the_shared_weight():
    lin = RTLLinear(4, 3, 2)
    masks = torch.zeros(2, 3, 4, dtype=torch.bool)
    masks[1, 0, 0] = True
    lin.set_masks(masks)
    before = lin.weight.detach().clone()
    d = lin.to_dense(1)
    assert isinstance(d, nn.Linear) and d.weight.count_nonzero() == 1
    assert torch.equal(lin.weight, before)
    with pytest.raises(ValueError, match=r"ticket: expected an int in \[0, 2\), got 2"):
        lin.to_dense(2)


def test_set_masks_rejects_mismatches():
    lin = RTLLinear(4, 3, 2)
    with pytest.raises(ValueError, match=r"masks: expected shape \[2, 3, 4\], got \[3, 3, 4\]"):
        lin.set_masks(torch.ones(3, 3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="masks: expected PackedMasks with 2 tickets"):
        lin.set_masks(rtl.pack_masks(torch.ones(1, 3, 4, dtype=torch.bool)))
    with pytest.raises(TypeError, match="masks: expected a bool tensor or PackedMasks"):
        lin.set_masks(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="num_tickets: expected a positive int, got 0"):
        RTLLinear(4, 3, 0)


def test_routes_are_required_unless_single_ticket_or_routing_context():
    lin = RTLLinear(4, 3, 2)
    with pytest.raises(ValueError, match="routes: expected ticket ids"):
        lin(torch.randn(2, 4))
    single = RTLLinear(4, 3, 1)
    single(torch.randn(2, 4))
    with rtl.routing(lin, torch.tensor([1, 0])):
        lin(torch.randn(2, 4))


def test_deepcopy_is_independent_and_equal():
    torch.manual_seed(0)
    lin = RTLLinear(5, 4, 3)
    lin.set_masks(torch.rand(3, 4, 5) < 0.5)
    clone = copy.deepcopy(lin)
    x, r = torch.randn(6, 5), torch.randint(0, 3, (6,))
    torch.testing.assert_close(clone(x, r), lin(x, r))
    clone.set_masks(torch.zeros(3, 4, 5, dtype=torch.bool))
    assert lin.get_masks().any()
    conv = copy.deepcopy(RTLConv2d(2, 2, 1, 2))
    assert conv.get_masks().all()


def test_layers_have_no_hooks_and_state_dict_holds_packed_masks():
    lin = RTLLinear(40, 3, 2)
    assert not lin._forward_hooks and not lin._forward_pre_hooks
    state = lin.state_dict()
    assert set(state) == {"weight", "bias", "mask_bits"}
    assert state["mask_bits"].dtype == torch.int32 and state["mask_bits"].shape == (2, 3, 2)


def test_any_memory_format_and_dtype_move():
    conv = RTLConv2d(3, 4, 3, 2, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 6, 6).contiguous(memory_format=torch.channels_last)
    y = conv(x, torch.tensor([0, 1]))
    assert y.is_contiguous(memory_format=torch.channels_last)
    half = RTLLinear(4, 3, 2).to(torch.bfloat16)
    assert half(torch.randn(2, 4, dtype=torch.bfloat16), 1).dtype == torch.bfloat16
    assert half.mask_bits.dtype == torch.int32
