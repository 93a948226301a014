"""DeLong's test (fast algorithm) and the paired bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from immunoplex.errors import ConfigError
from immunoplex.evaluation.compare import (
    delong_auc_ci,
    delong_covariance,
    delong_test,
    paired_bootstrap,
)
from immunoplex.evaluation.metrics import auroc, bootstrap_replicates


def _pair(n: int, seed: int, d_a: float = 1.2, d_b: float = 0.4, rho: float = 0.5):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(float)
    shared = rng.normal(0, 1, n)
    a = d_a * y + np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.normal(0, 1, n)
    b = d_b * y + np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.normal(0, 1, n)
    return y, a, b


def _brute_force_delong(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """O(m n) DeLong covariance from the pairwise kernel, as in DeLong et al. (1988)."""
    v10, v01 = [], []
    for s in scores:
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    m, n = len(v10[0]), len(v01[0])
    return np.cov(np.array(v10)) / m + np.cov(np.array(v01)) / n


def test_fast_delong_matches_pairwise_definition_with_ties() -> None:
    y, a, b = _pair(120, 0)
    a, b = np.round(a, 1), np.round(b, 1)  # ties
    aucs, cov = delong_covariance(y, np.vstack([a, b]))
    np.testing.assert_allclose(cov, _brute_force_delong(y, np.vstack([a, b])), rtol=1e-10)
    assert aucs[0] == pytest.approx(auroc(y, a)[0])


def test_identical_predictors_give_z0_p1() -> None:
    y, a, _ = _pair(100, 1)
    res = delong_test(y, a, a)
    assert res.z == 0.0
    assert res.p_value == 1.0
    assert res.difference == 0.0
    # a strictly monotone transform has the same ROC curve
    assert delong_test(y, a, np.exp(a)).p_value == 1.0
    boot = paired_bootstrap(y, a, a, n_boot=100)
    assert boot["auroc"]["p_value"] == 1.0


def test_strongly_different_predictors_give_small_p() -> None:
    y, a, b = _pair(400, 2, d_a=2.0, d_b=0.0)
    res = delong_test(y, a, b)
    assert res.difference > 0.2
    assert res.p_value < 1e-6
    assert res.ci_low > 0
    boot = paired_bootstrap(y, a, b, n_boot=500, seed=0)
    assert boot["auroc"]["ci_low"] > 0
    assert boot["auroc"]["p_value"] < 0.01
    assert boot["auroc"]["difference"] == pytest.approx(res.difference)


def test_delong_variance_agrees_with_bootstrap() -> None:
    ratios = []
    for seed in range(3):
        y, a, b = _pair(300, seed)
        _, cov = delong_covariance(y, np.vstack([a, b]))
        reps = bootstrap_replicates(y, a, auroc, n_boot=2000, seed=seed)
        ratios.append(cov[0, 0] / np.var(reps, ddof=1))
        diff_var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
        boot = paired_bootstrap(y, a, b, n_boot=2000, seed=seed)
        ratios.append(diff_var / boot["auroc"]["se"] ** 2)
    assert np.all(np.abs(np.array(ratios) - 1) < 0.2), ratios


def test_delong_ci_and_errors() -> None:
    y, a, _ = _pair(200, 4)
    ci = delong_auc_ci(y, a)
    assert ci["ci_low"] < ci["auroc"] < ci["ci_high"]
    with pytest.raises(ConfigError, match="at least two responders"):
        delong_test(np.array([1, 0, 0, 0.0]), np.arange(4.0), np.arange(4.0))
