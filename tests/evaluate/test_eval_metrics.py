"""Metrics, bootstrap CIs, ECE and decision-curve arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, logit
from scipy.stats import norm
from sklearn import metrics as skm

from immunoplex.evaluation.metrics import (
    auprc,
    auroc,
    balanced_accuracy,
    brier,
    compute_metrics,
    ece,
    log_loss,
    net_benefit,
    net_benefit_treat_all,
    sensitivity,
    specificity,
)
from immunoplex.evaluation.plots import decision_curve


def _binormal(n: int, d: float, seed: int, prevalence: float = 0.4):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(float)
    s = rng.normal(0, 1, n) + d * y
    return y, expit(s)  # monotone map keeps AUROC = Phi(d / sqrt 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random(150) < 0.35).astype(float)
    p = np.round(np.clip(0.35 + 0.3 * (y - 0.35) + rng.normal(0, 0.2, 150), 0, 1), 1)
    assert auroc(y, p)[0] == pytest.approx(skm.roc_auc_score(y, p))
    assert auprc(y, p)[0] == pytest.approx(skm.average_precision_score(y, p))
    assert brier(y, p)[0] == pytest.approx(skm.brier_score_loss(y, p))
    pred = p >= 0.5
    assert balanced_accuracy(y, p)[0] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert sensitivity(y, p)[0] == pytest.approx(skm.recall_score(y, pred))
    assert specificity(y, p)[0] == pytest.approx(skm.recall_score(1 - y, ~pred))
    q = np.clip(p, 0.01, 0.99)
    assert log_loss(y, q)[0] == pytest.approx(skm.log_loss(y, q))


def test_metrics_are_vectorised_over_rows() -> None:
    y, p = _binormal(80, 1.0, 3)
    ys, ps = np.vstack([y, y[::-1]]), np.vstack([p, p[::-1]])
    for fn in (auroc, auprc, brier, ece, log_loss):
        out = fn(ys, ps)
        assert out.shape == (2,)
        assert out[0] == pytest.approx(fn(y, p)[0])


def test_bootstrap_ci_contains_true_auroc_and_narrows_with_n() -> None:
    d = 1.0
    true_auc = norm.cdf(d / np.sqrt(2))
    widths, hits = {}, []
    for n in (100, 1000):
        for seed in range(10):
            y, p = _binormal(n, d, seed)
            est = compute_metrics(y, p, n_boot=300, seed=seed)["auroc"]
            assert est.ci_low < est.estimate < est.ci_high
            hits.append(est.ci_low <= true_auc <= est.ci_high)
            widths.setdefault(n, []).append(est.ci_high - est.ci_low)
    assert np.mean(hits) >= 0.85  # nominal 95%
    assert np.mean(widths[1000]) < 0.5 * np.mean(widths[100])  # ~ 1/sqrt(10)


def test_bootstrap_is_seeded_and_stratified() -> None:
    y, p = _binormal(60, 1.0, 0)
    a = compute_metrics(y, p, n_boot=200, seed=5)
    b = compute_metrics(y, p, n_boot=200, seed=5)
    assert a["auroc"] == b["auroc"]
    assert all(v.ci_low is None for v in compute_metrics(y, p, n_boot=0).values())


def test_one_class_gives_defined_metrics_only() -> None:
    y = np.ones(20)
    p = np.linspace(0.2, 0.9, 20)
    est = compute_metrics(y, p, n_boot=50)
    assert est["auroc"].estimate is None
    assert est["specificity"].estimate is None
    assert est["sensitivity"].estimate == pytest.approx(np.mean(p >= 0.5))
    assert est["brier"].estimate is not None and est["brier"].ci_low is not None


def test_ece_small_when_calibrated_large_when_overconfident() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.98, 20000)
    y = (rng.random(p.size) < p).astype(float)
    assert ece(y, p)[0] < 0.02
    over = expit(3 * logit(p))
    assert ece(y, over)[0] > 0.1


def test_ece_hand_computed() -> None:
    # two bins used: [0, 0.5) holds p=0.2 (y=0, 1), [0.5, 1] holds p=0.9, 1.0 (y=1, 1)
    y = np.array([0, 1, 1, 1.0])
    p = np.array([0.2, 0.2, 0.9, 1.0])
    expected = 0.5 * abs(0.5 - 0.2) + 0.5 * abs(1.0 - 0.95)
    assert ece(y, p, n_bins=2)[0] == pytest.approx(expected)


def test_decision_curve_treat_all_formula() -> None:
    y, p = _binormal(300, 1.0, 0)
    prev = y.mean()
    pt = np.linspace(0.05, 0.95, 19)
    expected = prev - (1 - prev) * pt / (1 - pt)
    np.testing.assert_allclose(net_benefit_treat_all(prev, pt), expected)
    np.testing.assert_allclose(net_benefit(y, np.ones_like(p), pt), expected)
    curves = decision_curve(y, {"m": p}, pt)
    np.testing.assert_allclose(curves["treat all"], expected)
    assert curves["treat none"] == [0.0] * pt.size
    # treating no one (p below every threshold) has zero net benefit
    np.testing.assert_allclose(net_benefit(y, np.zeros_like(p), pt), 0.0)
