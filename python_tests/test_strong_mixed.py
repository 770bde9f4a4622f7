"""Mixed-ticket edge-popup steps beyond RTLLinear: conv2d, HF Conv1D, attention — score gradients vs float64 per-row references."""

import functools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset

import rtl_kernels as rtl
from rtl_kernels.models.state import named_rtl_layers
from rtl_kernels.nn.delta import RTLDeltaLinear
from rtl_kernels.nn.overrides import forward_overrides
from rtl_kernels.pipeline.strong import ste_masks
from rtl_kernels.pipeline.strong_mixed import mixed_forward


def _scores(model, k: int, gen):
    layers = named_rtl_layers(model)
    scores = {n: torch.randn(k, *m.weight.shape, generator=gen).requires_grad_() for n, m in layers.items()}
    return layers, scores


def _mixed_grads(model, layers, scores, keep, x, routes, target):
    masks = ste_masks(scores, keep)
    with forward_overrides({layers[n]: mixed_forward(layers[n], masks[n]) for n in layers}), rtl.routing(model, routes):
        out = model(x)
    return torch.autograd.grad(((out - target) ** 2).sum(), list(scores.values()))


def _reference_grads(scores, keep, per_row):
    """float64: every row through its own ticket's ``W ⊙ mask``, STE through |S| (the same top-k)."""
    s64 = {n: s.detach().double().requires_grad_() for n, s in scores.items()}
    loss = per_row(ste_masks(s64, keep))
    return torch.autograd.grad(loss, list(s64.values()))


def _close(got, ref):
    for a, r in zip(got, ref):
        assert torch.allclose(a.double(), r, rtol=1e-4, atol=1e-5), float((a.double() - r).abs().max())


@settings(max_examples=8)
@given(
    k=st.integers(1, 3),
    b=st.integers(1, 6),
    c_in=st.sampled_from([2, 4]),
    groups=st.sampled_from([1, 2]),
    stride=st.integers(1, 2),
    padding=st.sampled_from([0, 1, "same"]),
    padding_mode=st.sampled_from(["zeros", "reflect"]),
    seed=st.integers(0, 2**16),
)
def test_conv_mixed_gradients_match_float64(k, b, c_in, groups, stride, padding, padding_mode, seed):
    if padding == "same":
        stride = 1
    torch.manual_seed(seed)
    conv = nn.Conv2d(c_in, 4, 3, stride=stride, padding=padding, groups=groups, padding_mode=padding_mode)
    h = 6
    n_out = 4 * (((h + 2 * (padding if isinstance(padding, int) else 1) - 3) // stride + 1) ** 2)
    model = rtl.convert(nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(n_out, 3)), k)
    gen = torch.Generator().manual_seed(seed)
    layers, scores = _scores(model, k, gen)
    keep = {n: max(1, m.weight.numel() // 2) for n, m in layers.items()}
    x = torch.randn(b, c_in, h, h, generator=gen)
    routes = torch.randint(0, k, (b,), generator=gen)  # some tickets may get no image
    target = torch.randn(b, 3, generator=gen)
    got = _mixed_grads(model, layers, scores, keep, x, routes, target)
    c, lin = model[0], model[3]

    def per_row(m):
        outs = []
        for i in range(b):
            t = int(routes[i])
            xi = x[i : i + 1].double()
            if padding_mode != "zeros":
                xi, pad = F.pad(xi, c._explicit_padding(), mode=padding_mode), 0
            else:
                pad = padding
            hi = F.conv2d(xi, c.weight.double() * m["0"][t], c.bias.double(), stride, pad, 1, groups)
            outs.append(torch.relu(hi).flatten(1) @ (lin.weight.double() * m["3"][t]).T + lin.bias.double())
        return ((torch.cat(outs) - target.double()) ** 2).sum()

    _close(got, _reference_grads(scores, keep, per_row))


def test_attention_mixed_gradients_match_float64():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    torch.manual_seed(0)
    model = rtl.convert(nn.Sequential(Block()), 3)
    gen = torch.Generator().manual_seed(1)
    layers, scores = _scores(model, 3, gen)
    assert set(layers) == {"0.attn", "0.attn.out_proj"}
    keep = {n: m.weight.numel() // 3 for n, m in layers.items()}
    x = torch.randn(5, 4, 8, generator=gen)
    routes = torch.tensor([2, 0, 2, 1, 0])  # one ticket per sample
    target = torch.randn(5, 4, 8, generator=gen)
    got = _mixed_grads(model, layers, scores, keep, x, routes, target)
    attn = model[0].attn

    def per_row(m):
        outs = []
        for i in range(5):
            t = int(routes[i])
            qkv = x[i].double() @ (attn.in_proj_weight.double() * m["0.attn"][t]).T + attn.in_proj_bias.double()
            q, kk, v = (z.reshape(4, 2, 4).transpose(0, 1) for z in qkv.chunk(3, -1))  # [H, L, D]
            o = torch.softmax(q @ kk.transpose(1, 2) / 2.0, -1) @ v
            o = o.transpose(0, 1).reshape(4, 8)
            outs.append(o @ (attn.out_proj.weight.double() * m["0.attn.out_proj"][t]).T + attn.out_proj.bias.double())
        return ((torch.stack(outs) - target.double()) ** 2).sum()

    _close(got, _reference_grads(scores, keep, per_row))


def test_hf_conv1d_mixed_gradients_match_float64():
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = rtl.convert(nn.Sequential(Conv1D(6, 5), nn.Tanh(), Conv1D(2, 6)), 2)  # Conv1D(nf=out, nx=in), weight [in, out]
    gen = torch.Generator().manual_seed(2)
    layers, scores = _scores(model, 2, gen)
    keep = {n: m.weight.numel() // 2 for n, m in layers.items()}
    x = torch.randn(7, 5, generator=gen)
    routes = torch.tensor([1, 1, 0, 1, 0, 0, 1])
    target = torch.randn(7, 2, generator=gen)
    got = _mixed_grads(model, layers, scores, keep, x, routes, target)
    a, c = model[0], model[2]

    def per_row(m):
        outs = []
        for i in range(7):
            t = int(routes[i])
            hi = torch.tanh(x[i].double() @ (a.weight.double() * m["0"][t]) + a.bias.double())
            outs.append(hi @ (c.weight.double() * m["2"][t]) + c.bias.double())
        return ((torch.stack(outs) - target.double()) ** 2).sum()

    _close(got, _reference_grads(scores, keep, per_row))


def test_mixed_conv_model_trains_and_keeps_parameters():
    torch.manual_seed(0)
    model = rtl.init.seeded_(rtl.convert(nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 2)), 2), 4)
    before = {n: v.clone() for n, v in model.state_dict().items() if not n.endswith("mask_bits")}
    g = torch.Generator().manual_seed(3)
    data = []
    for t in range(2):  # ticket t: is the bright pixel in the left (t = 0) or top (t = 1) half
        x = torch.zeros(64, 1, 6, 6)
        pos = torch.randint(0, 6, (64, 2), generator=g)
        x[torch.arange(64), 0, pos[:, 0], pos[:, 1]] = 1.0
        data.append(TensorDataset(x, (pos[:, 1 - t] < 3).long()))
    masks = rtl.pipeline.find_strong_tickets(
        model, data, sparsity=0.5, epochs=12, loss_fn=nn.functional.cross_entropy, lr=0.05, batch_size=32, mixed=True,
        progress=False, optimizer=functools.partial(torch.optim.SGD, lr=0.5, momentum=0.9),
    )  # fmt: skip
    assert all(torch.equal(before[n], v) for n, v in model.state_dict().items() if n in before)
    assert all(int(masks["0"][t].sum()) == round(0.5 * masks["0"][t].numel()) for t in range(2))
    model.eval()
    for t in range(2):
        x, y = data[t].tensors
        with torch.no_grad(), rtl.routing(model, t):
            assert float((model(x).argmax(1) == y).float().mean()) > 0.75


def test_mixed_rejects_unsupported_layers():
    model = nn.Sequential(RTLDeltaLinear.from_dense(nn.Linear(4, 2), 2))
    kw = dict(sparsity=0.5, epochs=1, loss_fn=nn.functional.cross_entropy, lr=0.1, batch_size=8, progress=False, mixed=True)
    data = [TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(2)]
    with pytest.raises(ValueError, match="mixed: expected only RTLLinear, RTLConv2d"):
        rtl.pipeline.find_strong_tickets(model, data, **kw)
