"""convert on plain PyTorch models: a ResNet-style CNN, nn.MultiheadAttention (skipped, recorded), tied weights."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rtl_kernels as rtl

K = 4


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)))


class TinyResNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = BasicBlock(8, 8, 1)
        self.layer2 = BasicBlock(8, 16, 2)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))


def _dense_for_ticket(model: nn.Module, ticket: int) -> nn.Module:
    dense = copy.deepcopy(model)
    for name, layer in list(dense.named_modules()):
        if isinstance(layer, rtl.nn.RTLLayer):
            parent_name, _, child = name.rpartition(".")
            setattr(dense.get_submodule(parent_name), child, layer.to_dense(ticket))
    return dense


def test_resnet_all_ones_then_routed_masks() -> None:
    torch.manual_seed(0)
    model = TinyResNet().eval()
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(5, 3, 12, 12)
    with torch.no_grad():
        ref = model(x)
    weights = {id(p) for p in model.parameters()}
    model = rtl.convert(model, K)
    summary = model.rtl_conversion_summary
    assert summary.converted == ["stem.0", "layer1.conv1", "layer1.conv2", "layer2.conv1", "layer2.conv2", "layer2.down.0", "fc"]
    assert summary.covered_params == sum(rtl_layer.weight.numel() for rtl_layer in rtl.models.rtl_layers(model))
    assert {id(p) for p in model.parameters()} == weights
    routes = torch.tensor([0, 3, 1, 2, 3])
    with torch.no_grad(), rtl.routing(model, routes):
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
    gen = torch.Generator().manual_seed(1)
    rtl.set_masks(model, {n: torch.rand((K, *pm.weight_shape), generator=gen) < 0.5 for n, pm in rtl.masks_of(model).items()})
    with torch.no_grad(), rtl.routing(model, routes):
        out = model(x)
    expected = torch.cat([_dense_for_ticket(model, t)(x[b : b + 1]) for b, t in enumerate(routes.tolist())])
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


class AttentionNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        h, _ = self.attn(h, h, h, need_weights=False)
        return self.out(h)


def test_multihead_attention_is_skipped_with_warning_and_recorded() -> None:
    torch.manual_seed(2)
    model = AttentionNet().eval()
    x = torch.randn(3, 5, 6)
    with torch.no_grad():
        ref = model(x)
    with pytest.warns(UserWarning, match="parent uses their weights directly"):
        model = rtl.convert(model, K)
    summary = model.rtl_conversion_summary
    assert summary.converted == ["inp", "out"]
    assert "attn.out_proj" in summary.skipped and "F.multi_head_attention_forward" in summary.skipped["attn.out_proj"]
    assert type(model.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert "skipped attn.out_proj" in str(summary)
    with torch.no_grad(), rtl.routing(model, torch.tensor([0, 1, 3])):
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)


def test_transformer_encoder_layer_fast_path_weights_are_skipped() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 16), nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)).eval()
    x = torch.randn(2, 5, 4)
    with torch.no_grad():
        ref = model(x)
    with pytest.warns(UserWarning, match="parent uses their weights directly"):
        model = rtl.convert(model, K)
    summary = model.rtl_conversion_summary
    assert summary.converted == ["0"]
    assert {"1.linear1", "1.linear2", "1.self_attn.out_proj"} <= set(summary.skipped)
    assert "fast path" in summary.skipped["1.linear1"]
    with torch.no_grad(), rtl.routing(model, torch.tensor([1, 2])):
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)


class TiedNet(nn.Module):
    """Two modules sharing one weight Parameter, plus one block used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(8, 12, bias=False)
        self.block = nn.Linear(12, 12)
        self.twice = nn.Sequential(self.block, nn.Tanh(), self.block)
        self.head = nn.Linear(8, 12, bias=False)
        self.head.weight = self.enc.weight  # tied: two modules, one Parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.twice(self.enc(x)) + self.head(x)


def test_tied_weights_and_shared_modules_converted_once_still_tied() -> None:
    torch.manual_seed(4)
    model = TiedNet().eval()
    x = torch.randn(6, 8)
    with torch.no_grad():
        ref = model(x)
    tied = model.enc.weight
    model = rtl.convert(model, K)
    summary = model.rtl_conversion_summary
    # the shared block is one RTL layer reachable from both places
    assert model.block is model.twice[0] is model.twice[2]
    assert isinstance(model.block, rtl.nn.RTLLinear)
    assert summary.converted == ["enc", "block", "head"]
    # the tied Parameter survives and is counted once
    assert model.enc.weight is tied and model.head.weight is tied
    assert summary.covered_params == 12 * 8 + 12 * 12
    assert "head.weight" in summary.tied["enc"] and "enc.weight" in summary.tied["head"]
    assert "block" not in summary.tied
    with torch.no_grad(), rtl.routing(model, torch.arange(6) % K):
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
    # an optimizer step through either user moves the one tensor
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with rtl.routing(model, 0):
        model(x).sum().backward()
    opt.step()
    assert model.enc.weight is model.head.weight


def test_summary_to_dict_and_ignore_reason() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    model = rtl.convert(model, 2, ignore=["re:2"])
    d = model.rtl_conversion_summary.to_dict()
    assert d["converted"] == ["0"] and d["skipped"] == {"2": "in ignore"}
    assert d["covered_params"] == 12 and d["total_params"] == 12 + 4 + 8 + 2
    assert d["layer_types"] == {"0": "RTLLinear"}
