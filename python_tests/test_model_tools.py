"""convert, routing, RoutedModel, masks_of / set_masks on small models."""

import copy

import pytest
import torch
from torch import nn

import rtl_kernels as rtl
from rtl_kernels.nn import RTLConv2d, RTLLinear


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()  # fmt: skip


def test_convert_in_place_keeps_parameters_and_outputs():
    model = small_cnn()
    params = list(model.parameters())
    opt = torch.optim.Adam(model.parameters())
    x = torch.randn(3, 3, 6, 6)
    ref = model(x)
    out = rtl.convert(model, 4)
    assert out is model
    assert isinstance(model[0], RTLConv2d) and isinstance(model[3], RTLConv2d) and isinstance(model[7], RTLLinear)
    assert isinstance(model[1], nn.BatchNorm2d)
    assert all(a is b for a, b in zip(params, model.parameters()))
    with rtl.routing(model, torch.tensor([0, 3, 1])):
        torch.testing.assert_close(model(x), ref)
    # the optimizer built before conversion still trains the converted model
    with rtl.routing(model, 2):
        model(x).sum().backward()
    before = model[7].weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model[7].weight)


def test_convert_targets_ignore_and_filter_fn():
    model = rtl.convert(small_cnn(), 2, targets=(nn.Linear,))
    assert isinstance(model[0], nn.Conv2d) and isinstance(model[7], RTLLinear)
    model = rtl.convert(small_cnn(), 2, ignore=("0", "re:[7]"))
    assert type(model[0]) is nn.Conv2d and isinstance(model[3], RTLConv2d) and type(model[7]) is nn.Linear
    assert model.rtl_conversion_summary.skipped == {"0": "in ignore", "7": "in ignore"}
    model = rtl.convert(small_cnn(), 2, filter_fn=lambda m, name: m.weight.numel() > 250)
    assert isinstance(model[0], nn.Conv2d) and isinstance(model[3], RTLConv2d)


def test_convert_warns_when_nothing_matched():
    with pytest.warns(UserWarning, match="no module matched"):
        rtl.convert(nn.Sequential(nn.ReLU()), 2)


def test_convert_shared_module_once_and_root_module():
    shared = nn.Linear(4, 4)
    model = nn.ModuleDict({"a": shared, "b": nn.Sequential(shared)})
    rtl.convert(model, 3)
    assert model["a"] is model["b"][0] and isinstance(model["a"], RTLLinear)
    root = rtl.convert(nn.Linear(3, 2), 2)
    assert isinstance(root, RTLLinear)
    with pytest.warns(UserWarning, match="1 RTL layers already"):
        again = rtl.convert(model, 3, targets=(nn.Linear,))  # already converted layers are left alone
    assert again["a"] is model["a"]


def test_routing_context_nests_and_restores():
    model = rtl.convert(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), 2)
    x = torch.randn(3, 4)
    with rtl.routing(model, 0):
        y0 = model(x)
        with rtl.routing(model, 1):
            model(x)
        torch.testing.assert_close(model(x), y0)
    with pytest.raises(ValueError, match="routes"):
        model(x)


def test_routing_context_errors():
    with pytest.raises(ValueError, match="model: expected a model with RTL layers"):
        with rtl.routing(nn.Linear(2, 2), 0):
            pass
    model = rtl.convert(nn.Sequential(nn.Linear(4, 4)), 2)
    with pytest.raises(ValueError, match=r"routes: expected ticket ids in \[0, 2\)"):
        with rtl.routing(model, torch.tensor([0, 2])):
            pass
    with rtl.routing(model, torch.tensor([0, 1])), pytest.raises(ValueError, match="not the size of a prefix"):
        model(torch.randn(3, 4))


def test_routed_model_uses_router_or_explicit_routes():
    torch.manual_seed(0)
    model = rtl.convert(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), 2)
    rtl.set_masks(model, {name: torch.rand(2, *p.weight_shape) < 0.5 for name, p in rtl.masks_of(model).items()})
    router = lambda x: (x[:, 0] > 0).long()  # noqa: E731
    routed = rtl.RoutedModel(model, router)
    x = torch.randn(6, 4)
    y = routed(x)
    for i in range(6):
        k = int(router(x)[i])
        dense = nn.Sequential(model[0].to_dense(k), nn.ReLU(), model[2].to_dense(k))
        torch.testing.assert_close(y[i], dense(x[i]))
    torch.testing.assert_close(routed(x, routes=router(x)), y)
    with pytest.raises(ValueError, match="routes: expected routes="):
        rtl.RoutedModel(model)(x)
    with pytest.raises(ValueError, match=r"routes: expected ticket ids in \[0, 2\)"):
        rtl.RoutedModel(model, lambda x: torch.full((x.shape[0],), 5))(x)
    with pytest.raises(TypeError, match="router: expected it to return an integer tensor"):
        rtl.RoutedModel(model, lambda x: [0] * x.shape[0])(x)
    assert copy.deepcopy(routed)(x).shape == (6, 2)


def test_masks_of_and_set_masks_round_trip():
    model = rtl.convert(small_cnn(), 3)
    masks = rtl.masks_of(model)
    assert set(masks) == {"0", "3", "7"}
    new = {name: torch.rand(3, *p.weight_shape) < 0.3 for name, p in masks.items()}
    rtl.set_masks(model, new)
    for name, value in rtl.masks_of(model).items():
        assert torch.equal(value.unpack(), new[name])
    with pytest.raises(ValueError, match=r"masks: names \['nope'\] are not RTL layers"):
        rtl.set_masks(model, {"nope": new["0"]})
    with pytest.raises(ValueError, match=r"missing \['3', '7'\]"):
        rtl.set_masks(model, {"0": new["0"]})
    rtl.set_masks(model, {"0": new["0"]}, strict=False)
    with pytest.raises(ValueError, match=r"masks\['0'\]: masks: expected shape"):
        rtl.set_masks(model, {**new, "0": new["7"]})
