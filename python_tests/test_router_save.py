"""Routers saved as safetensors + JSON (no pickle), alone and with rtl.save of a RoutedModel; readable save files."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from torch import nn

import rtl_kernels as rtl
from rtl_kernels.routers import CentroidRouter, EntropyRouter, LinearRouter, OracleRouter, load_router, save_router

K = 3


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = rtl.convert(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)), K).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    rtl.set_masks(model, {n: torch.rand((K, *p.weight_shape), generator=gen) < 0.5 for n, p in rtl.masks_of(model).items()})
    return model


def _data(n: int = 60, d: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    ids = torch.arange(n) % K
    # far from zero mean and unit scale, so a lost standardisation would change the routes
    x = torch.randn(n, d, generator=gen) * 5 + 20 + ids.unsqueeze(1).float() * 3
    return x, ids


def _routers() -> dict[str, object]:
    x, ids = _data()
    return {
        "centroid": CentroidRouter().fit(x, ids),
        "centroid_cosine": CentroidRouter(metric="cosine").fit(x - 20, ids),
        "linear": LinearRouter(None, K).fit(x, ids, epochs=20),
        "linear_hidden": LinearRouter(6, K, hidden=5).fit(x, ids, epochs=20),
        "oracle_mapping": OracleRouter({0: 2, 4: 0, 7: 1}, key=None),
        "oracle_identity": OracleRouter(num_tickets=K),
    }


@pytest.mark.parametrize("name", list(_routers()))
def test_router_round_trip_routes_the_same(tmp_path, name: str) -> None:
    router = _routers()[name]
    save_router(router, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["router.json", "router.safetensors"]
    json.loads((tmp_path / "router.json").read_text())  # plain JSON, no pickle anywhere
    loaded = load_router(tmp_path)
    assert type(loaded) is type(router) and loaded.num_tickets == router.num_tickets
    if name.startswith("oracle"):
        labels = torch.tensor([0, 4, 7, 7]) if name == "oracle_mapping" else torch.tensor([2, 0, 1])
        assert torch.equal(loaded(labels), router(labels))
        with pytest.raises(ValueError, match="labels"):
            loaded(torch.tensor([1]) if name == "oracle_mapping" else torch.tensor([K]))
        return
    x = _data(200)[0] + torch.randn(200, 6) * 4
    assert torch.equal(loaded(x), router(x))
    if name.startswith("linear"):
        torch.testing.assert_close(loaded.mean, router.mean)
        torch.testing.assert_close(loaded.std, router.std)
        assert loaded.is_fitted and loaded.history == router.history


def test_entropy_router_needs_the_model_back() -> None:
    model = _model()
    router = EntropyRouter(model)
    tensors, config = router.router_state()
    with pytest.raises(ValueError, match="model: an EntropyRouter routes by running the model"):
        EntropyRouter.from_router_state(tensors, config)
    x = torch.randn(9, 6)
    assert torch.equal(EntropyRouter.from_router_state(tensors, config, model=model)(x), router(x))


def test_functions_are_asked_for_again(tmp_path) -> None:
    x, ids = _data()
    fn = lambda t: t[:, :3]  # noqa: E731
    save_router(CentroidRouter(feature_fn=fn).fit(x, ids), tmp_path / "c")
    with pytest.raises(ValueError, match="feature_fn: the saved CentroidRouter routed on feature_fn"):
        load_router(tmp_path / "c")
    assert torch.equal(load_router(tmp_path / "c", feature_fn=fn)(x), CentroidRouter(feature_fn=fn).fit(x, ids)(x))
    save_router(OracleRouter([1, 0, 2], key=lambda t: t[:, 0]), tmp_path / "o")
    with pytest.raises(ValueError, match="key: the saved OracleRouter took labels from key"):
        load_router(tmp_path / "o")
    assert load_router(tmp_path / "o", key=lambda t: t[:, 0])(torch.tensor([[2, 9], [0, 9]])).tolist() == [2, 1]


def test_no_router_and_broken_router_files(tmp_path) -> None:
    assert load_router(tmp_path) is None
    save_router(CentroidRouter().fit(*_data()), tmp_path)
    (tmp_path / "router.json").write_text("{not json")
    with pytest.raises(rtl.LoadError, match=r"router\.json is not valid JSON"):
        load_router(tmp_path)
    (tmp_path / "router.json").write_text(json.dumps({"format": "rtl_kernels.router", "class": "Nope", "config": {}}))
    with pytest.raises(rtl.LoadError, match="class 'Nope'"):
        load_router(tmp_path)
    with pytest.raises(TypeError, match="router: expected a router with router_state"):
        save_router(lambda x: x, tmp_path)


def test_save_of_a_routed_model_keeps_its_router(tmp_path) -> None:
    model = _model()
    x, ids = _data()
    routed = rtl.RoutedModel(model, LinearRouter(None, K).fit(x, ids, epochs=20))
    rtl.save(routed, tmp_path)
    assert {"router.json", "router.safetensors", "weights.safetensors"} <= set(os.listdir(tmp_path))
    # the weights are those of the inner model: a plain model loads the same save
    plain = rtl.load(tmp_path, rtl.convert(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)), K))
    fresh = rtl.RoutedModel(rtl.convert(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)), K))
    assert fresh.router is None
    rtl.load(tmp_path, fresh)
    assert isinstance(fresh.router, LinearRouter)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), routed(x))
        torch.testing.assert_close(rtl.RoutedModel(plain)(x, routes=routed.route(x)), routed(x))
    # a routed model whose router has a feature function gets it back from its current router
    fn = lambda t: t * 2  # noqa: E731
    rtl.save(rtl.RoutedModel(model, CentroidRouter(feature_fn=fn).fit(x, ids)), tmp_path / "fn")
    again = rtl.RoutedModel(_model(5), CentroidRouter(feature_fn=fn))
    rtl.load(tmp_path / "fn", again)
    assert again.router.feature_fn is fn and torch.equal(again.route(x), CentroidRouter(feature_fn=fn).fit(x, ids)(x))


def test_saved_files_are_readable_by_others_under_the_usual_umask(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        routed = rtl.RoutedModel(_model(), CentroidRouter().fit(*_data()))
        rtl.save(routed, tmp_path)
    finally:
        os.umask(old)
    for name in os.listdir(tmp_path):
        mode = stat.S_IMODE(os.stat(tmp_path / name).st_mode)
        assert mode == 0o644, (name, oct(mode))
