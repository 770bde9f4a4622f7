"""Small corners from issue 13 item 7: zero in_features, route dtypes, hand-built plans, double backward,
dtype messages, re-converting with another K, unused ignore entries, torch.nn.utils.prune masks."""

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import rtl_kernels as rtl
from rtl_kernels.routing_plans.plan import make_plan


@pytest.mark.parametrize("backend", ["reference", "cpu", "auto"])
def test_zero_in_features_returns_the_broadcast_bias_like_f_linear(backend):
    dense = nn.Linear(0, 4)
    nn.init.normal_(dense.bias)
    x = torch.randn(3, 2, 0, requires_grad=True)
    layer = rtl.nn.RTLLinear.from_dense(dense, 2)
    layer.backend = backend
    y = layer(x, torch.tensor([0, 1, 1]))
    ref = dense(x)
    torch.testing.assert_close(y, ref)
    y.sum().backward()
    assert x.grad.shape == x.shape and layer.weight.grad.shape == (4, 0)
    torch.testing.assert_close(layer.bias.grad, torch.full((4,), 6.0))


@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32, torch.uint64, torch.float32, torch.bool])
def test_unsupported_route_dtypes_get_one_message_naming_the_accepted_dtypes(dtype):
    masks = torch.ones(2, 4, 3, dtype=torch.bool)
    with pytest.raises(
        TypeError, match=rf"routes: expected an integer tensor of dtype uint8, int8, int16, int32 or int64 .*got dtype {dtype}"
    ):
        rtl.routed_linear(torch.randn(2, 3), torch.randn(4, 3), masks, torch.zeros(2, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_accepted_route_dtypes_agree(dtype):
    x, w, masks = torch.randn(3, 5), torch.randn(4, 5), torch.rand(3, 4, 5) < 0.5
    routes = torch.tensor([2, 0, 1])
    torch.testing.assert_close(rtl.routed_linear(x, w, masks, routes.to(dtype)), rtl.routed_linear(x, w, masks, routes))


def test_integer_x_message_lists_every_accepted_dtype_float64_included():
    w, masks = torch.randn(4, 3), torch.ones(1, 4, 3, dtype=torch.bool)
    with pytest.raises(TypeError, match=r"x: expected dtype float32, float16, bfloat16 or float64, got torch\.int64"):
        rtl.routed_linear(torch.ones(2, 3, dtype=torch.int64), w, masks, 0)
    y = rtl.routed_linear(torch.randn(2, 3, dtype=torch.float64), w.double(), masks, 0)  # what the message promises
    assert y.dtype == torch.float64


def _hand_built(routes, perm, offsets):
    t = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    return rtl.RoutingPlan(t(routes), t(perm), t(offsets))


def test_hand_built_plans_are_checked_once_and_a_repeated_row_is_rejected():
    x, w, masks = torch.randn(4, 3), torch.randn(5, 3), torch.rand(2, 5, 3) < 0.5
    good = _hand_built([1, 0, 1, 0], [1, 3, 0, 2], [0, 2, 4])
    torch.testing.assert_close(rtl.routed_linear(x, w, masks, good), rtl.routed_linear(x, w, masks, good.routes))
    assert good._consistent  # checked on first use, not again
    bad = {
        "repeated row": (_hand_built([1, 0, 1, 0], [1, 1, 0, 2], [0, 2, 4]), "permutation of the rows"),
        "route disagrees with offsets": (_hand_built([1, 0, 1, 1], [1, 3, 0, 2], [0, 2, 4]), "tickets the offsets give"),
        "offsets do not end at M": (_hand_built([1, 0, 1, 0], [1, 3, 0, 2], [0, 2, 3]), "rising from 0 to 4"),
        "int32 perm": (rtl.RoutingPlan(good.routes, good.perm.int(), good.offsets), "RoutingPlan.perm: expected a 1-D int64 tensor"),
    }
    for what, (plan, message) in bad.items():
        with pytest.raises((ValueError, TypeError), match=message):
            rtl.routed_linear(x, w, masks, plan)
        assert not plan._consistent, what
    assert make_plan(torch.tensor([1, 0]), 2)._consistent  # the library's own plans need no check


def test_double_backward_raises_a_clear_error_and_first_order_create_graph_works():
    masks = torch.ones(2, 4, 3, dtype=torch.bool)
    x, w = torch.randn(2, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    y = rtl.routed_linear(x, w, masks, torch.tensor([0, 1]))
    (gx,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    torch.testing.assert_close(gx, 2 * y.detach() @ w.detach())
    with pytest.raises(NotImplementedError, match="routed_linear: double backward is not supported"):
        gx.sum().backward()
    xc, wc = torch.randn(2, 3, 5, 5, requires_grad=True), torch.randn(4, 3, 3, 3, requires_grad=True)
    yc = rtl.routed_conv2d(xc, wc, torch.ones(2, 4, 3, 3, 3, dtype=torch.bool), torch.tensor([0, 1]))
    (gxc,) = torch.autograd.grad(yc.sum(), xc, create_graph=True)
    with pytest.raises(NotImplementedError, match="routed_conv2d: double backward is not supported"):
        gxc.sum().backward()


def test_converting_an_rtl_model_again_with_another_k_raises():
    model = rtl.convert(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), 2, ignore=["1"])
    with pytest.raises(ValueError, match=r"num_tickets: expected 2 .*'0'.*got 3"):
        rtl.convert(model, 3)
    assert type(model[1]) is nn.Linear  # nothing changed
    rtl.convert(model, 2)  # the same K may convert what is left
    assert isinstance(model[1], rtl.nn.RTLLinear)


def test_ignore_entries_that_match_nothing_warn():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rtl.convert(model, 2, ignore=["0", "re:enc.*", "decoder"])
    messages = [str(w.message) for w in caught]
    assert any("'re:enc.*' matched no module" in m for m in messages)
    assert any("'decoder' matched no module" in m for m in messages)
    assert not any("'0' matched" in m for m in messages)


def test_torch_prune_masks_become_every_tickets_mask_with_the_same_parameter():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    prune.l1_unstructured(model[0], "weight", amount=0.6)
    with torch.no_grad():  # a NaN under the prune mask: pruned weights are never read after conversion either
        model[0].weight_orig[~model[0].weight_mask.bool()] = float("nan")
    orig, mask = model[0].weight_orig, model[0].weight_mask.bool()
    x = torch.randn(4, 6)
    ref = nn.functional.linear(
        torch.relu(nn.functional.linear(x, torch.where(mask, orig, 0.0), model[0].bias)), model[2].weight, model[2].bias
    )
    rtl.convert(model, 3)
    layer = model[0]
    assert layer.weight is orig  # the Parameter an optimizer holds
    assert torch.equal(layer.get_masks(), mask.expand(3, *mask.shape))
    assert "weight_mask" not in dict(model.named_buffers()) and not layer._forward_pre_hooks
    assert "0" in model.rtl_conversion_summary.pruned
    with rtl.routing(model, torch.tensor([0, 1, 2, 0])):
        torch.testing.assert_close(model(x), ref)


def test_a_pruned_bias_is_skipped_with_the_reason():
    model = nn.Sequential(nn.Linear(3, 4))
    prune.random_unstructured(model[0], "bias", amount=0.5)
    with pytest.warns(UserWarning, match="no module matched"):
        rtl.convert(model, 2)
    assert "RTL masks cover only the weight" in model.rtl_conversion_summary.skipped["0"]
