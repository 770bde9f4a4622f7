"""One validation boundary: public entry points check, trusted internal types carry the fact."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

import rtl_kernels as rtl
from rtl_kernels.backends import cpu_backend
from rtl_kernels.masks.packed import PackedMasks
from rtl_kernels.routing_plans.plan import RoutingPlan, make_plan

routing_mod = importlib.import_module("rtl_kernels.models.routing")  # the package exports a function of that name


def test_plans_from_plan_routes_are_consistent_and_stay_so():
    plan = rtl.plan_routes(torch.tensor([1, 0, 1]), 2)
    assert plan._consistent
    assert plan.repeat_rows(3)._consistent and plan.to("cpu")._consistent
    assert not RoutingPlan(plan.routes, plan.perm, plan.offsets)._consistent


def test_a_hand_built_plan_is_checked_once_per_model_call(monkeypatch):
    torch.manual_seed(0)
    model = rtl.convert(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)), 2)
    x = torch.randn(4, 6)
    built = make_plan(torch.tensor([1, 0, 1, 0]), 2)
    want = rtl.RoutedModel(model)(x, routes=built)
    calls = []
    real = routing_mod.check_plan
    monkeypatch.setattr(routing_mod, "check_plan", lambda plan, k: calls.append(k) or real(plan, k))
    by_hand = RoutingPlan(built.routes.clone(), built.perm.clone(), built.offsets.clone())
    torch.testing.assert_close(rtl.RoutedModel(model)(x, routes=by_hand), want)
    assert calls == [2]
    bad = RoutingPlan(built.routes, torch.tensor([0, 0, 1, 3]), built.offsets)  # row 0 twice, row 2 never
    with pytest.raises(ValueError, match=r"routes: RoutingPlan\.perm: expected a permutation"):
        rtl.RoutedModel(model)(x, routes=bad)


def test_layer_masks_are_trusted_on_the_call_path(monkeypatch):
    layer = rtl.nn.RTLLinear(6, 3, 2)
    x = torch.randn(4, 6)
    want = layer(x, torch.tensor([0, 1, 1, 0]))

    def no_revalidation(self, *args, **kwargs):
        raise AssertionError("PackedMasks re-validated on a layer call")

    monkeypatch.setattr(PackedMasks, "__init__", no_revalidation)
    torch.testing.assert_close(layer(x, torch.tensor([0, 1, 1, 0])), want)


def test_routed_model_finds_its_layers_once(monkeypatch):
    model = rtl.convert(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), 2)
    routed = rtl.RoutedModel(model)
    want = routed(torch.ones(3, 6), routes=torch.tensor([0, 1, 0]))

    def walk(*args):
        raise AssertionError("RoutedModel walked the model again")

    monkeypatch.setattr(routing_mod, "rtl_layers", walk)
    torch.testing.assert_close(routed(torch.ones(3, 6), routes=torch.tensor([0, 1, 0])), want)


def test_cpu_forward_path_counts_active_tickets_at_most_once(monkeypatch):
    ext = cpu_backend.extension.load_cpu()
    if ext is None:
        pytest.skip("the CPU extension is not available")
    calls = []
    real = cpu_backend._active
    monkeypatch.setattr(cpu_backend, "_active", lambda plan: calls.append(1) or real(plan))
    small = make_plan(torch.tensor([0, 1]), 4)
    assert cpu_backend.forward_path(small, torch.float32, ext) == "direct" and not calls
    for rows in (100, 400, 1000):
        calls.clear()
        cpu_backend.forward_path(make_plan(torch.arange(rows) % 3, 4), torch.float32, ext)
        assert len(calls) == 1
