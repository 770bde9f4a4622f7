"""Ticket extraction invariants: exact sparsity per round, magnitude order, shrinking masks, rewinding to θ0."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tiny_pipeline import ARGS, tiny

import rtl_kernels as rtl
from rtl_kernels.pipeline import extract_tickets, find_tickets, round_sparsities
from rtl_kernels.pipeline import imp as imp_module
from rtl_kernels.pipeline.pruning import keep_counts, prune_by_magnitude

pytestmark = pytest.mark.usefixtures("one_thread")


@given(st.integers(0, 10_000), st.floats(0.05, 0.95), st.sampled_from(["global", "layer"]))
def test_prune_by_magnitude_exact_count_and_order(seed, sparsity, scope):
    g = torch.Generator().manual_seed(seed)
    weights = {"a": torch.randn(5, 7, generator=g), "b": torch.randn(11, generator=g)}
    masks = {n: torch.rand(w.shape, generator=g) < 0.9 for n, w in weights.items()}
    numels = {n: w.numel() for n, w in weights.items()}
    target = keep_counts(numels, sparsity, scope)
    kept_before = {n: int(m.sum()) for n, m in masks.items()}
    if scope == "global":
        target = min(target, sum(kept_before.values()))
    else:
        target = {n: min(t, kept_before[n]) for n, t in target.items()}
    new = prune_by_magnitude(weights, masks, target)
    for n in weights:
        assert not (new[n] & ~masks[n]).any(), "masks only shrink"
    if scope == "global":
        assert sum(int(m.sum()) for m in new.values()) == target
        groups = [
            (torch.cat([weights[n][new[n]].abs() for n in weights]), torch.cat([weights[n][masks[n] & ~new[n]].abs() for n in weights]))
        ]
    else:
        assert all(int(new[n].sum()) == target[n] for n in weights)
        groups = [(weights[n][new[n]].abs(), weights[n][masks[n] & ~new[n]].abs()) for n in weights]
    for kept, pruned in groups:
        if kept.numel() and pruned.numel():
            assert kept.min() >= pruned.max()


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_exact_sparsity_per_round_and_shrinking_masks(scope):
    model, subsets = tiny()
    schedule = round_sparsities(0.0, 0.7, 3)
    search = extract_tickets(model, subsets, schedule=schedule, scope=scope, **ARGS)
    numels = {n: m.shape[1:].numel() for n, m in search.final.items()}
    total = sum(numels.values())
    previous = None
    for sparsity, masks in zip(search.sparsities, search.masks):
        for k in range(3):
            if scope == "global":
                kept = sum(int(m[k].sum()) for m in masks.values())
                assert abs(kept - (1 - sparsity) * total) <= 1
            else:
                for n, m in masks.items():
                    assert abs(int(m[k].sum()) - (1 - sparsity) * numels[n]) <= 1
        if previous is not None:
            assert all(not (masks[n] & ~previous[n]).any() for n in masks)
        previous = masks
    assert search.sparsities[-1] == 0.7


def test_kept_weights_outweigh_pruned_at_pruning_time(monkeypatch):
    seen = []
    real = imp_module.prune_by_magnitude

    def spy(weights, masks, target):
        out = real(weights, masks, target)
        seen.append(({n: w.detach().clone() for n, w in weights.items()}, masks, out))
        return out

    monkeypatch.setattr(imp_module, "prune_by_magnitude", spy)
    model, subsets = tiny()
    find_tickets(model, subsets, sparsity=0.6, rounds=2, **ARGS)
    assert len(seen) == 2 * 3
    for weights, before, after in seen:
        kept = torch.cat([weights[n][after[n]].abs() for n in weights])
        pruned = torch.cat([weights[n][before[n] & ~after[n]].abs() for n in weights])
        assert pruned.numel() > 0 and kept.min() >= pruned.max()


def test_rewinding_restores_theta0(monkeypatch):
    model, subsets = tiny()
    theta0 = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("mask_bits")}
    starts = []
    real = imp_module._train_ticket

    def spy(work, *args, **kwargs):
        starts.append({k: v.clone() for k, v in work.state_dict().items() if not k.endswith("mask_bits")})
        return real(work, *args, **kwargs)

    monkeypatch.setattr(imp_module, "_train_ticket", spy)
    masks = find_tickets(model, subsets, sparsity=0.5, rounds=3, **ARGS)
    assert len(starts) == 9
    for state in starts:
        assert all(torch.equal(state[k], theta0[k]) for k in theta0)
    after = model.state_dict()
    assert all(torch.equal(after[k], theta0[k]) for k in theta0), "the shared weights come back rewound"
    assert all(torch.equal(rtl.masks_of(model)[n].unpack(), m) for n, m in masks.items()), "masks are set into the model"


def test_late_rewinding_starts_later_rounds_from_round_one_snapshot(monkeypatch):
    model, subsets = tiny()
    theta0 = model[0].weight.detach().clone()
    starts = []
    real = imp_module._train_ticket

    def spy(work, *args, **kwargs):
        starts.append(work[0].weight.detach().clone())
        return real(work, *args, **kwargs)

    monkeypatch.setattr(imp_module, "_train_ticket", spy)
    find_tickets(model, subsets, sparsity=0.5, rounds=3, rewind="2it", **ARGS)
    first, later = starts[:3], starts[3:]
    assert all(torch.equal(s, theta0) for s in first)
    assert all(not torch.equal(s, theta0) for s in later)
    assert torch.equal(later[0], later[3]), "ticket 0 rewinds to the same point in rounds 2 and 3"


def test_find_tickets_errors():
    model, subsets = tiny()
    with pytest.raises(ValueError, match="subsets"):
        find_tickets(model, subsets[:2], sparsity=0.5, rounds=1, **ARGS)
    with pytest.raises(ValueError, match="sparsity"):
        find_tickets(model, subsets, sparsity=1.5, rounds=1, **ARGS)
    with pytest.raises(ValueError, match="rewind"):
        find_tickets(model, subsets, sparsity=0.5, rounds=1, rewind="soon", **ARGS)
    with pytest.raises(ValueError, match="scope"):
        find_tickets(model, subsets, sparsity=0.5, rounds=1, scope="row", **ARGS)
    with pytest.raises(TypeError, match="subsets"):
        find_tickets(model, "abc", sparsity=0.5, rounds=1, **ARGS)


def test_same_seed_same_tickets():
    a = find_tickets(*tiny(), sparsity=0.5, rounds=2, **ARGS)
    b = find_tickets(*tiny(), sparsity=0.5, rounds=2, **ARGS)
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("action", ["stop", "revert"])
def test_collapse_controller_stops_the_search(action):
    from rtl_kernels.pipeline import CollapseController

    model, subsets = tiny()
    controller = CollapseController(threshold=1e-6, action=action)
    search = extract_tickets(model, subsets, schedule=round_sparsities(0.0, 0.8, 4), controller=controller, **ARGS)
    assert search.collapse is not None and search.collapse["round"] == 1 and search.collapse["action"] == action
    assert len(search.masks) == (2 if action == "stop" else 1)
    assert len(search.history) == 2, "the triggering round is still reported"


def test_lazy_public_import():
    assert rtl.pipeline.find_tickets is find_tickets
    assert callable(rtl.pipeline.joint_retrain) and callable(rtl.pipeline.similarity) and rtl.pipeline.Recipe
