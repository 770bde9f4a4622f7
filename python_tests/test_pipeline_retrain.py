"""Joint retraining: masked updates (not only gradients), frozen weights outside the union, fixed masks."""

import functools

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import rtl_kernels as rtl
from rtl_kernels.pipeline import MaskedAdam, joint_retrain, masked_step

pytestmark = pytest.mark.usefixtures("one_thread")


def setup(num_tickets=3, sizes=(20, 9, 14), bias=True):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(6, 10, bias=bias), torch.nn.ReLU(), torch.nn.Linear(10, 3, bias=bias))
    rtl.convert(model, num_tickets)
    g = torch.Generator().manual_seed(2)
    masks = {name: torch.rand(num_tickets, *p.weight_shape, generator=g) < 0.4 for name, p in rtl.masks_of(model).items()}
    rtl.set_masks(model, masks)
    subsets = [TensorDataset(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in sizes]
    return model, masks, subsets


ARGS = dict(epochs=2, loss_fn=F.cross_entropy, lr=5e-2, batch_size=4, progress=False)
OPTIMIZERS = {
    "masked-adam": None,
    "sgd-momentum": functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=0.01),
    "adamw": functools.partial(torch.optim.AdamW, lr=0.05),
}


@pytest.mark.parametrize("mode", ["sequential", "fused"])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_outside_union_frozen_and_masks_fixed(mode, opt):
    model, masks, subsets = setup()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    joint_retrain(model, subsets, mode=mode, optimizer=OPTIMIZERS[opt], **ARGS)
    for name, m in masks.items():
        union = m.any(0)
        w0, w1 = before[f"{name}.weight"], model.get_submodule(name).weight.detach()
        assert torch.equal(w0[~union], w1[~union]), "weights outside the union of masks never move"
        assert not torch.equal(w0[union], w1[union]), "weights inside the union are trained"
        assert torch.equal(rtl.masks_of(model)[name].unpack(), m), "masks never change during retraining"


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_each_step_moves_only_its_tickets_weights(opt, monkeypatch):
    """Sequential mode: on ticket k's step, weights outside m_k keep their value (Adam momentum included)."""
    model, _masks, subsets = setup()
    import rtl_kernels.pipeline.training as training

    real = training.masked_step
    checks = []

    def spy(optimizer, update_masks):
        snap = {p: p.detach().clone() for p in update_masks}
        real(optimizer, update_masks)
        for p, m in update_masks.items():
            checks.append(torch.equal(p[~m], snap[p][~m]))
            checks.append(not torch.equal(p[m], snap[p][m]) or m.sum() == 0)

    monkeypatch.setattr(training, "masked_step", spy)
    joint_retrain(model, subsets, mode="sequential", optimizer=OPTIMIZERS[opt], **ARGS)
    assert checks and all(checks)


def test_sequential_balances_steps_per_ticket(monkeypatch):
    model, _masks, subsets = setup()
    import rtl_kernels.pipeline.training as training

    routes = []
    real = training.routed_loss

    def spy(model, batch, r, loss_fn, device, *rest):
        routes.append(r)
        return real(model, batch, r, loss_fn, device, *rest)

    monkeypatch.setattr(training, "routed_loss", spy)
    joint_retrain(model, subsets, **ARGS)
    longest = max(-(-len(s) // 4) for s in subsets)
    assert routes == [0, 1, 2] * longest * 2, "round-robin over tickets, smaller subsets cycled"


def test_masked_adam_equals_adam_without_masks():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5, 4))
    b = torch.nn.Parameter(a.detach().clone())
    opt_a, opt_b = MaskedAdam([a], lr=0.01, weight_decay=0.1), torch.optim.Adam([b], lr=0.01, weight_decay=0.1)
    for _ in range(5):
        g = torch.randn(5, 4)
        a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    torch.testing.assert_close(a, b)


def test_masked_adam_keeps_inactive_state():
    """A masked step leaves inactive weights AND their moments as they were (lazy Adam)."""
    p = torch.nn.Parameter(torch.randn(8))
    opt = MaskedAdam([p], lr=0.1)
    p.grad = torch.ones(8)
    opt.step()
    state = {k: v.clone() for k, v in opt.state[p].items()}
    value = p.detach().clone()
    mask = torch.tensor([True, False] * 4)
    p.grad = torch.zeros(8)
    masked_step(opt, {p: mask})
    assert torch.equal(p[~mask], value[~mask])
    for key in state:
        assert torch.equal(opt.state[p][key][~mask], state[key][~mask])
    assert not torch.equal(p[mask], value[mask]), "active weights still follow their momentum"


def test_disjoint_masks_without_shared_params_evolve_independently():
    """With disjoint masks and no dense parameters, ticket 0's weights do not depend on ticket 1's data."""
    model_a, masks, subsets = setup(num_tickets=2, sizes=(12, 12), bias=False)
    disjoint = {n: torch.stack([m[0], ~m[0]]) for n, m in masks.items()}
    rtl.set_masks(model_a, disjoint)
    model_b = __import__("copy").deepcopy(model_a)
    g = torch.Generator().manual_seed(9)
    other = TensorDataset(torch.randn(12, 6, generator=g), torch.randint(0, 3, (12,), generator=g))
    joint_retrain(model_a, subsets, **ARGS)
    joint_retrain(model_b, [subsets[0], other], **ARGS)
    for n, m in disjoint.items():
        wa, wb = model_a.get_submodule(n).weight.detach(), model_b.get_submodule(n).weight.detach()
        assert torch.equal(wa[m[0]], wb[m[0]])
        assert not torch.equal(wa[m[1]], wb[m[1]])


def test_joint_retrain_errors():
    model, _, subsets = setup()
    with pytest.raises(ValueError, match="mode"):
        joint_retrain(model, subsets, mode="parallel", **ARGS)
    with pytest.raises(ValueError, match="subsets"):
        joint_retrain(model, subsets[:2], **ARGS)
    with pytest.raises(TypeError, match="optimizer"):
        joint_retrain(model, subsets, optimizer="adam", **ARGS)
