"""rtl.merge: the merge rules on hand-checked cases, merge_experts end to end, bad input, FDA, save/load."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import rtl_kernels as rtl
from rtl_kernels.merge import emr, tall, task_arithmetic, ties
from rtl_kernels.merge.fda import FDAOptions, distance, layer_anchors
from rtl_kernels.zoo.mlp import MLP


def _experts(k: int, seed: int = 0, noise: float = 0.05, hidden: int = 16, density: float = 1.0):
    """K copies of a base MLP, each with Gaussian changes on a random ``density`` fraction of its entries."""
    torch.manual_seed(seed)
    base = MLP(12, 5, hidden)
    experts = []
    for _ in range(k):
        e = copy.deepcopy(base)
        with torch.no_grad():
            for p in e.parameters():
                p.add_(noise * torch.randn_like(p) * (torch.rand_like(p) < density))
        experts.append(e)
    return base, experts


def _state(vals):
    return {"w": torch.tensor(vals, dtype=torch.float32)}


def test_ties_trims_elects_and_takes_the_disjoint_mean():
    base = _state([0.0, 0.0, 0.0, 0.0])
    v1, v2 = _state([3.0, -1.0, 2.0, 0.1]), _state([-1.0, -2.0, 4.0, 0.2])
    m = ties(base, [v1, v2], k=75, lam=1.0)  # keeps 3 of 4 per task: v1 drops 0.1, v2 drops 0.2
    # signs: [3-1>0 → +, -3 → -, 6 → +, 0 → majority +]; disjoint means: [3, -1.5, 3, 0]
    assert torch.allclose(m.delta["w"], torch.tensor([3.0, -1.5, 3.0, 0.0]))
    assert m.masks == {} and m.scales.tolist() == [1.0, 1.0]


def test_emr_elects_masks_and_rescales_by_the_paper_formula():
    base = _state([0.0, 0.0, 0.0])
    v1, v2 = _state([2.0, -1.0, 1.0]), _state([1.0, 3.0, -2.0])
    m = emr(base, [v1, v2])
    # γ = sgn([3, 2, -1]) = [+, +, -]; τ_uni = [2, 3, -2]
    assert m.delta["w"].tolist() == [2.0, 3.0, -2.0]
    assert m.masks["w"].tolist() == [[True, False, False], [True, True, True]]
    assert m.scales.tolist() == pytest.approx([4.0 / 2.0, 6.0 / 7.0])


def test_tall_mask_rule_is_strict_and_per_task():
    base = _state([0.0, 0.0, 0.0])
    v1, v2 = _state([1.0, 0.2, 0.0]), _state([1.0, 1.0, 0.0])
    m = tall(base, [v1, v2], [0.5, 1.0])
    # τ_MTL = [2, 1.2, 0]; task 1: |v1| > 0.5·|τ_MTL − v1| = [0.5, 0.5, 0] → [T, F, F]; task 2 (λ=1): [1 > 1 F, 1 > 0.2 T, F]
    assert m.masks["w"].tolist() == [[True, False, False], [False, True, False]]
    assert m.ticket_state(0)["w"].tolist() == pytest.approx([2.0, 0.0, 0.0])


def test_tall_over_the_ties_multi_task_vector_trims_elects_and_sums():
    base = _state([0.0, 0.0, 0.0, 0.0, 0.0])
    v1, v2 = _state([3.0, -1.0, 2.0, 0.1, 0.0]), _state([-1.0, -2.0, 4.0, 0.2, 5.0])
    m = tall(base, [v1, v2], [0.5, 0.5], mtl="ties")  # TIES keeps the top 20 %: one entry per task (3.0 and 5.0)
    assert m.delta["w"].tolist() == [3.0, 0.0, 0.0, 0.0, 5.0] and m.info["mtl"] == "ties"
    # task 1: |v1| > 0.5·|τ_MTL − v1| = [0, 0.5, 1, 0.05, 2.5] → [T, T, T, T, F]
    assert m.masks["w"][0].tolist() == [True, True, True, True, False]
    with pytest.raises(ValueError, match="mtl: expected one of"):
        tall(base, [v1, v2], 0.4, mtl="mean")
    b, experts = _experts(3)
    merged = rtl.merge.merge_experts(b, experts, method="tall", mtl="ties")
    assert merged.fc1.delta.count_nonzero() <= 0.2 * 3 * merged.fc1.delta.numel() + 3


def test_task_arithmetic_sums_scaled_vectors():
    base = _state([1.0, 1.0])
    m = task_arithmetic(base, [_state([1.0, 2.0]), _state([3.0, -2.0])], lam=0.5)
    assert m.ticket_state(1)["w"].tolist() == [3.0, 1.0]


@pytest.mark.parametrize("method", ["tall", "emr"])
@pytest.mark.parametrize("routed", [True, False])
def test_single_expert_gives_back_that_expert(method, routed):
    base, (expert,) = _experts(1)
    merged = rtl.merge.merge_experts(base, [expert], method=method, routed=routed)
    x = torch.rand(7, 12)
    if routed:
        with rtl.routing(merged, 0):
            y = merged(x)
    else:
        assert type(merged) is MLP
        y = merged(x)
    torch.testing.assert_close(y, expert(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "emr", "tall"])
def test_routed_mixed_batch_matches_each_ticket_rebuilt_densely(method):
    base, experts = _experts(3)
    merged = rtl.merge.merge_experts(base, experts, method=method)
    x, routes = torch.rand(12, 12), torch.tensor([0, 1, 2, 2, 1, 0, 0, 1, 2, 0, 1, 2])
    with rtl.routing(merged, routes):
        y = merged(x)
    layers = rtl.merge.build.delta_layers(merged)
    for t in range(3):
        dense = copy.deepcopy(base)
        for name, layer in layers.items():
            dense.get_submodule(name).load_state_dict(layer.to_dense(t).state_dict())
        torch.testing.assert_close(y[routes == t], dense(x[routes == t]), atol=1e-5, rtol=1e-5)


def _ticket_errors(merged, experts, x):
    """err[t][s]: distance of ticket t's outputs from expert s's."""
    with torch.no_grad():
        outs = []
        for t in range(len(experts)):
            with rtl.routing(merged, t):
                outs.append(merged(x))
        return [[float((o - e(x)).norm()) for e in experts] for o in outs]


def test_tickets_follow_their_own_expert():
    base, experts = _experts(4, noise=1.0, density=0.05)
    x = torch.rand(64, 12)
    ta = _ticket_errors(rtl.merge.merge_experts(base, experts, method="task_arithmetic"), experts, x)
    for method in ("emr", "tall"):
        err = _ticket_errors(rtl.merge.merge_experts(base, experts, method=method), experts, x)
        assert sum(err[t][t] for t in range(4)) < sum(ta[t][t] for t in range(4))


def _validation(experts, n=40):
    torch.manual_seed(1)
    out = []
    for e in experts:
        x = torch.rand(n, 12)
        out.append(TensorDataset(x, e(x).argmax(-1).detach()))
    return out


def test_validation_chooses_coefficients_within_the_documented_grids():
    base, experts = _experts(3, noise=0.3)
    val = _validation(experts)
    merged = rtl.merge.merge_experts(base, experts, method="tall", validation=val)
    assert isinstance(merged, nn.Module)
    state, vectors = rtl.merge.task_vectors(base, experts)
    from rtl_kernels.merge.api import merge_task_vectors

    m = merge_task_vectors("tall", base, state, vectors, validation=val)
    assert all(v in (0.2, 0.3, 0.4, 0.5, 0.6) for v in m.info["lambdas"])
    ta = merge_task_vectors("task_arithmetic", base, state, vectors, validation=val)
    assert ta.info["lambda"] in [round(0.1 * i, 1) for i in range(1, 11)]


def test_zero_task_vector_is_handled_without_division_by_zero():
    base, experts = _experts(2)
    experts.append(copy.deepcopy(base))  # an expert identical to the base
    x = torch.rand(5, 12)
    for method in ("emr", "tall", "ties", "task_arithmetic"):
        merged = rtl.merge.merge_experts(base, experts, method=method)
        with rtl.routing(merged, 2):
            y = merged(x)
        assert torch.isfinite(y).all()
        if method in ("emr", "tall"):
            torch.testing.assert_close(y, base(x), atol=1e-5, rtol=1e-5)
    only_base = rtl.merge.merge_experts(base, [copy.deepcopy(base)], method="emr")
    with rtl.routing(only_base, 0):
        torch.testing.assert_close(only_base(x), base(x))


def test_bad_input_names_the_parameter():
    base, experts = _experts(2)
    with pytest.raises(ValueError, match="experts: expected K >= 1"):
        rtl.merge.merge_experts(base, [])
    with pytest.raises(ValueError, match=r"experts\[1\]: expected the base's architecture"):
        rtl.merge.merge_experts(base, [experts[0], nn.Sequential(nn.Linear(12, 5))])
    with pytest.raises(ValueError, match=r"experts\[0\]: expected 'fc1.weight' of shape"):
        rtl.merge.merge_experts(base, [MLP(12, 5, 8)])
    with pytest.raises(ValueError, match="method: expected one of"):
        rtl.merge.merge_experts(base, experts, method="dare")
    with pytest.raises(TypeError, match="options: method 'emr' takes"):
        rtl.merge.merge_experts(base, experts, method="emr", lam=0.3)
    with pytest.raises(ValueError, match="validation: expected one dataset per expert"):
        rtl.merge.merge_experts(base, experts, validation=_validation(experts)[:1])
    with pytest.raises(ValueError, match="lam: expected a number"):
        rtl.merge.merge_experts(base, experts, method="task_arithmetic", lam=float("nan"))
    with pytest.raises(TypeError, match="experts: expected a sequence"):
        rtl.merge.merge_experts(base, experts[0])
    with pytest.raises(ValueError, match="anchor_init: expected one of"):
        rtl.merge.merge_experts(base, experts, method="fda", anchor_init="uniform")


def _matching_loss(w0, b0, wt, bt, x):
    params = [w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)]
    grads = torch.autograd.grad(-distance(torch.nn.functional.linear(x, *params), torch.nn.functional.linear(x, wt, bt), "cosine"), params)
    taus = [wt - w0, bt - b0]
    return sum(1 - torch.nn.functional.cosine_similarity(g.reshape(1, -1), t.reshape(1, -1)).item() for g, t in zip(grads, taus))


@pytest.mark.parametrize("anchor_init", ["weight", "gaussian"])
def test_fda_anchors_align_the_induced_gradient_with_the_task_vector(anchor_init):
    torch.manual_seed(0)
    w0, b0 = torch.randn(6, 10), torch.randn(6)
    wt, bt = w0 + 0.3 * torch.randn(6, 10), b0 + 0.3 * torch.randn(6)
    start = layer_anchors(
        w0, b0, wt, bt, FDAOptions(anchors=16, anchor_init=anchor_init, construct_steps=0), torch.Generator().manual_seed(0)
    )
    built = layer_anchors(
        w0, b0, wt, bt, FDAOptions(anchors=16, anchor_init=anchor_init, construct_steps=60), torch.Generator().manual_seed(0)
    )
    if anchor_init == "gaussian":
        assert start.abs().max() < 0.1  # σ = 0.01
    else:
        assert any(torch.equal(start[0], row) for row in wt)  # rows of the fine-tuned weight
    assert _matching_loss(w0, b0, wt, bt, built) < 0.5 * _matching_loss(w0, b0, wt, bt, start)


def _anchor_error(model, experts, routed: bool, x):
    total = 0.0
    for t, e in enumerate(experts):
        if routed:
            with rtl.routing(model, t):
                total += float((model(x) - e(x)).norm())
        else:
            total += float((model(x) - e(x)).norm())
    return total


def test_fda_refines_task_arithmetic_and_mask_aware_fda_trains_only_the_delta():
    base, experts = _experts(2, noise=0.3, hidden=8)
    opts = {"anchors": 16, "construct_steps": 20, "adapt_epochs": 30, "adapt_lr": 1e-2, "dist": "l2"}
    ta = rtl.merge.merge_experts(base, experts, method="task_arithmetic", routed=False)
    fda = rtl.merge.merge_experts(base, experts, method="fda", routed=False, start="ta", **opts)
    assert type(fda) is MLP
    assert not torch.equal(fda.fc1.weight, ta.fc1.weight)
    tall_model = rtl.merge.merge_experts(base, experts, method="tall")
    aware = rtl.merge.merge_experts(base, experts, method="fda", routed=True, masks="tall", **opts)
    for name, layer in rtl.merge.build.delta_layers(aware).items():
        ref = tall_model.get_submodule(name)
        assert torch.equal(layer.mask_bits, ref.mask_bits) and torch.equal(layer.weight, ref.weight)
        assert torch.equal(layer.scales, ref.scales) and not torch.equal(layer.delta, ref.delta)


def test_merged_model_saves_base_delta_masks_and_scales_once(tmp_path):
    base, experts = _experts(3)
    merged = rtl.merge.merge_experts(base, experts, method="emr")
    rtl.save(merged, tmp_path / "m")
    fresh = rtl.merge.convert_delta(MLP(12, 5, 16), 3)
    rtl.load(tmp_path / "m", fresh)
    x, routes = torch.rand(6, 12), torch.tensor([0, 1, 2, 0, 1, 2])
    with rtl.routing(merged, routes):
        want = merged(x)
    with rtl.routing(fresh, routes):
        torch.testing.assert_close(fresh(x), want)
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "m" / "weights.safetensors"))
    assert {"fc1.weight", "fc1.delta", "fc1.scales", "fc1.bias", "fc1.bias_delta"} <= set(weights)
    assert "fc1.mask_bits" not in weights and weights["fc1.delta"].shape == (16, 12)
    # the K scales once (one Parameter shared by the layers), the bias masks flat: exactly K·out bits
    assert "fc1.scales" in weights and "fc2.scales" not in weights and weights["head.bias_mask_bits"].dtype == torch.uint8
    assert weights["head.bias_mask_bits"].numel() == (3 * 5 + 7) // 8
    for name in ("fc1", "fc2", "head"):
        assert torch.equal(fresh.get_submodule(name).bias_mask_bits, merged.get_submodule(name).bias_mask_bits)


def test_flat_bias_masks_of_the_wrong_size_are_a_load_error_naming_the_key(tmp_path):
    from safetensors.torch import load_file, save_file

    base, experts = _experts(3)
    rtl.save(rtl.merge.merge_experts(base, experts, method="emr"), tmp_path)
    weights = load_file(str(tmp_path / "weights.safetensors"))
    weights["fc2.bias_mask_bits"] = weights["fc2.bias_mask_bits"][:-1].clone()
    save_file(weights, str(tmp_path / "weights.safetensors"))
    fresh = rtl.merge.convert_delta(MLP(12, 5, 16), 3)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(rtl.LoadError, match=r"'fc2.bias_mask_bits' does not match the save's flat mask bits"):
        rtl.load(tmp_path, fresh)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in before.items())
