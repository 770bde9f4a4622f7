"""Similarity score (Jaccard, global and per layer) and the collapse controller."""

import pytest
import torch

import rtl_kernels as rtl
from rtl_kernels.pipeline import CollapseController, collapse_point, similarity


def test_similarity_matches_definition():
    g = torch.Generator().manual_seed(0)
    masks = {"a": torch.rand(4, 6, 5, generator=g) < 0.5, "b": torch.rand(4, 9, generator=g) < 0.3}
    sim = similarity(masks)
    flat = torch.cat([m.reshape(4, -1) for m in masks.values()], 1)
    for i in range(4):
        for j in range(4):
            inter = (flat[i] & flat[j]).sum().item()
            union = (flat[i] | flat[j]).sum().item()
            assert sim["jaccard"][i, j].item() == pytest.approx(inter / union)
    for name, m in masks.items():
        torch.testing.assert_close(sim["per_layer"][name], rtl.jaccard(m))
    expected = [(sum(sim["jaccard"][i].tolist()) - 1.0) / 3 for i in range(4)]
    assert sim["score"].tolist() == pytest.approx(expected)
    assert sim["mean_score"] == pytest.approx(sum(expected) / 4)


def test_similarity_of_model_and_errors():
    model = rtl.convert(torch.nn.Sequential(torch.nn.Linear(3, 4)), 2)
    sim = similarity(model)
    assert sim["jaccard"].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    with pytest.raises(TypeError, match="masks"):
        similarity([1, 2])


def test_collapse_controller_and_point():
    ctl = CollapseController(threshold=1.0)
    sparsities = [0.2, 0.4, 0.6, 0.8]
    scores = [0.7, 0.6, 0.5, 0.1]
    fired = [ctl.observe(r, s, v) for r, (s, v) in enumerate(zip(sparsities, scores))]
    assert fired == [False, False, False, True]
    assert ctl.triggered["round"] == 3 and ctl.triggered["slope"] == pytest.approx(2.0)
    assert collapse_point([0.0, *sparsities], [1.0, *scores]) == 4
    with pytest.raises(ValueError, match="threshold"):
        CollapseController(threshold=0)
    with pytest.raises(ValueError, match="action"):
        CollapseController(threshold=1, action="explode")
