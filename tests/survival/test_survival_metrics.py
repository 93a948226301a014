"""Our survival metrics equal lifelines / scikit-survival on the same data (to 1e-6)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from immunoplex.errors import ManifestError, SplitError
from immunoplex.evaluation import survival as S


def _data(n: int = 300, seed: int = 0, ties: bool = True):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t = rng.exponential(10.0, n) * np.exp(-0.7 * x)
    if ties:
        t = np.round(t) + 1.0
    e = (rng.random(n) < 0.7).astype(int)
    risk = np.round(x + 0.5 * rng.normal(size=n), 1 if ties else 6)
    return t, e, risk


@pytest.mark.parametrize("ties", [True, False])
def test_harrell_c_equals_lifelines_and_sksurv(ties: bool) -> None:
    from lifelines.utils import concordance_index
    from sksurv.metrics import concordance_index_censored

    t, e, r = _data(ties=ties)
    ours = S.harrell_c(t, e, r, chunk=37)  # chunking does not change the value
    assert ours == pytest.approx(concordance_index(t, -r, e), abs=1e-6)
    assert ours == pytest.approx(concordance_index_censored(e.astype(bool), t, r)[0], abs=1e-6)
    assert ours > 0.6


@pytest.mark.parametrize("n_groups", [2, 3])
def test_logrank_equals_lifelines(n_groups: int) -> None:
    from lifelines.statistics import multivariate_logrank_test

    t, e, r = _data()
    g = S.risk_groups(r, n_groups)
    assert np.bincount(g).min() >= len(r) // n_groups - 20
    ours = S.logrank(t, e, g)
    ref = multivariate_logrank_test(t, g, e)
    assert ours.statistic == pytest.approx(ref.test_statistic, abs=1e-6)
    assert ours.p_value == pytest.approx(ref.p_value, abs=1e-6)
    assert ours.df == n_groups - 1


def test_kaplan_meier_equals_lifelines() -> None:
    from lifelines import KaplanMeierFitter

    t, e, _ = _data()
    km = S.kaplan_meier(t, e)
    ref = KaplanMeierFitter().fit(t, e)
    grid = np.linspace(0, t.max(), 97)
    ref_s = ref.survival_function_at_times(grid).to_numpy()
    assert np.abs(np.array([km.at(x) for x in grid]) - ref_s).max() < 1e-9
    assert km.median() == pytest.approx(ref.median_survival_time_)


def test_breslow_survival_equals_lifelines_prediction() -> None:
    from lifelines import CoxPHFitter

    t, e, r = _data(ties=False)
    df = pd.DataFrame({"T": t, "E": e, "x": r})
    cph = CoxPHFitter().fit(df, "T", "E")
    eta = cph.params_["x"] * r
    grid = np.sort(t[e == 1])[[10, 50, 100, 150]]  # event times: lifelines interpolates between
    ref = cph.predict_survival_function(df[["x"]], times=grid).to_numpy().T
    bt, bh = S.breslow_baseline(t, e, eta)
    assert np.abs(S.survival_at(bt, bh, eta, grid) - ref).max() < 1e-6


def test_library_metrics_and_hazard_ratio() -> None:
    from sksurv.metrics import concordance_index_ipcw

    t, e, r = _data(ties=False)
    tau = S.default_tau(t, e)
    y = S._structured(t, e)
    assert S.uno_c(t, e, r) == pytest.approx(concordance_index_ipcw(y, y, r, tau=tau)[0])
    auc = S.time_auc(t, e, r, S.default_horizons(t, e))
    assert len(auc) == 3 and all(0.5 < v < 1 for v in auc.values())
    bt, bh = S.breslow_baseline(t, e, r)
    grid = S.brier_grid(t)
    ibs = S.integrated_brier(t, e, S.survival_at(bt, bh, r, grid), grid)
    assert 0 < ibs < 0.25
    hr = S.cox_hazard_ratio(t, e, S.risk_groups(r, 2))
    assert hr["hr"] > 1 and hr["ci_low"] < hr["hr"] < hr["ci_high"] and hr["p_value"] < 0.01
    eta = hr_x = S.cox_hazard_ratio(t, e, r)["log_hr"] * r  # calibrated log hazards
    bt, bh = S.breslow_baseline(t, e, hr_x)
    cal = S.horizon_calibration(t, e, S.survival_at(bt, bh, eta, [grid[10]])[:, 0], grid[10])
    assert len(cal) == 4 and all(abs(c["predicted"] - c["observed"]) < 0.15 for c in cal)


@pytest.mark.parametrize(
    ("time", "event", "message"),
    [
        ("-1", "1", "negative"),
        ("", "1", "without a time"),
        ("3.5", "2", "not 0/1"),
        ("abc", "1", "not a number"),
        ("3.5", "", "without an event"),
    ],
)
def test_bad_survival_cells_name_the_row(time: str, event: str, message: str) -> None:
    with pytest.raises(ManifestError, match=rf"^m.csv:3: os .*{message}"):
        S.parse_survival(["1", time], ["0", event], ["m.csv:2", "m.csv:3"], "os")


def test_missing_time_is_unlabelled_and_no_events_is_an_error() -> None:
    t, e = S.parse_survival(["1.5", "", None], ["1", "", None], ["a", "b", "c"])
    assert np.isnan(t[1:]).all() and list(e) == [1, -1, -1]
    tt, ee, _ = S.survival_arrays(t, e)
    assert list(tt) == [1.5] and list(ee) == [1]
    with pytest.raises(SplitError, match="^train split, os: no events among 2"):
        S.require_events(np.array([0, 0, -1]), "train split, os")
