"""Elastic-net model: solver agrees with scikit-learn, inner CV, JSON round-trip, predict."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from immunoplex.errors import CheckpointError, ExpressionError
from immunoplex.expression.io import ExpressionTable
from immunoplex.expression.linear import (
    ElasticNetConfig,
    ElasticNetExpressionModel,
    _sample_weight,
    fit_elastic_net_logistic,
    predict_expression,
)


def _data(seed: int = 0, n: int = 90, p: int = 12) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    y = (x[:, 0] - x[:, 1] + rng.normal(0, 0.7, n) > 0).astype(int)
    cohorts = np.repeat(["A", "B", "C"], n // 3)
    x[cohorts == "B"] = x[cohorts == "B"] * 3 + 5  # platform shift
    idx = [f"p{i}" for i in range(n)]
    df = pd.DataFrame(x, index=idx, columns=[f"G{j}" for j in range(p)])
    return df, pd.Series(y, index=idx), pd.Series(cohorts, index=idx)


@pytest.mark.parametrize(("C", "l1"), [(0.1, 0.5), (1.0, 0.1), (0.2, 0.9)])
def test_fista_matches_sklearn_saga(C: float, l1: float) -> None:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    df, y, _ = _data()
    x = (df - df.mean()) / df.std()
    x, yv = x.to_numpy(), y.to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = LogisticRegression(
            C=C, l1_ratio=l1, solver="saga", class_weight="balanced", tol=1e-8, max_iter=20000
        ).fit(x, yv)
    w, b = fit_elastic_net_logistic(
        x, yv, C, l1, _sample_weight(yv, "balanced"), tol=1e-9, max_iter=50000
    )
    np.testing.assert_allclose(w, ref.coef_.ravel(), atol=1e-5)
    assert b == pytest.approx(ref.intercept_[0], abs=1e-5)
    assert set(np.flatnonzero(w)) == set(np.flatnonzero(ref.coef_.ravel()))


def test_fit_uses_group_cv_and_learns_signal() -> None:
    df, y, coh = _data()
    model = ElasticNetExpressionModel(ElasticNetConfig(Cs=(0.03, 0.3), l1_ratios=(0.5,)))
    model.fit(df, y, coh)
    assert model.inner_cv == "leave-one-cohort-out over 3 cohorts"
    assert model.best_params["C"] in (0.03, 0.3)
    top = [g for g, _ in model.top_genes(2)]
    assert set(top) == {"G0", "G1"}
    assert model.coef[0] > 0 > model.coef[1]
    p = model.predict_proba(df, coh)
    assert p.shape == (len(df),) and ((p > 0) & (p < 1)).all()
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, p) > 0.8


def test_unlabelled_samples_are_not_negatives() -> None:
    df, y, coh = _data()
    y2 = y.copy()
    y2.iloc[:10] = -1
    cfg = ElasticNetConfig(Cs=(0.1,), l1_ratios=(0.5,))
    a = ElasticNetExpressionModel(cfg).fit(df, y2, coh)
    # Same as training without those samples' labels, but they still inform cohort A's stats.
    assert np.isfinite(a.coef).all()
    with pytest.raises(ExpressionError, match="both responders and non-responders"):
        ElasticNetExpressionModel(cfg).fit(df, pd.Series(-1, index=df.index), coh)


def test_to_dict_json_roundtrip_and_predict_expression() -> None:
    df, y, coh = _data()
    model = ElasticNetExpressionModel(ElasticNetConfig(Cs=(0.1,), l1_ratios=(0.5,)))
    model.fit(df, y, coh)
    state = json.loads(json.dumps(model.to_dict()))
    new = df[coh == "B"].iloc[:, ::-1]  # gene order differs; a whole new cohort
    expected = model.predict_proba(df[coh == "B"], ["NEW"] * int((coh == "B").sum()))
    table = ExpressionTable(values=new)
    np.testing.assert_allclose(predict_expression(state, table), expected, rtol=1e-6)
    np.testing.assert_allclose(predict_expression(state, new), expected, rtol=1e-6)
    with pytest.raises(ExpressionError, match=r"missing: .*G3"):
        predict_expression(state, new.drop(columns=["G3"]))
    with pytest.warns(UserWarning, match=r"1 missing \(filled with training means\): G3"):
        filled = predict_expression(state, new.drop(columns=["G3"]), allow_missing=True)
    assert filled.shape == expected.shape
    with pytest.raises(CheckpointError, match="not an ElasticNetExpressionModel"):
        predict_expression({"kind": "x"}, new)


def test_small_new_cohort_needs_enough_samples() -> None:
    df, y, coh = _data()
    model = ElasticNetExpressionModel(ElasticNetConfig(Cs=(0.1,), l1_ratios=(0.5,)))
    state = model.fit(df, y, coh).to_dict()
    with pytest.raises(ExpressionError, match="needs >= 3"):
        predict_expression(state, df.iloc[:2])
    # Known-cohort labels use the statistics stored at fit.
    p = predict_expression(state, df.iloc[:2], cohorts=["A", "A"])
    np.testing.assert_allclose(p, model.predict_proba(df, coh)[:2], rtol=1e-6)
