"""Prior-shift correction, temperature scaling and split-conformal prediction sets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.special import expit

from immunoplex.errors import ConfigError
from immunoplex.evaluation.calibration import (
    Calibration,
    ConformalPredictor,
    apply_temperature,
    conformal_summary,
    coverage,
    fit_calibration,
    fit_temperature,
    nll,
    set_size,
)
from immunoplex.evaluation.metrics import ece


def _logits(n: int, seed: int, scale: float = 1.0):
    """True logits z with y ~ Bernoulli(sigmoid(z)); the model reports scale * z."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, n)
    y = (rng.random(n) < expit(z)).astype(np.int64)
    return scale * z, y


@pytest.mark.parametrize("true_t", [0.5, 3.0])
def test_temperature_recovered_and_improves_nll_and_ece(true_t: float) -> None:
    logits, y = _logits(20000, 0, scale=true_t)
    t = fit_temperature(logits, y)
    assert t == pytest.approx(true_t, rel=0.1)
    before, after = expit(logits), apply_temperature(logits, t)
    assert nll(after, y) < nll(before, y)
    assert ece(y, after)[0] < ece(y, before)[0]
    assert ece(y, after)[0] < 0.02


def test_temperature_ignores_unlabelled_and_handles_multiclass() -> None:
    logits, y = _logits(5000, 1, scale=2.0)
    y_u = y.copy()
    y_u[:100] = -1
    t = fit_temperature(logits, y_u)
    assert t == pytest.approx(fit_temperature(logits[100:], y[100:]), rel=1e-6)
    two_class = np.stack([np.zeros_like(logits), logits], axis=1)  # softmax == sigmoid
    assert fit_temperature(two_class, y) == pytest.approx(fit_temperature(logits, y), rel=1e-4)
    np.testing.assert_allclose(apply_temperature(two_class, t)[:, 1], apply_temperature(logits, t))
    with pytest.raises(ConfigError, match="both classes"):
        fit_temperature(logits[:10], np.ones(10))
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        apply_temperature(logits, 0.0)


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_conformal_coverage_near_target_over_seeds(alpha: float) -> None:
    covs, sizes = [], []
    for seed in range(20):
        logits, y = _logits(2500, seed)
        p = expit(logits)
        cp = ConformalPredictor(alpha=alpha).fit(p[:500], y[:500])
        sets = cp.predict_sets(p[500:])
        covs.append(coverage(sets, y[500:]))
        sizes.append(set_size(sets).mean())
    assert abs(np.mean(covs) - (1 - alpha)) < 0.02
    assert 0.5 < np.mean(sizes) < 2.0
    assert min(covs) > 1 - alpha - 0.06


def test_conformal_sets_sensible() -> None:
    logits, y = _logits(3000, 0)
    p = expit(logits)
    cp = ConformalPredictor(alpha=0.1).fit(p[:1000], y[:1000])
    sets = np.array(cp.predict_sets(p[1000:]))
    # confident predictions are singletons of the predicted class; more uncertain ones larger
    sure = p[1000:] > 0.99
    assert set(sets[sure]) == {"responder"}
    assert set(cp.predict_sets(np.array([0.0, 1.0]))) <= {"non-responder", "responder"}
    # a tiny alpha includes both labels for uncertain cases
    wide = ConformalPredictor(alpha=0.01).fit(p[:1000], y[:1000])
    assert wide.predict_sets(np.array([0.5])) == ["both"]
    assert set_size(wide.predict_sets(p[1000:])).mean() > set_size(sets.tolist()).mean()


def test_conformal_empty_set_and_finite_sample_quantile() -> None:
    # calibration scores 1 - p(true) all 0.1 -> threshold 0.1; p=0.5 fits neither class
    cp = ConformalPredictor(alpha=0.5).fit(np.array([0.9, 0.9, 0.1, 0.1]), np.array([1, 1, 0, 0]))
    assert cp.threshold == pytest.approx(0.1)
    assert cp.predict_sets(np.array([0.5])) == ["none"]
    # n=4, alpha=0.1: ceil(5 * 0.9) = 5 > 4 -> infinite threshold, every set is "both"
    cp = ConformalPredictor(alpha=0.1).fit(np.array([0.9, 0.8, 0.2, 0.3]), np.array([1, 1, 0, 0]))
    assert math.isinf(cp.threshold)
    assert cp.predict_sets(np.array([0.0, 1.0])) == ["both", "both"]
    # n=9, alpha=0.2: k = ceil(10 * 0.8) = 8 -> 8th smallest score
    scores = np.arange(1, 10) / 20
    cp = ConformalPredictor(alpha=0.2).fit(1 - scores, np.ones(9))
    assert cp.threshold == pytest.approx(scores[7])


def test_class_conditional_coverage_per_class() -> None:
    rng = np.random.default_rng(0)
    cov_r, cov_n = [], []
    for seed in range(10):
        logits, y = _logits(3000, seed)
        y = np.where(rng.random(y.size) < 0.15, 1 - y, y)  # label noise, unbalanced errors
        p = expit(logits + 1.0)
        cp = ConformalPredictor(alpha=0.1, class_conditional=True).fit(p[:1000], y[:1000])
        summ = conformal_summary(cp.predict_sets(p[1000:]), y[1000:])
        cov_r.append(summ["coverage_responder"])
        cov_n.append(summ["coverage_non-responder"])
    assert np.mean(cov_r) > 0.88 and np.mean(cov_n) > 0.88


def test_coverage_counts_labelled_rows_only() -> None:
    sets = ["responder", "both", "non-responder", "none", "responder"]
    labels = np.array([1, 0, 1, 0, -1])
    assert coverage(sets, labels) == pytest.approx(0.5)
    summ = conformal_summary(sets, labels)
    assert summ["n_labelled"] == 4 and summ["mean_set_size"] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="unknown prediction set"):
        coverage(["maybe"], np.array([1]))


def test_serialisation_round_trip_is_json_safe() -> None:
    logits, y = _logits(400, 0, scale=2.5)
    cal = fit_calibration(logits, y, alpha=0.1, class_conditional=True)
    d = json.loads(json.dumps(cal.to_dict()))
    assert isinstance(d["temperature"], float)
    back = Calibration.from_dict(d)
    assert back.temperature == cal.temperature and back.offset == cal.offset
    assert back.predict_sets(logits) == cal.predict_sets(logits)
    assert cal.nll_after < cal.nll_before
    inf = ConformalPredictor(alpha=0.1).fit(np.array([0.9]), np.array([1]))
    d = json.loads(json.dumps(inf.to_dict()))
    assert d["thresholds"]["responder"] is None
    assert math.isinf(ConformalPredictor.from_dict(d).threshold)
    old = Calibration.from_dict({"temperature": 2.0})  # a checkpoint from before the offset
    assert old.conformal is None and old.offset == 0.0
    np.testing.assert_allclose(old.probabilities(np.array([1.0])), expit([0.5]))


def test_pos_weight_shift_is_log_w_and_undoing_it_recalibrates() -> None:
    """A logistic fit that weights positives by w moves its log-odds by log w (the theory
    behind ``offset``): checked with sklearn, then undone by fit_calibration."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    x = rng.normal(size=(40000, 2))
    y = (rng.random(len(x)) < expit(x @ [1.5, -1.0] - 0.4)).astype(int)
    w = (y == 0).sum() / (y == 1).sum()  # module.pos_weight="auto"
    plain = LogisticRegression(C=1e6).fit(x, y)
    weighted = LogisticRegression(C=1e6).fit(x, y, sample_weight=np.where(y == 1, w, 1.0))
    assert weighted.intercept_[0] - plain.intercept_[0] == pytest.approx(math.log(w), abs=0.05)
    np.testing.assert_allclose(weighted.coef_, plain.coef_, rtol=0.05)

    z = weighted.decision_function(x)
    cal = fit_calibration(z, y, alpha=None, offset=math.log(w))
    assert cal.offset == pytest.approx(math.log(w)) and cal.temperature == 1.0
    p_cal = cal.probabilities(z)
    assert abs(p_cal.mean() - y.mean()) < 0.01 < abs(expit(z).mean() - y.mean())
    assert ece(y, p_cal)[0] < 0.5 * ece(y, expit(z))[0]
    # a temperature alone cannot undo a shift: it softens instead
    t_only = fit_calibration(z, y, alpha=None, temperature="fit")
    assert ece(y, p_cal)[0] < ece(y, t_only.probabilities(z))[0]


def test_temperature_test_keeps_t_only_when_the_data_reject_t_1() -> None:
    logits, y = _logits(300, 5, scale=1.0)  # calibrated: the fitted T is noise
    fitted = fit_calibration(logits, y, alpha=None, temperature="fit")
    tested = fit_calibration(logits, y, alpha=None, temperature="test")
    assert fitted.temperature == fitted.temperature_fitted != 1.0
    assert tested.temperature == 1.0 and tested.temperature_fitted == fitted.temperature
    assert tested.temperature_lr_statistic < 3.84  # chi2(1) at 95%
    assert fit_calibration(logits, y, alpha=None, temperature="none").temperature == 1.0
    sharp, y2 = _logits(300, 6, scale=3.0)  # overconfident by 3x: rejected at any usual level
    cal = fit_calibration(sharp, y2, alpha=None, temperature="test")
    assert cal.temperature == cal.temperature_fitted == pytest.approx(3.0, rel=0.3)
    assert cal.temperature_lr_statistic > 20
    # a lenient level keeps what a strict one drops
    assert tested.temperature_lr_statistic > 1e-4  # > chi2(1) quantile at 0.001
    lenient = fit_calibration(logits, y, alpha=None, level=0.999)
    assert lenient.temperature == fitted.temperature
    for bad, msg in (
        ({"temperature": "always"}, "temperature='always'"),
        ({"level": 1.5}, "level"),
    ):
        with pytest.raises(ConfigError, match=msg) as err:
            fit_calibration(logits, y, **bad)
        assert "\n" not in str(err.value)


def test_per_row_fit_offsets_follow_the_labelled_rows() -> None:
    """The cross-fit passes each fold model's own offset; unlabelled rows drop with theirs."""
    logits, y = _logits(2000, 7, scale=1.0)
    off = np.where(np.arange(2000) < 1000, 0.3, 0.5)
    y_u = y.copy()
    y_u[:50] = -1
    cal = fit_calibration(logits + off, y_u, alpha=None, offset=0.4, fit_offset=off)
    ref = fit_calibration(logits[50:], y[50:], alpha=None, offset=0.4, fit_offset=0.0)
    assert cal.temperature_fitted == pytest.approx(ref.temperature_fitted, rel=1e-6)
    assert cal.offset == 0.4 and cal.n_fit == 1950
    np.testing.assert_allclose(cal.probabilities(np.array([0.4])), [0.5])
    with pytest.raises(ConfigError, match="3 fit offsets but 2000 labels"):
        fit_calibration(logits, y, fit_offset=np.zeros(3))
