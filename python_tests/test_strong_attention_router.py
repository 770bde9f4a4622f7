"""scale_qk_ (SLTH query/key scaling) on every attention layout, and EntropyRouter (SupSup task inference)."""

import pytest
import torch
from torch import nn

import rtl_kernels as rtl
from rtl_kernels.init.seeded import spec_of


def test_scale_qk_torch_mha_packed_and_separate():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4)
    w = mha.in_proj_weight.detach().clone()
    rtl.init.scale_qk_(mha)
    f = 4**0.25
    assert torch.allclose(mha.in_proj_weight[:32], w[:32] * f) and torch.equal(mha.in_proj_weight[32:], w[32:])
    sep = nn.MultiheadAttention(16, 2, kdim=8, vdim=8)
    q, k, v = (sep.q_proj_weight.detach().clone(), sep.k_proj_weight.detach().clone(), sep.v_proj_weight.detach().clone())
    rtl.init.scale_qk_(sep, factor=2.0)
    assert torch.equal(sep.q_proj_weight, q * 2) and torch.equal(sep.k_proj_weight, k * 2) and torch.equal(sep.v_proj_weight, v)


def test_scale_qk_seeded_rtl_mha_stays_seeded_and_round_trips(tmp_path):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn = nn.MultiheadAttention(16, 4, batch_first=True)

        def forward(self, x):
            return self.self_attn(x, x, x)[0]

    def build():
        torch.manual_seed(0)
        return rtl.convert(nn.Sequential(nn.Linear(16, 16), Block()), 2)

    model = rtl.init.seeded_(build(), 11, dist="uniform")
    attn = model[1].self_attn
    assert isinstance(attn, rtl.nn.RTLMultiheadAttention)
    base = attn.in_proj_weight.detach().clone()
    rtl.init.scale_qk_(model)
    f = 4**0.25
    assert spec_of(attn) is not None and spec_of(attn).scales == (f, f, 1.0)
    assert torch.equal(attn.in_proj_weight[:32], (base[:32] * torch.tensor(f, dtype=torch.float32)))
    assert torch.equal(attn.in_proj_weight[32:], base[32:])
    rtl.save(model, tmp_path)
    fresh = rtl.load(tmp_path, build())
    assert torch.equal(fresh[1].self_attn.in_proj_weight, attn.in_proj_weight) and spec_of(fresh[1].self_attn) is not None


def test_scale_qk_hugging_face_linear_and_conv1d():
    transformers = pytest.importorskip("transformers")
    bert = transformers.BertModel(
        transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=50)
    )
    sa = bert.encoder.layer[0].attention.self
    q, v = sa.query.weight.detach().clone(), sa.value.weight.detach().clone()
    rtl.init.scale_qk_(bert)
    assert torch.allclose(sa.query.weight, q * 8**0.25) and torch.equal(sa.value.weight, v)

    cfg = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=50, n_positions=16)
    gpt = rtl.convert(transformers.GPT2Model(cfg), 2)
    rtl.init.seeded_(gpt, 4)
    c_attn = gpt.h[0].attn.c_attn
    w = c_attn.weight.detach().clone()  # [in, 3 * out]
    rtl.init.scale_qk_(gpt)
    c = (2 / 32) ** 0.5  # Kaiming std over the fan-in (Conv1D weights are [in, out])
    assert spec_of(c_attn).axis == 1 and spec_of(c_attn).scales == pytest.approx((c * 8**0.25, c * 8**0.25, c))
    assert torch.allclose(c_attn.weight[:, :64], w[:, :64] * 8**0.25) and torch.equal(c_attn.weight[:, 64:], w[:, 64:])


def test_scale_qk_unknown_layout_is_named():
    class MyAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.wq, self.wk, self.wv = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    model = nn.Sequential(nn.MultiheadAttention(4, 1), MyAttention())
    before = model[0].in_proj_weight.detach().clone()
    with pytest.raises(ValueError, match=r"1 \(MyAttention; projections \['wq: Linear'"):
        rtl.init.scale_qk_(model)
    assert torch.equal(model[0].in_proj_weight, before)  # nothing scaled before the error
    with pytest.raises(ValueError, match="at least one attention"):
        rtl.init.scale_qk_(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="factor"):
        rtl.init.scale_qk_(nn.MultiheadAttention(4, 1), factor=0.0)


def _router_model():
    torch.manual_seed(2)
    model = rtl.convert(nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 4)), 3)
    rtl.init.seeded_(model, 8)
    g = torch.Generator().manual_seed(3)
    for m in (model[0], model[2]):
        m.set_masks(torch.rand(3, *m.weight.shape, generator=g) > 0.5)
    return model


def test_entropy_router_exact_is_argmin_entropy():
    model = _router_model()
    x = torch.randn(9, 6)
    router = rtl.routers.EntropyRouter(model)
    h = torch.stack([torch.special.entr(torch.softmax(model[2](torch.relu(model[0](x, k)), k), -1)).sum(-1) for k in range(3)], 1)
    assert torch.equal(router(x), h.argmin(1)) and torch.allclose(router.entropies(x), h, atol=1e-5)


def test_entropy_router_errors_and_state():
    with pytest.raises(ValueError, match="method"):
        rtl.routers.EntropyRouter(_router_model(), method="binary")
    conv = rtl.convert(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2)), 2)
    with pytest.raises(ValueError, match="one_shot"):
        rtl.routers.EntropyRouter(conv, method="one_shot")
    r = rtl.routers.EntropyRouter(_router_model(), method="one_shot")
    tensors, config = r.router_state()
    assert tensors == {} and rtl.routers.EntropyRouter.from_router_state(tensors, config, model=_router_model()).method == "one_shot"
    with pytest.raises(ValueError, match="model"):
        rtl.routers.EntropyRouter.from_router_state(tensors, config)
