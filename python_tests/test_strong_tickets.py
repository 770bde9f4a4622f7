"""find_strong_tickets (edge-popup): exact sparsity, frozen model, mixed-ticket gradients, errors."""

import functools
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import rtl_kernels as rtl
from rtl_kernels.nn.overrides import forward_overrides
from rtl_kernels.pipeline.strong import NonFiniteLossError, ste_masks
from rtl_kernels.pipeline.strong_mixed import mixed_forward


def mlp(k: int, bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    mods = [nn.Linear(8, 32), nn.BatchNorm1d(32)] if bn else [nn.Linear(8, 32)]
    model = rtl.convert(nn.Sequential(*mods, nn.ReLU(), nn.Linear(32, 2)), k)
    return rtl.init.seeded_(model, 3)


def subsets(k: int, n: int = 96):
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(k):
        x = torch.randn(n, 8, generator=g)
        y = ((x[:, i] + x[:, (i + 1) % 8]) > 0).long()  # each task reads different inputs
        out.append(TensorDataset(x, y))
    return out


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("mask_bits")}


def accuracy(model, data, k):
    x, y = data.tensors
    model.eval()
    with torch.no_grad(), rtl.routing(model, k):
        return float((model(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_exact_sparsity_model_untouched_and_learns(scope):
    model = mlp(2)
    before = state(model)
    data = subsets(2)
    masks = rtl.pipeline.find_strong_tickets(
        model, data, sparsity=0.5, epochs=15, loss_fn=nn.functional.cross_entropy, lr=0.05, batch_size=32, scope=scope, progress=False
    )
    after = state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    if scope == "layer":
        for m in masks.values():
            assert m.shape[0] == 2 and all(int(m[k].sum()) == round(0.5 * m[k].numel()) for k in range(2))
    else:
        total = sum(m[0].numel() for m in masks.values())
        assert all(sum(int(m[k].sum()) for m in masks.values()) == round(0.5 * total) for k in range(2))
    assert torch.equal(model[0].get_masks(), masks["0"])
    assert accuracy(model, data[0], 0) > 0.75  # a subnetwork of a random net that solves ticket 0's task


def test_buffers_come_back_and_nonaffine_norms():
    model = mlp(2, bn=True)
    before = state(model)
    with torch.no_grad():
        model[1].weight.fill_(3.0)  # with nonaffine_norms the search ignores this
    before = state(model)
    rtl.pipeline.find_strong_tickets(
        model, subsets(2, 32), sparsity=0.3, epochs=1, loss_fn=nn.functional.cross_entropy, lr=0.05, batch_size=16,
        progress=False, nonaffine_norms=True,
    )  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in state(model).items())  # BN running statistics put back


def test_mixed_gradients_equal_per_ticket_gradients():
    model = mlp(3)
    layers = {"0": model[0], "2": model[2]}
    g = torch.Generator().manual_seed(5)
    scores = {n: torch.randn(3, *m.weight.shape, generator=g).requires_grad_() for n, m in layers.items()}
    keep = {n: m.weight.numel() // 3 for n, m in layers.items()}
    x = torch.randn(10, 8, generator=g)
    routes = torch.tensor([2, 0, 1, 1, 2, 0, 0, 2, 1, 2])
    target = torch.randn(10, 2, generator=g)
    masks = ste_masks(scores, keep)
    with forward_overrides({layers[n]: mixed_forward(layers[n], masks[n]) for n in layers}), rtl.routing(model, routes):
        loss = ((model(x) - target) ** 2).sum()
    mixed = torch.autograd.grad(loss, list(scores.values()))
    # reference: float64, each row through its own ticket's W * mask, STE through |S|
    s64 = {n: s.detach().double().requires_grad_() for n, s in scores.items()}
    m64 = ste_masks(s64, keep)
    w = {n: layers[n].weight.double() for n in layers}
    b = {n: layers[n].bias.double() for n in layers}
    out = []
    for i in range(10):
        k = int(routes[i])
        h = torch.relu(x[i].double() @ (w["0"] * m64["0"][k]).T + b["0"])
        out.append(h @ (w["2"] * m64["2"][k]).T + b["2"])
    ref = torch.autograd.grad(((torch.stack(out) - target.double()) ** 2).sum(), list(s64.values()))
    for a, r in zip(mixed, ref):
        assert torch.allclose(a.double(), r, rtol=1e-4, atol=1e-5)


def test_mixed_mode_trains_all_tickets_at_once():
    model = mlp(2)
    before = state(model)
    masks = rtl.pipeline.find_strong_tickets(
        model, subsets(2), sparsity=0.5, epochs=15, loss_fn=nn.functional.cross_entropy, lr=0.05, batch_size=32,
        mixed=True, progress=False, optimizer=functools.partial(torch.optim.SGD, lr=0.5, momentum=0.9),
    )  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in state(model).items())
    assert all(accuracy(model, subsets(2)[k], k) > 0.7 for k in range(2))
    assert not torch.equal(masks["0"][0], masks["0"][1])


def test_nonfinite_loss_names_ticket_and_restores():
    model = mlp(2, bn=True)
    before = state(model)
    masks_before = model[0].mask_bits.clone()

    def bad_loss(out, y):
        return out.sum() * float("nan")

    with pytest.raises(NonFiniteLossError, match="ticket 0"):
        rtl.pipeline.find_strong_tickets(model, subsets(2), sparsity=0.5, epochs=1, loss_fn=bad_loss, lr=0.1, batch_size=32, progress=False)
    assert all(torch.equal(before[k], v) for k, v in state(model).items()) and torch.equal(model[0].mask_bits, masks_before)


@pytest.mark.parametrize("sparsity", [0.0, 1.0, -0.1, 1.5, "0.5", True])
def test_bad_sparsity(sparsity):
    with pytest.raises(ValueError, match="sparsity"):
        rtl.pipeline.find_strong_tickets(
            mlp(2), subsets(2), sparsity=sparsity, epochs=1, loss_fn=nn.functional.cross_entropy, lr=0.1, batch_size=8
        )


def test_bad_arguments():
    kw = dict(sparsity=0.5, epochs=1, loss_fn=nn.functional.cross_entropy, lr=0.1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="subsets"):
        rtl.pipeline.find_strong_tickets(mlp(3), subsets(2), **kw)
    with pytest.raises(ValueError, match="scope"):
        rtl.pipeline.find_strong_tickets(mlp(2), subsets(2), **{**kw, "scope": "tensor"})


def test_cosine_lr_schedule_per_epoch():
    seen = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    rtl.pipeline.find_strong_tickets(
        mlp(1), subsets(1, 32), sparsity=0.5, epochs=4, loss_fn=nn.functional.cross_entropy, lr=0.2, batch_size=16,
        progress=False, optimizer=lambda p: Recording(p, lr=0.2), lr_schedule="cosine",
    )  # fmt: skip
    expected = [0.2 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4) for _ in range(2)]  # 2 steps per epoch
    assert seen == pytest.approx(expected)
    with pytest.raises(ValueError, match="lr_schedule"):
        rtl.pipeline.find_strong_tickets(
            mlp(1), subsets(1, 8), sparsity=0.5, epochs=1, loss_fn=nn.functional.cross_entropy, lr=0.1, batch_size=8, lr_schedule="step"
        )
