"""convert on Hugging Face models built from their configs (no downloads): BERT, RoBERTa, GPT-2, ViT."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

import rtl_kernels as rtl
from rtl_kernels.models import rtl_layers
from rtl_kernels.nn.hf_conv1d import RTLConv1DLinear

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402

K = 3


def _count(model: torch.nn.Module, klass: type) -> int:
    return sum(isinstance(m, klass) for m in model.modules())


def _random_masks(model: torch.nn.Module, seed: int, density: float = 0.5) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.rand((K, *pm.weight_shape), generator=gen) < density for name, pm in rtl.masks_of(model).items()}


def _check_all_ones(model: torch.nn.Module, inputs: dict, expected_layers: int, out_key: str) -> torch.nn.Module:
    model.eval()
    with torch.no_grad():
        ref = getattr(model(**inputs), out_key)
    params_before = {name: p for name, p in model.named_parameters()}
    model = rtl.convert(model, K)
    summary = model.rtl_conversion_summary
    assert len(summary.converted) == expected_layers
    assert summary.covered_params > 0 and summary.coverage > 0.5
    # the very same Parameter objects under the very same names
    assert {name: p for name, p in model.named_parameters()}.keys() == params_before.keys()
    assert all(p is params_before[name] for name, p in model.named_parameters())
    batch = next(iter(inputs.values())).shape[0]
    with torch.no_grad(), rtl.routing(model, torch.arange(batch) % K):
        out = getattr(model(**inputs), out_key)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    return model


def _per_ticket_reference(model: torch.nn.Module, inputs: dict, routes: torch.Tensor, out_key: str) -> torch.Tensor:
    """Row b of the output computed by a dense copy with ticket routes[b]'s masks baked in."""
    rows = []
    for b, ticket in enumerate(routes.tolist()):
        dense = copy.deepcopy(model)
        for name, layer in list(dense.named_modules()):
            if isinstance(layer, rtl.nn.RTLLayer):
                parent_name, _, child = name.rpartition(".")
                parent = dense.get_submodule(parent_name)
                setattr(parent, child, layer.to_dense(ticket))
        one = {k: v[b : b + 1] for k, v in inputs.items()}
        with torch.no_grad():
            rows.append(getattr(dense(**one), out_key))
    return torch.cat(rows)


def test_bert_all_ones_and_routed_masks() -> None:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, max_position_embeddings=32
    )
    model = BertModel(cfg)
    linear_count = _count(model, torch.nn.Linear)
    inputs = {"input_ids": torch.randint(0, 64, (4, 9)), "attention_mask": torch.ones(4, 9, dtype=torch.long)}
    model = _check_all_ones(model, inputs, linear_count, "last_hidden_state")
    assert _count(model, torch.nn.Linear) == 0
    rtl.set_masks(model, _random_masks(model, 1))
    routes = torch.tensor([2, 0, 1, 2])
    with torch.no_grad(), rtl.routing(model, routes):
        out = model(**inputs).last_hidden_state
    torch.testing.assert_close(out, _per_ticket_reference(model, inputs, routes, "last_hidden_state"), rtol=1e-4, atol=1e-4)


def test_roberta_all_ones() -> None:
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(1)
    cfg = RobertaConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=40,
        num_labels=3,
    )
    model = RobertaForSequenceClassification(cfg)
    inputs = {"input_ids": torch.randint(3, 64, (3, 7))}
    _check_all_ones(model, inputs, _count(model, torch.nn.Linear), "logits")


def test_vit_all_ones() -> None:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(2)
    cfg = ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        num_labels=5,
    )
    model = ViTForImageClassification(cfg)
    expected = _count(model, torch.nn.Linear) + _count(model, torch.nn.Conv2d)  # the patch embedding is a Conv2d
    model = _check_all_ones(model, {"pixel_values": torch.randn(3, 3, 16, 16)}, expected, "logits")
    assert any(isinstance(m, rtl.nn.RTLConv2d) for m in model.modules())


def _gpt2(seed: int = 3):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg)


def test_gpt2_conv1d_and_tied_head() -> None:
    model = _gpt2()
    n_conv1d = _count(model, Conv1D)
    assert n_conv1d == 8
    wte = model.transformer.wte.weight
    c_attn_weight = model.transformer.h[0].attn.c_attn.weight
    inputs = {"input_ids": torch.randint(0, 64, (3, 8))}
    model = _check_all_ones(model, inputs, n_conv1d + 1, "logits")  # + lm_head (nn.Linear)
    summary = model.rtl_conversion_summary
    layer = model.transformer.h[0].attn.c_attn
    assert isinstance(layer, RTLConv1DLinear) and layer.weight is c_attn_weight
    assert layer.get_masks().shape == (K, 32, 96)  # masks over the Conv1D weight's own [in, out] shape
    assert model.lm_head.weight is wte and model.transformer.wte.weight is wte  # still tied
    assert "lm_head" in summary.tied and "transformer.wte.weight" in summary.tied["lm_head"]
    assert summary.layer_types["transformer.h.0.attn.c_attn"] == "RTLConv1DLinear"
    assert summary.covered_params == sum(p.numel() for p in {id(m.weight): m.weight for m in rtl_layers(model)}.values())


def test_gpt2_routed_masks_match_dense_per_ticket() -> None:
    model = rtl.convert(_gpt2(4).eval(), K)
    rtl.set_masks(model, _random_masks(model, 5))
    inputs = {"input_ids": torch.randint(0, 64, (4, 6))}
    routes = torch.tensor([1, 1, 0, 2])
    with torch.no_grad(), rtl.routing(model, routes):
        out = model(**inputs).logits
    torch.testing.assert_close(out, _per_ticket_reference(model, inputs, routes, "logits"), rtol=1e-4, atol=1e-4)


def test_conv1d_layer_matches_masked_addmm_and_grads() -> None:
    torch.manual_seed(6)
    dense = Conv1D(12, 10)  # nf=12 out, nx=10 in: weight [10, 12]
    torch.nn.init.normal_(dense.bias)
    layer = RTLConv1DLinear.from_dense(dense, K)
    masks = torch.rand(K, 10, 12) < 0.6
    layer.set_masks(masks)
    x = torch.randn(5, 4, 10, dtype=torch.float64)
    layer.double()
    routes = torch.tensor([0, 2, 1, 2, 0])
    x.requires_grad_(True)
    y = layer(x, routes)
    w = layer.weight.detach()
    ref = torch.stack([x[b].detach() @ (w * masks[r]) + layer.bias.detach() for b, r in enumerate(routes.tolist())])
    torch.testing.assert_close(y.detach(), ref)
    dy = torch.randn_like(y)
    y.backward(dy)
    dw = sum(masks[r] * (x[b].detach().T @ dy[b]) for b, r in enumerate(routes.tolist()))
    torch.testing.assert_close(layer.weight.grad, dw)
    dx = torch.stack([dy[b] @ (w * masks[r]).T for b, r in enumerate(routes.tolist())])
    torch.testing.assert_close(x.grad, dx)
    # a mask change after a forward is seen by the next forward (cache invalidated)
    layer.set_masks(torch.zeros_like(masks))
    torch.testing.assert_close(layer(x.detach(), routes), layer.bias.detach().expand(5, 4, 12))
    # to_dense gives a transformers Conv1D with the ticket baked in
    back = layer.to_dense(1)
    assert isinstance(back, Conv1D) and torch.count_nonzero(back.weight) == 0


def test_conv1d_layer_sees_mask_writes_that_bypass_the_version_counter() -> None:
    """Pruning through ``.data`` (or in inference mode) does not bump ``_version``: the next forward must still use it."""
    torch.manual_seed(7)
    layer = RTLConv1DLinear.from_dense(Conv1D(6, 4), K)
    x = torch.randn(3, 4)
    routes = torch.tensor([0, 1, 2])
    layer(x, routes)  # fills the transposed-mask cache
    masks = torch.rand(K, 4, 6) < 0.5
    version = layer.mask_bits._version
    layer.mask_bits.data.copy_(rtl.pack_masks(masks).bits)
    assert layer.mask_bits._version == version  # the write is invisible to a version-keyed cache
    w, b = layer.weight.detach(), layer.bias.detach()
    ref = torch.stack([x[i] @ (w * masks[r]) + b for i, r in enumerate(routes.tolist())])
    torch.testing.assert_close(layer(x, routes).detach(), ref)
    with torch.inference_mode():
        layer.mask_bits.data.zero_()
        torch.testing.assert_close(layer(x, routes), b.expand(3, 6))


def test_gpt2_save_load_round_trip(tmp_path) -> None:
    model = rtl.convert(_gpt2(7).eval(), K)
    masks = _random_masks(model, 8)
    rtl.set_masks(model, masks)
    inputs = {"input_ids": torch.randint(0, 64, (3, 5))}
    routes = torch.tensor([0, 1, 2])
    with torch.no_grad(), rtl.routing(model, routes):
        ref = model(**inputs).logits
    rtl.save(model, tmp_path / "gpt2")
    fresh = rtl.convert(_gpt2(99).eval(), K)
    rtl.load(tmp_path / "gpt2", fresh)
    assert fresh.lm_head.weight is fresh.transformer.wte.weight
    for name, m in masks.items():
        assert torch.equal(rtl.masks_of(fresh)[name].unpack(), m)
    with torch.no_grad(), rtl.routing(fresh, routes):
        torch.testing.assert_close(fresh(**inputs).logits, ref)


def test_conv1d_excluded_when_linear_not_targeted() -> None:
    model = _gpt2(9)
    with pytest.warns(UserWarning, match="no module matched"):
        rtl.convert(model, K, targets=(torch.nn.Conv2d,))
    assert _count(model, Conv1D) == 8
    model = rtl.convert(model, K, targets=(Conv1D,))
    assert _count(model, Conv1D) == 0 and isinstance(model.lm_head, torch.nn.Linear)


def test_importing_rtl_kernels_does_not_import_transformers() -> None:
    code = (
        "import sys, torch, rtl_kernels as rtl\n"
        "m = rtl.convert(torch.nn.Sequential(torch.nn.Linear(4, 4)), 2)\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
