"""nn.TransformerEncoderLayer / DecoderLayer / nn.Transformer convert into RTL layers with the same Parameters
and keys, compute what the original does (all-ones masks, train and eval) and route per sample in both layouts."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rtl_kernels as rtl
from rtl_kernels.nn import RTLLinear, RTLMultiheadAttention, RTLTransformerDecoderLayer, RTLTransformerEncoderLayer

K = 3
D, H, FF = 16, 4, 24


def dense_keys(model: nn.Module) -> list[str]:
    return [k for k in model.state_dict() if not k.endswith("mask_bits")]


def convert_keeping(model: nn.Module) -> nn.Module:
    keys, params = dense_keys(model), list(model.parameters())
    out = rtl.convert(model, K)
    assert dense_keys(out) == keys
    assert all(a is b for a, b in zip(params, out.parameters(), strict=True))
    return out


def random_masks(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    rtl.set_masks(model, {n: torch.rand(K, *p.weight_shape, generator=g) < 0.7 for n, p in rtl.masks_of(model).items()})


def key_padding(batch: int, length: int) -> torch.Tensor:
    pad = torch.zeros(batch, length, dtype=torch.bool)
    pad[0, -2:] = True  # right-padded, so the encoder's nested-tensor fast path applies in eval
    return pad


ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "GELU module": nn.GELU(), "function": torch.tanh}


# every activation, both norm placements and both layouts, each in train and eval mode
@pytest.mark.parametrize(
    "activation,norm_first,batch_first",
    [("relu", False, True), ("gelu", True, False), ("GELU module", False, False), ("function", True, True)],
)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_encoder_with_all_ones_masks_equals_the_original(activation, norm_first, batch_first, mode):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        D, H, FF, dropout=0.0, activation=ACTIVATIONS[activation], norm_first=norm_first, batch_first=batch_first
    )
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).train(mode == "train")
    b, t = 3, 6
    x = torch.randn(b, t, D) if batch_first else torch.randn(t, b, D)
    causal = nn.Transformer.generate_square_subsequent_mask(t)
    pad = key_padding(b, t)
    calls = [{}, {"mask": causal}, {"src_key_padding_mask": pad}, {"mask": causal, "src_key_padding_mask": pad}]
    with torch.no_grad():
        refs = [model(x, **kw) for kw in calls]
    converted = convert_keeping(model)
    assert all(isinstance(m, RTLTransformerEncoderLayer) for m in converted.layers)
    assert isinstance(converted.layers[0].self_attn, RTLMultiheadAttention) and isinstance(converted.layers[0].linear1, RTLLinear)
    routes = torch.tensor([0, 2, 1])
    with torch.no_grad(), rtl.routing(converted, routes):
        for kw, ref in zip(calls, refs, strict=True):
            out = converted(x, **kw)
            if "src_key_padding_mask" in kw and mode == "eval":
                # PyTorch's inference fast path runs padded positions as a nested tensor and returns them as 0;
                # the converted encoder computes them (as PyTorch does in training): compare real tokens only
                keep = ~kw["src_key_padding_mask"]
                keep = keep if batch_first else keep.T
                out, ref = out[keep], ref[keep]
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_single_encoder_layer_eval_fast_path_and_train_gradients_match():
    torch.manual_seed(1)
    dense = nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, batch_first=True)
    twin = nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, batch_first=True)
    twin.load_state_dict(dense.state_dict())
    x = torch.randn(2, 5, D)
    with torch.no_grad():
        ref_eval = dense.eval()(x)  # the fused fast path
    converted = convert_keeping(dense.train())
    assert isinstance(converted, RTLTransformerEncoderLayer)
    with torch.no_grad():
        torch.testing.assert_close(converted.eval()(x, routes=0), ref_eval, rtol=1e-5, atol=1e-5)
    converted.train()(x, routes=torch.tensor([1, 2])).square().sum().backward()
    twin(x).square().sum().backward()
    for (name, p), q in zip(converted.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize(
    "norm_first,batch_first,mode", [(False, False, "train"), (True, True, "eval"), (False, True, "eval"), (True, False, "train")]
)
def test_nn_transformer_with_masks_equals_the_original(norm_first, batch_first, mode):
    torch.manual_seed(2)
    model = nn.Transformer(D, H, 2, 2, FF, dropout=0.0, norm_first=norm_first, batch_first=batch_first, activation="gelu").train(
        mode == "train"
    )
    b, s, t = 3, 6, 4
    src = torch.randn(b, s, D) if batch_first else torch.randn(s, b, D)
    tgt = torch.randn(b, t, D) if batch_first else torch.randn(t, b, D)
    kw = {
        "tgt_mask": nn.Transformer.generate_square_subsequent_mask(t),
        "tgt_is_causal": True,
        "tgt_key_padding_mask": key_padding(b, t),
        "memory_key_padding_mask": key_padding(b, s),
        "memory_mask": torch.zeros(t, s),
    }
    with torch.no_grad():
        ref = model(src, tgt, **kw)
    converted = convert_keeping(model)
    assert all(isinstance(m, RTLTransformerDecoderLayer) for m in converted.decoder.layers)
    assert isinstance(converted.decoder.layers[0].multihead_attn, RTLMultiheadAttention)
    with torch.no_grad(), rtl.routing(converted, torch.tensor([2, 0, 1])):
        torch.testing.assert_close(converted(src, tgt, **kw), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("as_plan", [False, True])
def test_per_sample_routes_route_every_token_of_that_sample(batch_first, as_plan):
    """Routes [B] with random masks equal running each sample alone on its ticket, also sequence-first (batch = dim 1)."""
    torch.manual_seed(3)
    model = convert_keeping(nn.Transformer(D, H, 1, 1, FF, dropout=0.0, batch_first=batch_first).eval())
    random_masks(model, 4)
    b, s, t = 4, 5, 5  # s == t == B + 1 keeps the layouts apart only through the batch dim
    src = torch.randn(b, s, D) if batch_first else torch.randn(s, b, D)
    tgt = torch.randn(b, t, D) if batch_first else torch.randn(t, b, D)
    routes = torch.tensor([2, 0, 1, 2])
    given = rtl.plan_routes(routes, K) if as_plan else routes
    dim = 0 if batch_first else 1
    with torch.no_grad():
        with rtl.routing(model, given):
            out = model(src, tgt)
        alone = []
        for i in range(b):
            with rtl.routing(model, int(routes[i])):
                alone.append(model(src.narrow(dim, i, 1), tgt.narrow(dim, i, 1)))
    torch.testing.assert_close(out, torch.cat(alone, dim), rtol=1e-5, atol=1e-5)
    # and the masks matter: another ticket for sample 0 changes only sample 0
    with torch.no_grad(), rtl.routing(model, torch.tensor([0, 0, 1, 2])):
        other = model(src, tgt)
    assert not torch.allclose(other.narrow(dim, 0, 1), out.narrow(dim, 0, 1))
    torch.testing.assert_close(other.narrow(dim, 1, 3), out.narrow(dim, 1, 3))


def test_encoder_model_coverage_and_ignore():
    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)
            self.head = nn.Linear(32, 4)

        def forward(self, x):
            return self.head(self.encoder(x).mean(1))

    model = rtl.convert(Classifier(), K)
    assert model.rtl_conversion_summary.coverage > 0.9  # was 0.2%: every layer was skipped for its fast path
    ignored = rtl.convert(Classifier(), K, ignore=["encoder.layers.1", "encoder.layers.0.linear2"])
    assert type(ignored.encoder.layers[1]) is nn.TransformerEncoderLayer  # left dense, children skipped with the reason
    assert "fast path" in ignored.rtl_conversion_summary.skipped["encoder.layers.1.linear1"]
    assert type(ignored.encoder.layers[0].linear2) is nn.Linear and isinstance(ignored.encoder.layers[0].linear1, RTLLinear)
    x = torch.randn(2, 5, 32)
    with torch.no_grad(), rtl.routing(ignored, torch.tensor([0, 1])):
        ignored.eval()(x)


def test_converted_transformer_saves_and_loads(tmp_path):
    torch.manual_seed(5)
    model = convert_keeping(nn.TransformerEncoder(nn.TransformerEncoderLayer(D, H, FF, dropout=0.0), 1))
    random_masks(model, 6)
    rtl.save(model, tmp_path)
    torch.manual_seed(7)
    fresh = rtl.convert(nn.TransformerEncoder(nn.TransformerEncoderLayer(D, H, FF, dropout=0.0), 1), K)
    rtl.load(tmp_path, fresh)
    x, routes = torch.randn(4, 2, D), torch.tensor([1, 2])
    with torch.no_grad(), rtl.routing(model, routes):
        a = model.eval()(x)
    with torch.no_grad(), rtl.routing(fresh, routes):
        b = fresh.eval()(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert F.mse_loss(a, b) == 0
