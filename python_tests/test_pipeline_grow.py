"""Divergence guard, searching some tickets only, adding tickets later, and per-layer sparsity (Frankle & Carbin's rates)."""

import functools

import pytest
import torch
import torch.nn.functional as F
from tiny_pipeline import ARGS, tiny
from torch.utils.data import TensorDataset

import rtl_kernels as rtl
from rtl_kernels.pipeline import NonFiniteLossError, add_tickets, find_tickets, joint_retrain
from rtl_kernels.pipeline.imp import extract_tickets

pytestmark = pytest.mark.usefixtures("one_thread")


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def with_nan_subset(subsets, k):
    x, y = subsets[k].tensors
    out = list(subsets)
    out[k] = TensorDataset(torch.full_like(x, float("nan")), y)
    return out


def test_find_tickets_nan_subset_names_ticket_and_round_and_leaves_model():
    model, subsets = tiny()
    find_tickets(model, subsets, sparsity=0.3, rounds=1, **ARGS)  # masks that are not all ones
    before = state(model)
    with pytest.raises(NonFiniteLossError, match=r"find_tickets round 0, epoch 0, ticket 1"):
        find_tickets(model, with_nan_subset(subsets, 1), sparsity=0.5, rounds=2, **ARGS)
    assert_same(state(model), before)


@pytest.mark.parametrize("mode", ["sequential", "fused"])
def test_joint_retrain_divergence_restores_weights_and_masks(mode):
    model, subsets = tiny()
    find_tickets(model, subsets, sparsity=0.5, rounds=1, **ARGS)
    before = state(model)
    with pytest.raises(NonFiniteLossError, match=r"joint_retrain epoch \d+, tickets? \[?2"):
        joint_retrain(
            model, with_nan_subset(subsets, 2), epochs=2, loss_fn=F.cross_entropy, lr=1e-2, batch_size=8, mode=mode, progress=False
        )
    assert_same(state(model), before)
    # SGD at lr = 1e6 blows up too, and is caught (a RuntimeError subclass, as the contract says)
    sgd = functools.partial(torch.optim.SGD, lr=1e6)
    with pytest.raises(RuntimeError, match="finite training loss"):
        joint_retrain(model, subsets, epochs=30, loss_fn=F.cross_entropy, lr=1e6, batch_size=8, mode=mode, progress=False, optimizer=sgd)
    assert_same(state(model), before)


def test_search_some_tickets_keeps_the_others():
    model, subsets = tiny()
    full = find_tickets(model, subsets, sparsity=0.5, rounds=2, **ARGS)
    again = find_tickets(model, [None, subsets[1], None], sparsity=0.75, rounds=2, tickets=[1], **ARGS)
    for name, m in again.items():
        assert torch.equal(m[0], full[name][0]) and torch.equal(m[2], full[name][2])
        assert not torch.equal(m[1], full[name][1])
    kept = sum(int(m[1].sum()) for m in again.values())
    total = sum(m[1].numel() for m in again.values())
    assert kept == round(0.25 * total)
    with pytest.raises(ValueError, match=r"tickets: expected ids in \[0, 3\), got \[3\]"):
        find_tickets(model, subsets, sparsity=0.5, rounds=1, tickets=[3], **ARGS)
    with pytest.raises(ValueError, match="distinct"):
        find_tickets(model, subsets, sparsity=0.5, rounds=1, tickets=[1, 1], **ARGS)
    with pytest.raises(TypeError, match=r"subsets\[1\]"):
        find_tickets(model, [subsets[0], None, None], sparsity=0.5, rounds=1, tickets=[1], **ARGS)


def test_adding_a_ticket_leaves_the_other_tickets_outputs_bit_identical():
    model, subsets = tiny(num_tickets=2)
    find_tickets(model, subsets, sparsity=0.5, rounds=2, **ARGS)
    joint_retrain(model, subsets, epochs=1, loss_fn=F.cross_entropy, lr=1e-2, batch_size=8, progress=False)
    x = torch.randn(16, 8)
    model.eval()
    with torch.no_grad():
        before = [rtl.RoutedModel(model)(x, routes=torch.full((16,), k)) for k in range(2)]
    new = add_tickets(model)
    assert new == [2] and all(layer.num_tickets == 3 for layer in rtl.models.rtl_layers(model))
    _, extra = tiny(num_tickets=3, seed=1)
    find_tickets(model, [None, None, extra[2]], sparsity=0.5, rounds=2, tickets=new, **ARGS)
    with torch.no_grad():
        after = [rtl.RoutedModel(model)(x, routes=torch.full((16,), k)) for k in range(2)]
        third = rtl.RoutedModel(model)(x, routes=torch.full((16,), 2))
    for a, b in zip(before, after):
        assert torch.equal(a, b)
    assert not torch.equal(third, after[0])
    with pytest.raises(ValueError, match="count"):
        add_tickets(model, 0)


def test_layer_sparsity_gives_a_layer_its_own_rate():
    model, subsets = tiny()
    masks = find_tickets(model, subsets, sparsity=1 - 0.8**3, rounds=3, scope="layer", layer_sparsity={"2": 1 - 0.9**3}, **ARGS)
    for k in range(3):
        assert int(masks["0"][k].sum()) == round(0.8**3 * 96)
        assert int(masks["2"][k].sum()) == round(0.9**3 * 36)
    search = extract_tickets(
        model, subsets, schedule=[0.2, 0.36], scope="layer", layer_schedules={"2": [0.1, 0.19]}, **ARGS
    )  # every round at its own per-layer count
    assert [int(m["2"][0].sum()) for m in search.masks] == [round(0.9 * 36), round(0.81 * 36)]
    with pytest.raises(ValueError, match="scope='layer'"):
        find_tickets(model, subsets, sparsity=0.5, rounds=1, layer_sparsity={"2": 0.2}, **ARGS)
    with pytest.raises(ValueError, match="not RTL layers"):
        find_tickets(model, subsets, sparsity=0.5, rounds=1, scope="layer", layer_sparsity={"fc9": 0.2}, **ARGS)
    with pytest.raises(ValueError, match="sparsity"):
        find_tickets(model, subsets, sparsity=0.5, rounds=1, scope="layer", layer_sparsity={"2": 1.5}, **ARGS)
