"""RoutedModel: one routing plan per forward shared by every layer; compile, inference mode, changing batches; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import rtl_kernels as rtl
import rtl_kernels.routing_plans.routes as routes_module
from rtl_kernels.routers import CentroidRouter, OracleRouter

K = 3


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v
        x = x + self.proj(att)
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


class TinyTransformer(nn.Module):
    """Tokens [B, T] -> class logits [B, C]: every Linear sees [B, T, C] (routes [B] broadcast over T)."""

    def __init__(self, vocab: int = 20, dim: int = 16, depth: int = 2, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.Sequential(*[Block(dim) for _ in range(depth)])
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.embed(tokens)).mean(dim=1))


def _model(seed: int = 0, depth: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    model = rtl.convert(TinyTransformer(depth=depth), K).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    rtl.set_masks(model, {n: torch.rand((K, *p.weight_shape), generator=gen) < 0.6 for n, p in rtl.masks_of(model).items()})
    return model


def _router() -> OracleRouter:
    # route by the first token of each sequence
    return OracleRouter([i % K for i in range(20)], key=lambda tokens: tokens[:, 0])


def _per_sample(model: nn.Module, tokens: torch.Tensor, routes: torch.Tensor) -> torch.Tensor:
    rows = []
    for b, r in enumerate(routes.tolist()):
        with rtl.routing(model, r):
            rows.append(model(tokens[b : b + 1]))
    return torch.cat(rows)


def test_plan_is_built_once_per_forward_and_reused_by_every_layer(monkeypatch) -> None:
    model = _model()
    routed = rtl.RoutedModel(model, _router())
    n_layers = len(rtl.models.rtl_layers(model))
    assert n_layers == 9
    calls = {"make_plan": 0, "argsort": 0}
    real_make_plan = routes_module.make_plan

    def counting_make_plan(*args, **kwargs):
        calls["make_plan"] += 1
        return real_make_plan(*args, **kwargs)

    class CountSorts(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in (torch.argsort, torch.Tensor.argsort, torch.sort, torch.Tensor.sort):
                calls["argsort"] += 1
            return func(*args, **(kwargs or {}))

    real_np_argsort = np.argsort

    def counting_np_argsort(*args, **kwargs):  # small CPU plans sort with numpy
        calls["argsort"] += 1
        return real_np_argsort(*args, **kwargs)

    monkeypatch.setattr(routes_module, "make_plan", counting_make_plan)
    monkeypatch.setattr(np, "argsort", counting_np_argsort)
    tokens = torch.randint(0, 20, (6, 5))
    with torch.no_grad(), CountSorts():
        out = routed(tokens)
    assert calls == {"make_plan": 1, "argsort": 1}  # one sort for 9 layers that each see 6 * 5 rows
    calls.update(make_plan=0, argsort=0)
    with torch.no_grad(), CountSorts(), rtl.routing(model, torch.tensor([0, 1, 2, 0, 1, 2])):
        model(tokens)
    assert calls == {"make_plan": 1, "argsort": 1}
    monkeypatch.undo()
    with torch.no_grad():
        torch.testing.assert_close(out, _per_sample(model, tokens, _router()(tokens)), rtol=1e-5, atol=1e-5)


def test_inference_mode_and_changing_batch_sizes() -> None:
    model = _model(1)
    routed = rtl.RoutedModel(model, _router())
    for batch in (1, 7, 3, 12):
        tokens = torch.randint(0, 20, (batch, 4))
        with torch.inference_mode():
            out = routed(tokens)
        assert out.shape == (batch, 4) and not out.requires_grad
        with torch.no_grad():
            torch.testing.assert_close(out, _per_sample(model, tokens, _router()(tokens)), rtol=1e-5, atol=1e-5)


def test_compile_fullgraph_with_changing_batch_sizes_and_inference_mode() -> None:
    model = _model(2, depth=1)
    x_train = torch.randint(0, 20, (30, 4))
    router = CentroidRouter().fit(x_train[:, :1].float(), x_train[:, 0] % K)  # learned router, compiled along
    routed = rtl.RoutedModel(model, lambda tokens: router(tokens[:, :1].float()))
    # aot_eager: the whole dynamo + AOTAutograd capture without Inductor's C++ build (test_compile.py covers Inductor)
    compiled = torch.compile(routed, fullgraph=True, dynamic=True, backend="aot_eager")
    rtl.available_backends("cpu")  # backends load on first use, outside the compiled region
    for batch in (5, 8, 3):
        tokens = torch.randint(0, 20, (batch, 4))
        with torch.no_grad():
            torch.testing.assert_close(compiled(tokens), routed(tokens), rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        tokens = torch.randint(0, 20, (6, 4))
        torch.testing.assert_close(compiled(tokens), routed(tokens), rtol=1e-5, atol=1e-5)


def test_compile_fullgraph_hf_conv1d_layer() -> None:
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(3)
    model = rtl.convert(nn.Sequential(Conv1D(12, 8), nn.GELU(), Conv1D(8, 12)), K)
    rtl.set_masks(model, {n: torch.rand(K, *p.weight_shape) < 0.5 for n, p in rtl.masks_of(model).items()})
    routed = rtl.RoutedModel(model)
    compiled = torch.compile(routed, fullgraph=True, backend="aot_eager")
    rtl.available_backends("cpu")  # backends load on first use, outside the compiled region
    for batch in (4, 6):
        x, routes = torch.randn(batch, 5, 8), torch.arange(batch) % K
        torch.testing.assert_close(compiled(x, routes=routes), routed(x, routes=routes), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_cuda_graph_replay_with_new_routes() -> None:
    model = _model(4).cuda()
    routed = rtl.RoutedModel(model)
    tokens = torch.randint(0, 20, (8, 4), device="cuda")
    routes = torch.zeros(8, dtype=torch.long, device="cuda")
    rtl.set_route_checks(False)  # the range check reads routes on the host, which a graph cannot capture
    try:
        with torch.no_grad():
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                routed(tokens, routes=routes)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = routed(tokens, routes=routes)
            new_routes = torch.tensor([2, 1, 0, 0, 1, 2, 2, 1], device="cuda")
            routes.copy_(new_routes)
            graph.replay()
            torch.testing.assert_close(out, routed(tokens, routes=new_routes))
    finally:
        rtl.set_route_checks(True)


# ----------------------------------------------------------------------------- bad input


def test_routes_for_a_batch_of_a_different_size() -> None:
    model = _model(5)
    routed = rtl.RoutedModel(model)
    tokens = torch.randint(0, 20, (4, 2))
    # 2 samples x 2 tokens would silently match 4 per-token routes if the batch were not checked
    with pytest.raises(ValueError, match=r"routes: expected one ticket id per sample of the first argument \(batch 4\), got shape \[2\]"):
        routed(tokens, routes=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="routes"):
        with rtl.routing(model, torch.tensor([0, 1, 2])):
            model(tokens)
    plan = rtl.plan_routes(torch.tensor([0, 1, 2]), K)
    with pytest.raises(ValueError, match="batch of a different size"):
        routed(tokens, routes=plan)


def test_router_returning_bad_ids_is_named() -> None:
    model = _model(6)
    tokens = torch.randint(0, 20, (3, 2))
    with pytest.raises(ValueError, match=r"router: returned ticket ids the model cannot use .*\[0, 3\)"):
        rtl.RoutedModel(model, lambda x: torch.tensor([0, 3, 1]))(tokens)
    with pytest.raises(ValueError, match=r"router: .*ids.*min -1"):
        rtl.RoutedModel(model, lambda x: torch.tensor([0, -1, 1]))(tokens)
    with pytest.raises(ValueError, match=r"router: expected one ticket id per sample .*batch 3"):
        rtl.RoutedModel(model, lambda x: torch.tensor([0, 1]))(tokens)
    with pytest.raises(TypeError, match=r"router: expected it to return integer ticket ids \[B\], got dtype torch.float32"):
        rtl.RoutedModel(model, lambda x: torch.zeros(3))(tokens)
    with pytest.raises(TypeError, match="router: expected it to return an integer tensor"):
        rtl.RoutedModel(model, lambda x: [0, 1, 2])(tokens)
    with pytest.raises(TypeError, match="router: expected a callable"):
        rtl.RoutedModel(model, "oracle")
    with pytest.raises(ValueError, match=r"routes: expected routes=\.\.\. because this RoutedModel has no router"):
        rtl.RoutedModel(model)(tokens)


def test_loading_a_save_with_another_number_of_tickets(tmp_path) -> None:
    model = _model(7)
    rtl.save(model, tmp_path / "k3")
    torch.manual_seed(0)
    other = rtl.convert(TinyTransformer(), K + 1)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=r"model: layer '[\w.]+' has 4 tickets, the save has 3"):
        rtl.load(tmp_path / "k3", other)
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())  # untouched


def test_routing_plan_built_for_other_k_is_rejected() -> None:
    model = _model(8)
    with pytest.raises(ValueError, match="RoutingPlan was built for 2 tickets, this layer has 3"):
        rtl.RoutedModel(model)(torch.randint(0, 20, (2, 3)), routes=rtl.plan_routes(torch.tensor([0, 1]), 2))
