"""Routers: OracleRouter, CentroidRouter (given ids and k-means), LinearRouter; evaluation and plots."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import rtl_kernels as rtl
from rtl_kernels.routers import CentroidRouter, LinearRouter, OracleRouter, confusion_matrix, plot_confusion, routing_report


def _blobs(k: int = 3, per: int = 40, dim: int = 5, spread: float = 0.3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, dim, generator=gen) * 4
    ids = torch.arange(k).repeat_interleave(per)
    x = centers[ids] + spread * torch.randn(k * per, dim, generator=gen)
    perm = torch.randperm(k * per, generator=gen)
    return x[perm], ids[perm], centers


def test_lazy_import_exports_three_routers() -> None:
    assert rtl.routers.OracleRouter is OracleRouter
    assert {"OracleRouter", "CentroidRouter", "LinearRouter"} <= set(rtl.routers.__all__)


def test_oracle_mapping_key_and_context() -> None:
    router = OracleRouter({0: 1, 1: 1, 2: 0, 5: 2})
    assert router.num_tickets == 3
    labels = torch.tensor([5, 0, 2, 1])
    out = router(labels)
    assert out.dtype == torch.int64 and out.tolist() == [2, 1, 0, 1]
    x = torch.randn(4, 7)
    with router.given(labels):
        assert router(x).tolist() == [2, 1, 0, 1]
        with pytest.raises(ValueError, match="one label per sample"):
            router(torch.randn(3, 7))
    with pytest.raises(TypeError, match="x: expected integer labels"):
        router(x)  # no context, no key, float x
    keyed = OracleRouter([2, 2, 0, 1], key=lambda batch: batch["label"])
    assert keyed({"label": torch.tensor([3, 0])}).tolist() == [1, 2]
    with pytest.raises(ValueError, match=r"no ticket in the mapping for labels \[3, 4\]"):
        router(torch.tensor([3, 4, 0]))
    with pytest.raises(ValueError, match="labels in"):
        router(torch.tensor([9]))
    identity = OracleRouter(num_tickets=2)
    assert identity(torch.tensor([1, 0], dtype=torch.int32)).tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"labels: expected labels in \[0, 2\)"):
        identity(torch.tensor([2]))
    with pytest.raises(ValueError, match="mapping: expected tickets in"):
        OracleRouter({0: 3}, num_tickets=3)
    with pytest.raises(ValueError, match="mapping"):
        OracleRouter({0: -1})


def test_centroid_router_from_subset_ids_and_kmeans() -> None:
    x, ids, centers = _blobs()
    router = CentroidRouter().fit(x, ids)
    assert router.num_tickets == 3
    torch.testing.assert_close(router.centroids, torch.stack([x[ids == k].mean(0) for k in range(3)]))
    report = router.evaluate(x, ids)
    assert report["accuracy"] == 1.0 and report["confusion"].diagonal().tolist() == [40, 40, 40]
    out = router(centers)
    assert out.dtype == torch.int64 and out.tolist() == [0, 1, 2]
    pytest.importorskip("sklearn")
    km = CentroidRouter(3).fit(x)  # k-means: cluster j is ticket j; clusters must match the blobs up to relabelling
    pred = km(x)
    pairs = {(int(a), int(b)) for a, b in zip(ids, pred)}
    assert len(pairs) == 3 and len({b for _, b in pairs}) == 3


def test_centroid_router_feature_fn_cosine_and_errors() -> None:
    x, ids, _ = _blobs(k=2, dim=4, seed=1)
    images = x.reshape(-1, 1, 2, 2)
    router = CentroidRouter(2, feature_fn=lambda t: t.flatten(1) * 2.0, metric="cosine").fit(images, ids)
    assert router.centroids.shape == (2, 4)
    torch.testing.assert_close(router.centroids.norm(dim=1), torch.ones(2))
    assert router.evaluate(images, ids)["accuracy"] > 0.9
    with pytest.raises(ValueError, match="not fitted"):
        CentroidRouter(2)(x)
    with pytest.raises(ValueError, match="metric"):
        CentroidRouter(2, metric="manhattan")
    with pytest.raises(ValueError, match="subset_ids: expected one id per sample"):
        CentroidRouter().fit(x, ids[:-1])
    with pytest.raises(ValueError, match=r"tickets \[1\] have none"):
        CentroidRouter(3).fit(x, torch.where(ids == 1, 2, ids))
    with pytest.raises(ValueError, match="x: expected features of size 4"):
        CentroidRouter().fit(x, ids)(torch.randn(3, 5))


def test_centroid_router_needs_sklearn_only_for_kmeans(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.cluster", None)
    x, ids, _ = _blobs(k=2)
    with pytest.raises(ImportError, match="needs scikit-learn"):
        CentroidRouter(2).fit(x)
    assert CentroidRouter(2).fit(x, ids).evaluate(x, ids)["accuracy"] == 1.0


def test_centroid_router_state_dict_round_trip() -> None:
    x, ids, _ = _blobs()
    router = CentroidRouter().fit(x, ids)
    fresh = CentroidRouter()
    fresh.load_state_dict(router.state_dict())
    assert fresh.num_tickets == 3 and torch.equal(fresh(x), router(x))


def test_linear_router_learns_separable_subsets() -> None:
    x, ids, _ = _blobs(k=4, per=30, dim=6, spread=0.5, seed=2)
    router = LinearRouter(None, 4).fit(x, ids, epochs=60, lr=5e-2)
    assert router.in_features == 6 and router.history[-1] < router.history[0]
    report = router.evaluate(x, ids)
    assert report["accuracy"] > 0.95 and report["num_samples"] == 120
    assert router(x[:5]).dtype == torch.int64
    hidden = LinearRouter(6, 4, hidden=16).fit(x, ids, epochs=60, lr=5e-2, seed=1)
    assert hidden.evaluate(x, ids)["accuracy"] > 0.95
    fresh = LinearRouter(6, 4, hidden=16)
    fresh.load_state_dict(hidden.state_dict())
    assert torch.equal(fresh(x), hidden(x))
    # deterministic per seed
    again = LinearRouter(None, 4).fit(x, ids, epochs=60, lr=5e-2)
    assert torch.equal(again.gate.weight, router.gate.weight)


def test_linear_router_errors() -> None:
    x, ids, _ = _blobs(k=2)
    with pytest.raises(ValueError, match=r"not fitted|no in_features"):
        LinearRouter(None, 2)(x)
    with pytest.raises(ValueError, match="subset_ids: expected ids in \\[0, 2\\)"):
        LinearRouter(None, 2).fit(x, ids + 1)
    with pytest.raises(TypeError, match="subset_ids: expected integer"):
        LinearRouter(None, 2).fit(x, ids.float())
    with pytest.raises(ValueError, match="features: expected size 3"):
        LinearRouter(3, 2).fit(x, ids)
    with pytest.raises(ValueError, match="epochs"):
        LinearRouter(None, 2).fit(x, ids, epochs=0)
    with pytest.raises(ValueError, match="num_tickets"):
        LinearRouter(None, 0)


def test_routing_report_and_confusion() -> None:
    pred = torch.tensor([0, 1, 1, 2, 2, 0])
    true = torch.tensor([0, 1, 0, 2, 1, 0])
    conf = confusion_matrix(pred, true, 3)
    assert conf.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    rep = routing_report(pred, true, 3)
    assert rep["accuracy"] == pytest.approx(4 / 6)
    assert rep["per_ticket_accuracy"] == pytest.approx([2 / 3, 0.5, 1.0])
    with pytest.raises(ValueError, match="routes: expected ids in"):
        confusion_matrix(torch.tensor([3]), torch.tensor([0]), 3)


def test_plot_confusion_writes_a_figure(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    x, ids, _ = _blobs()
    router = CentroidRouter().fit(x, ids)
    fig = router.plot_confusion(x, ids, labels=["a", "b", "c"], path=tmp_path / "conf.png")
    assert (tmp_path / "conf.png").stat().st_size > 0
    assert fig.axes[0].get_xlabel() == "routed to ticket"
    with pytest.raises(ValueError, match="labels: expected 3"):
        plot_confusion(torch.eye(3), labels=["a"])


def test_routers_output_on_input_device_and_inside_routed_model() -> None:
    x, ids, _ = _blobs(k=2, dim=3)
    model = rtl.convert(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), 2)
    for router in (CentroidRouter().fit(x, ids), LinearRouter(3, 2).fit(x, ids, epochs=5)):
        routed = rtl.RoutedModel(model, router)
        y = routed(x[:7])
        assert y.shape == (7, 2)
        with rtl.routing(model, router(x[:7])):
            torch.testing.assert_close(model(x[:7]), y)
