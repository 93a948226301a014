"""ExpressionNormalizer: every method, per-cohort statistics, and the to_dict round-trip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from immunoplex.errors import ConfigError, ExpressionError
from immunoplex.expression.normalise import NORMALIZATION_METHODS, ExpressionNormalizer


def _cohorts(seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    genes = [f"G{i}" for i in range(6)]
    a = rng.normal(5.0, 1.0, (8, 6))
    b = rng.normal(9.0, 3.0, (6, 6))  # another platform: shifted and scaled
    df = pd.DataFrame(np.vstack([a, b]), index=[f"p{i}" for i in range(14)], columns=genes)
    return df, pd.Series(["A"] * 8 + ["B"] * 6, index=df.index)


def test_zscore_cohort_uses_each_cohorts_own_statistics() -> None:
    df, coh = _cohorts()
    z = ExpressionNormalizer("zscore_cohort").fit_transform(df, coh)
    assert z.dtype == np.float32 and z.shape == df.shape
    for c in ("A", "B"):
        rows = (coh == c).to_numpy()
        np.testing.assert_allclose(z[rows].mean(axis=0), 0.0, atol=1e-5)
        np.testing.assert_allclose(z[rows].std(axis=0), 1.0, atol=1e-5)


def test_known_cohort_keeps_training_stats_new_cohort_uses_its_own() -> None:
    df, coh = _cohorts()
    norm = ExpressionNormalizer("zscore_cohort").fit(df, coh)
    one = df.iloc[[0]]
    expected = (one.to_numpy() - df[coh == "A"].mean().to_numpy()) / df[coh == "A"].std(
        ddof=0
    ).to_numpy()
    np.testing.assert_allclose(norm.transform(one, ["A"]), expected, rtol=1e-5)
    new = df.iloc[8:] * 2 + 1
    z = norm.transform(new, ["C"] * len(new))
    np.testing.assert_allclose(z, norm.transform(df.iloc[8:], ["B"] * 6), atol=1e-5)


def test_small_new_cohort_errors_or_falls_back_to_global() -> None:
    df, coh = _cohorts()
    norm = ExpressionNormalizer("zscore_cohort").fit(df, coh)
    with pytest.raises(ExpressionError, match=r"cohort 'C' has 2 sample\(s\); .* needs >= 3"):
        norm.transform(df.iloc[:2], ["C", "C"])
    glob = ExpressionNormalizer("zscore_cohort", small_cohort="global").fit(df, coh)
    expected = (df.iloc[:2].to_numpy() - df.mean().to_numpy()) / df.std(ddof=0).to_numpy()
    np.testing.assert_allclose(glob.transform(df.iloc[:2], ["C", "C"]), expected, rtol=1e-5)


def test_rank_is_within_sample_and_scale_free() -> None:
    df, _ = _cohorts()
    norm = ExpressionNormalizer("rank").fit(df)
    r = norm.transform(df)
    np.testing.assert_allclose(r, norm.transform(df * 3 + 10), atol=1e-6)
    np.testing.assert_allclose(r.mean(axis=1), 0.0, atol=1e-6)
    assert (np.argsort(r, axis=1) == np.argsort(df.to_numpy(), axis=1)).all()


def test_quantile_maps_samples_to_reference_distribution() -> None:
    df, _ = _cohorts()
    norm = ExpressionNormalizer("quantile").fit(df)
    ref = np.sort(df.to_numpy(), axis=1).mean(axis=0)
    np.testing.assert_allclose(norm.reference, ref)
    q = norm.transform(df * 2)  # within-sample monotone change: same quantile result
    np.testing.assert_allclose(q, norm.transform(df), atol=1e-5)
    np.testing.assert_allclose(q.mean(axis=0), 0.0, atol=1e-5)


def test_none_and_log() -> None:
    df, _ = _cohorts()
    df = df.abs()
    np.testing.assert_allclose(ExpressionNormalizer("none").fit(df).transform(df), df, rtol=1e-6)
    lg = ExpressionNormalizer("none", log="log2p1").fit(df).transform(df)
    np.testing.assert_allclose(lg, np.log2(df + 1), rtol=1e-6)


@pytest.mark.parametrize("method", NORMALIZATION_METHODS)
def test_to_dict_roundtrip_is_json_safe_and_exact(method: str) -> None:
    df, coh = _cohorts()
    norm = ExpressionNormalizer(method).fit(df, coh)
    state = json.loads(json.dumps(norm.to_dict()))
    back = ExpressionNormalizer.from_dict(state)
    new = df.iloc[8:] + 0.5
    cohorts = ["B"] * 6
    np.testing.assert_array_equal(back.transform(new, cohorts), norm.transform(new, cohorts))
    np.testing.assert_array_equal(back.transform(new, ["N"] * 6), norm.transform(new, ["N"] * 6))
    assert back.genes == norm.genes


def test_transform_aligns_genes_and_fills_only_when_allowed() -> None:
    df, coh = _cohorts()
    norm = ExpressionNormalizer("zscore").fit(df, coh)
    shuffled = df[list(reversed(df.columns))]
    np.testing.assert_allclose(norm.transform(shuffled), norm.transform(df), atol=1e-6)
    lacking = df.drop(columns=["G2"])
    with pytest.raises(ExpressionError, match="G2"):
        norm.transform(lacking)
    z = norm.transform(lacking, allow_missing=True)
    np.testing.assert_allclose(z[:, 2], 0.0, atol=1e-6)  # training mean -> z = 0


def test_bad_config_and_unfitted() -> None:
    with pytest.raises(ConfigError, match="not in"):
        ExpressionNormalizer("minmax")
    with pytest.raises(ExpressionError, match="before fit"):
        ExpressionNormalizer().transform(pd.DataFrame({"A": [1.0]}))
    cfg = {"method": "rank", "log": "none"}
    assert ExpressionNormalizer.from_config(cfg).method == "rank"
