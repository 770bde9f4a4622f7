"""Metrics against scikit-learn and closed forms."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rtl_kernels.pipeline import binary_scores, classification_report, one_vs_rest, psnr, si_snr, si_snr_improvement

sk_metrics = pytest.importorskip("sklearn.metrics")


@given(st.integers(0, 10_000))
def test_classification_report_matches_sklearn(seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 5, (60,), generator=g)
    p = torch.where(torch.rand(60, generator=g) < 0.6, y, torch.randint(0, 5, (60,), generator=g))
    rep = classification_report(p, y, 5)
    assert rep["balanced_accuracy"] == pytest.approx(sk_metrics.balanced_accuracy_score(y, p))
    labels = sorted(set(y.tolist()))
    recall = sk_metrics.recall_score(y, p, labels=labels, average=None, zero_division=0)
    precision = sk_metrics.precision_score(y, p, labels=list(range(5)), average=None, zero_division=0)
    assert [rep["recall"][c] for c in labels] == pytest.approx(list(recall))
    assert rep["precision"] == pytest.approx(list(precision))


def test_binary_and_one_vs_rest():
    s = binary_scores(torch.tensor([1, 1, 0, 0, 1]), torch.tensor([1, 0, 0, 0, 1]))
    assert s["recall"] == 1.0 and s["tnr"] == pytest.approx(2 / 3) and s["precision"] == pytest.approx(2 / 3)
    assert s["balanced_accuracy"] == pytest.approx((1 + 2 / 3) / 2)
    ids = torch.tensor([0, 0, 1, 1])
    preds = [torch.tensor([0, 1, 2, 3]), torch.tensor([2, 3, 2, 3])]
    out = one_vs_rest(preds, ids, [[0, 1], [2, 3]])
    assert out["per_ticket"][0]["balanced_accuracy"] == 1.0
    assert out["per_ticket"][1]["recall"] == 1.0 and out["per_ticket"][1]["tnr"] == 0.0


def test_psnr_and_si_snr():
    x = torch.zeros(10)
    assert psnr(x + 0.1, x) == pytest.approx(20.0)
    assert psnr(x, x) == math.inf
    ref = torch.randn(3, 200, generator=torch.Generator().manual_seed(0))
    noise = 0.1 * torch.randn(3, 200, generator=torch.Generator().manual_seed(1))
    est = ref + noise
    torch.testing.assert_close(si_snr(5.0 * est, ref), si_snr(est, ref))
    assert (si_snr(ref, ref) > 60).all()
    noisy = ref + 3 * noise
    assert (si_snr_improvement(est, noisy, ref) > 5).all()
    with pytest.raises(ValueError, match="shape"):
        si_snr(est, ref[:, :10])
