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
    def __init__(self, **mha_kwargs) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 4, **mha_kwargs)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.inp(x)
        kv = h if memory is None else memory
        return self.attn(h, kv, kv, **kwargs)


def _attention_cases():
    t, s = 5, 7
    causal = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
    padding = torch.zeros(3, t, dtype=torch.bool)
    padding[0, -2:] = True
    float_mask = torch.randn(3 * 4, t, t, generator=torch.Generator().manual_seed(0))
    return [
        ({"batch_first": True}, {}, None),
        ({"batch_first": True}, {"need_weights": False}, None),
        ({"batch_first": False}, {"key_padding_mask": padding, "average_attn_weights": False}, None),
        ({"batch_first": True}, {"attn_mask": causal, "is_causal": True, "need_weights": False}, None),
        ({"batch_first": True}, {"attn_mask": float_mask, "key_padding_mask": padding}, None),
        ({"batch_first": True, "add_bias_kv": True, "add_zero_attn": True}, {"key_padding_mask": padding}, None),
        ({"batch_first": True, "bias": False}, {}, None),
        ({"batch_first": True}, {"need_weights": False}, s),  # cross-attention, other key length
        ({"batch_first": True}, {}, "unbatched"),
    ]


@pytest.mark.parametrize(("mha_kwargs", "call_kwargs", "variant"), _attention_cases())
def test_multihead_attention_becomes_rtl_attention(mha_kwargs, call_kwargs, variant) -> None:
    torch.manual_seed(2)
    model = AttentionNet(**mha_kwargs).eval()
    batch_first = mha_kwargs.get("batch_first", False)
    x = torch.randn(3, 5, 6) if batch_first else torch.randn(5, 3, 6)
    memory = None
    if isinstance(variant, int):
        memory = torch.randn(3, variant, 16)
    if variant == "unbatched":
        x = x[0]
    with torch.no_grad():
        ref_out, ref_w = model(x, memory, **call_kwargs)
    params = {id(p) for p in model.parameters()}
    model = rtl.convert(model, K)
    summary = model.rtl_conversion_summary
    assert summary.converted == ["inp", "attn", "attn.out_proj"]
    assert summary.layer_types["attn"] == "RTLMultiheadAttention" and summary.layer_types["attn.out_proj"] == "RTLLinear"
    assert {id(p) for p in model.parameters()} == params
    assert set(rtl.masks_of(model)) == {"inp", "attn", "attn.out_proj"}
    per_sample = torch.tensor([0, 1, 3])
    # routes are a prefix of each layer's leading dims: [B] batch-first, one per row [L, B] sequence-first
    routes = 2 if variant == "unbatched" else per_sample if batch_first else per_sample.expand(5, 3)
    with torch.no_grad(), rtl.routing(model, routes):
        out, w = model(x, memory, **call_kwargs)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    if ref_w is None:
        assert w is None
    else:
        torch.testing.assert_close(w, ref_w, rtol=1e-5, atol=1e-5)
    # random masks: each sample equals a dense copy with its ticket baked in
    gen = torch.Generator().manual_seed(3)
    rtl.set_masks(model, {n: torch.rand((K, *pm.weight_shape), generator=gen) < 0.5 for n, pm in rtl.masks_of(model).items()})
    with torch.no_grad(), rtl.routing(model, routes):
        out, _ = model(x, memory, **call_kwargs)
    if variant == "unbatched":
        expected, _ = _dense_for_ticket(model, 2)(x, memory, **call_kwargs)
    else:
        dim = 0 if batch_first else 1
        rows = []
        for b, t in enumerate(per_sample.tolist()):
            kw = dict(call_kwargs)
            if "key_padding_mask" in kw:
                kw["key_padding_mask"] = kw["key_padding_mask"][b : b + 1]
            if "attn_mask" in kw and kw["attn_mask"].dim() == 3:
                kw["attn_mask"] = kw["attn_mask"][4 * b : 4 * b + 4]
            mem = None if memory is None else memory[b : b + 1]
            rows.append(_dense_for_ticket(model, t)(x.narrow(dim, b, 1), mem, **kw)[0])
        expected = torch.cat(rows, dim=dim)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_rtl_attention_gradients_reach_shared_weights_masked() -> None:
    torch.manual_seed(5)
    model = rtl.convert(AttentionNet(batch_first=True), K)
    masks = torch.rand(K, 48, 16) < 0.5
    model.attn.set_masks(masks)
    with rtl.routing(model, 1):
        out, _ = model(torch.randn(2, 5, 6), need_weights=False)
    out.sum().backward()
    grad = model.attn.in_proj_weight.grad
    assert grad is not None and torch.all(grad[~masks[1]] == 0) and torch.any(grad[masks[1]] != 0)


def test_multihead_attention_with_separate_kv_dims_is_skipped_with_warning() -> None:
    torch.manual_seed(2)
    model = nn.Sequential()
    model.attn = nn.MultiheadAttention(16, 4, kdim=8, vdim=8, batch_first=True)
    model.fc = nn.Linear(16, 2)
    with pytest.warns(UserWarning, match="parent uses their weights directly"):
        model = rtl.convert(model, K)
    summary = model.rtl_conversion_summary
    assert summary.converted == ["fc"]
    assert "separate q/k/v weights" in summary.skipped["attn"]
    assert "F.multi_head_attention_forward" in summary.skipped["attn.out_proj"]
    assert type(model.attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert "skipped attn.out_proj" in str(summary)


def test_transformer_encoder_layer_converts_unless_ignored_then_its_children_are_skipped() -> None:
    torch.manual_seed(3)
    dense = nn.Sequential(nn.Linear(4, 16), nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)).eval()
    x = torch.randn(2, 5, 4)
    with torch.no_grad():
        ref = dense(x)
    converted = rtl.convert(copy.deepcopy(dense), K)
    assert {"1.linear1", "1.linear2", "1.self_attn", "1.self_attn.out_proj"} <= set(converted.rtl_conversion_summary.converted)
    with torch.no_grad(), rtl.routing(converted, torch.tensor([1, 2])):
        torch.testing.assert_close(converted(x), ref, rtol=1e-5, atol=1e-5)
    with pytest.warns(UserWarning, match="parent uses their weights directly"):
        model = rtl.convert(dense, K, ignore=["1"])  # the fused fast path reads the children's weights
    summary = model.rtl_conversion_summary
    assert summary.converted == ["0"]
    assert {"1.linear1", "1.linear2", "1.self_attn", "1.self_attn.out_proj"} <= set(summary.skipped)
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


def test_rtl_attention_save_load_and_state_dict_keys(tmp_path) -> None:
    torch.manual_seed(6)
    dense_keys = set(AttentionNet(batch_first=True).state_dict())
    model = rtl.convert(AttentionNet(batch_first=True), K)
    assert {k for k in model.state_dict() if not k.endswith("mask_bits")} == dense_keys
    rtl.set_masks(model, {n: torch.rand((K, *pm.weight_shape)) < 0.5 for n, pm in rtl.masks_of(model).items()})
    x, routes = torch.randn(3, 5, 6), torch.tensor([3, 0, 2])
    with torch.no_grad(), rtl.routing(model, routes):
        ref, _ = model(x)
    rtl.save(model, tmp_path / "attn")
    torch.manual_seed(7)
    fresh = rtl.load(tmp_path / "attn", rtl.convert(AttentionNet(batch_first=True), K))
    with torch.no_grad(), rtl.routing(fresh, routes):
        torch.testing.assert_close(fresh(x)[0], ref)
    clone = copy.deepcopy(fresh)
    with torch.no_grad():
        torch.testing.assert_close(rtl.RoutedModel(clone)(x, routes=routes)[0], ref)


def test_rtl_attention_compiles_fullgraph() -> None:
    torch.manual_seed(8)
    model = rtl.convert(AttentionNet(batch_first=True), K)
    routed = rtl.RoutedModel(model)
    compiled = torch.compile(routed, fullgraph=True, backend="aot_eager")
    rtl.available_backends("cpu")  # backends load on first use, outside the compiled region
    for batch in (3, 4):
        x, routes = torch.randn(batch, 5, 6), torch.arange(batch) % K
        torch.testing.assert_close(compiled(x, routes=routes, need_weights=False)[0], routed(x, routes=routes, need_weights=False)[0])
