"""Baseline scores on a hand-made table; bootstrap AUROC; LOCO never trains on the held-out cohort."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from immunoplex.errors import ExpressionError, SplitError
from immunoplex.evaluation.loco import (
    POOLED,
    auroc,
    bootstrap_auroc,
    loco_splits,
    markdown_table,
    paired_bootstrap_delta,
    run_loco,
    summarise,
)
from immunoplex.expression.signatures import SIGNATURES, score_signature, score_signatures


def _hand_table() -> pd.DataFrame:
    genes = sorted({g for s in SIGNATURES.values() for g in s.genes})
    df = pd.DataFrame(1.0, index=["a", "b", "c"], columns=genes)
    df.loc["a", ["GZMA", "PRF1"]] = [2.0, 4.0]
    df.loc["b", ["GZMA", "PRF1"]] = [0.0, 6.0]
    df.loc["a", "CD274"] = 5.0
    df.loc[:, "IFNG"] = [6.0, 0.0, 3.0]
    return df


def test_single_gene_and_cytolytic_scores() -> None:
    df = _hand_table()
    assert score_signature(df, "CD274").tolist() == [5.0, 1.0, 1.0]
    assert score_signature(df, "CD8A").tolist() == [1.0, 1.0, 1.0]
    # CYT on log values: mean of logs = log of the geometric mean.
    assert score_signature(df, "CYT").tolist() == [3.0, 3.0, 1.0]
    lin = 2.0**df - 1.0
    cyt = score_signature(lin, "CYT", log=True)
    np.testing.assert_allclose(cyt, [3.0, 3.0, 1.0])


def test_ifng6_is_mean_of_log_values() -> None:
    df = _hand_table()
    expected = (df["IFNG"] + 5 * 1.0) / 6  # five other genes at 1.0
    np.testing.assert_allclose(score_signature(df, "IFNG6"), expected)


def test_teff_is_mean_of_within_cohort_zscores() -> None:
    df = _hand_table()
    cohorts = ["x", "x", "x"]
    z_ifng = (df["IFNG"] - df["IFNG"].mean()) / df["IFNG"].std(ddof=0)
    z_gzma = (df["GZMA"] - df["GZMA"].mean()) / df["GZMA"].std(ddof=0)
    z_prf1 = (df["PRF1"] - df["PRF1"].mean()) / df["PRF1"].std(ddof=0)
    expected = (z_ifng + z_gzma + z_prf1) / 8  # the other five genes are constant -> 0
    np.testing.assert_allclose(score_signature(df, "TEFF", cohorts), expected, atol=1e-12)
    all_scores = score_signatures(df, cohorts)
    assert list(all_scores.columns) == list(SIGNATURES)


def test_missing_signature_gene_is_an_error() -> None:
    with pytest.raises(ExpressionError, match=r"signature CYT: gene\(s\) \['PRF1'\]"):
        score_signature(pd.DataFrame({"GZMA": [1.0]}), "CYT")


def test_auroc_and_bootstrap() -> None:
    y = np.array([0, 0, 1, 1])
    assert auroc(y, [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auroc(y, [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert auroc(y, [1, 1, 1, 1]) == 0.5
    assert np.isnan(auroc([1, 1], [0.1, 0.2]))
    rng = np.random.default_rng(0)
    yy = rng.integers(0, 2, 200)
    s = yy + rng.normal(0, 1.0, 200)
    ci = bootstrap_auroc(yy, s, n_boot=500, seed=1)
    assert ci.low < ci.auroc < ci.high and ci.n_pos + ci.n_neg == 200
    from sklearn.metrics import roc_auc_score

    assert ci.auroc == pytest.approx(roc_auc_score(yy, s))
    d, lo, hi = paired_bootstrap_delta(yy, s, s, n_boot=200)
    assert d == lo == hi == 0.0


class _SpyModel:
    """Records what it was trained on; predicts the CD8A value."""

    seen: list[set[str]] = []

    def fit(self, values: pd.DataFrame, labels: pd.Series, cohorts: pd.Series) -> _SpyModel:
        _SpyModel.seen.append(set(cohorts))
        self.train_ids = set(values.index)
        return self

    def predict_proba(self, values: pd.DataFrame, cohorts: pd.Series) -> np.ndarray:
        assert not (set(values.index) & self.train_ids)
        return values["CD8A"].to_numpy()


def _multi_cohort(seed: int = 0) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    rng = np.random.default_rng(seed)
    genes = sorted({g for s in SIGNATURES.values() for g in s.genes})
    n = 30
    values = pd.DataFrame(rng.normal(size=(n, len(genes))), columns=genes)
    values.index = [f"p{i}" for i in range(n)]
    labels = pd.Series(rng.integers(0, 2, n), index=values.index)
    labels.iloc[[0, 11, 22]] = -1  # unlabelled
    cohorts = pd.Series(np.repeat(["A", "B", "C"], 10), index=values.index)
    values["CD8A"] += labels.clip(lower=0) * 2
    return values, labels, cohorts


def test_loco_never_trains_on_held_out_and_skips_unlabelled() -> None:
    _SpyModel.seen = []
    values, labels, cohorts = _multi_cohort()
    res = run_loco(values, labels, cohorts, {"spy": _SpyModel})
    assert _SpyModel.seen == [{"B", "C"}, {"A", "C"}, {"A", "B"}]
    p = res.predictions
    assert set(p["patient_id"]) == set(values.index) - {"p0", "p11", "p22"}
    assert (p["label"] >= 0).all()
    # the spy scores CD8A, so it must equal the CD8A baseline's per-cohort AUROC
    s = summarise(res, n_boot=100)
    for c in ("A", "B", "C"):
        spy = s[(s.method == "spy") & (s.cohort == c)]["auroc"].item()
        base = s[(s.method == "CD8A") & (s.cohort == c)]["auroc"].item()
        assert spy == pytest.approx(base)
    assert set(s["cohort"]) == {"A", "B", "C", POOLED}
    table = markdown_table(res, s)
    assert table.splitlines()[0].startswith("| held-out cohort | R / NR | spy | CD274")


def test_loco_needs_two_cohorts() -> None:
    with pytest.raises(SplitError, match="needs >= 2 cohorts"):
        list(loco_splits(pd.Series(["A", "A"])))
