"""ExpressionFeatures (expression_norm=features): fit on training samples, within-sample
transform, JSON round trip under fixed family/kind names, coverage without filling, and the
predict-time policy for features that a new table cannot compute."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from immunoplex.data.expression_inputs import expression_features
from immunoplex.errors import CheckpointError, ConfigError, ExpressionError
from immunoplex.expression.feature_state import ExpressionFeatures
from immunoplex.inference.feature_inputs import feature_expression, feature_fields

GENES = [
    "CD8A",
    "CD8B",
    "CD3E",
    "CD3D",
    "CD2",
    "GZMA",
    "GZMB",
    "PRF1",
    "NKG7",
    "CCL5",
    "IFNG",
    "CXCL9",
    "CXCL10",
    "IDO1",
    "STAT1",
    "HLA-DRA",
    "PDCD1",
    "CD274",
    "LAG3",
    "TIGIT",
    "CD163",
    "MRC1",
    "STAB1",
    "MSR1",
    "CSF1R",
    "BG1",
    "BG2",
    "BG3",
    "BG4",
    "BG5",
]


def _table(seed: int, n: int = 20, shift: float = 0.0, scale: float = 1.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(5.0, 1.0, (n, len(GENES)))
    return pd.DataFrame(x * scale + shift, index=[f"s{seed}_{i}" for i in range(n)], columns=GENES)


def _fitted(**kw: object) -> ExpressionFeatures:
    return ExpressionFeatures(**kw).fit(_table(0))  # type: ignore[arg-type]


def test_config_selects_features_and_checks_names() -> None:
    assert expression_features("zscore_cohort") is None
    assert expression_features({"method": "rank", "log": "none"}) is None
    f = expression_features(
        {"method": "features", "families": ["sig", "impres"], "small_cohort": "global"}
    )
    assert f is not None and f.families == ("sig", "impres")
    with pytest.raises(ConfigError, match="families"):
        expression_features({"method": "features", "families": ["sig", "os.system"]})
    with pytest.raises(ConfigError, match="unknown expression feature option"):
        expression_features({"method": "features", "target": "x"})


def test_fit_transform_within_sample_and_standardised() -> None:
    f = _fitted()
    names = f.names
    assert any(n.startswith("sig:") for n in names) and any(n.startswith("pair:") for n in names)
    assert any(n.startswith("rank:") for n in names) and not any("BG" in n for n in names)
    train = f.matrix(_table(0))
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-5)
    # within-sample: a monotone per-sample transform (platform scale, log) leaves them unchanged
    new = _table(1)
    a = f.matrix(new)
    b = f.matrix(np.exp2(new) * 3.0 + 7.0)
    np.testing.assert_allclose(a, b, atol=1e-6)
    # a sample's features do not depend on the other samples of its table
    np.testing.assert_allclose(f.matrix(new.iloc[[3]]), a[[3]], atol=1e-7)
    # extra genes of a new platform do not change them
    extra = new.assign(NEWGENE=100.0)
    np.testing.assert_allclose(f.matrix(extra), a, atol=1e-7)


def test_json_round_trip_and_fixed_kinds() -> None:
    f = _fitted(families=("sig", "impres", "pairs", "rank"))
    d = json.loads(json.dumps(f.to_dict()))
    g = ExpressionFeatures.from_dict(d)
    new = _table(2)
    np.testing.assert_array_equal(f.matrix(new), g.matrix(new))
    assert g.names == f.names and g.universe == f.universe
    bad = dict(d, kind="TransferModel")
    with pytest.raises(CheckpointError, match="not an ExpressionFeatures"):
        ExpressionFeatures.from_dict(bad)
    bad = dict(d, families=["sig", "__import__"])
    with pytest.raises(CheckpointError, match="malformed"):
        ExpressionFeatures.from_dict(bad)
    bad = dict(d, features=[{**d["features"][0], "kind": "eval"}, *d["features"][1:]])
    with pytest.raises(CheckpointError, match="malformed"):
        ExpressionFeatures.from_dict(bad)
    with pytest.raises(CheckpointError, match="count mismatch"):
        ExpressionFeatures.from_dict(dict(d, mean=d["mean"][:-1]))


def test_partial_coverage_is_reported_not_filled() -> None:
    f = _fitted()
    new = _table(3).drop(columns=["PDCD1", "STAB1"])
    frame, report = f.transform(new)
    gone = report.not_computable
    assert "pair:PDCD1>CD274" in gone and "rank:STAB1" in gone and "rank:PDCD1" in gone
    assert "sig:MACROPHAGE" not in gone  # 4/5 of its genes: >= min_set_fraction
    assert frame[gone].isna().all().all()  # not computable: NaN, never a training mean
    assert frame.drop(columns=gone).notna().all().all()
    with pytest.raises(ExpressionError, match="not computable"):
        f.matrix(new)


def test_predict_policy_refuse_or_drop_the_modality() -> None:
    f = _fitted()
    new = _table(4).drop(columns=["PDCD1"])
    multimodal = SimpleNamespace(expression_features=f, modalities=["image", "expression"])
    with pytest.raises(ExpressionError, match=r"cannot be computed.*pair:PDCD1>CD274.*PDCD1"):
        feature_expression(multimodal, new, "new.csv", allow_missing=False)
    values, report, dropped = feature_expression(multimodal, new, "new.csv", allow_missing=True)
    assert values == {} and sorted(dropped) == sorted(new.index)
    row = feature_fields(report, dropped, str(new.index[0]))
    assert row["expression_dropped"] and row["genes_missing"] == 1 and not row["genes_filled"]
    assert "pair:PDCD1>CD274" in row["expression_features_missing"]
    expr_only = SimpleNamespace(expression_features=f, modalities=["expression"])
    with pytest.raises(ExpressionError, match="expression-only model has no other input"):
        feature_expression(expr_only, new, "new.csv", allow_missing=True)
    # full coverage: every patient gets its features, nothing dropped
    values, report, dropped = feature_expression(expr_only, _table(5), "t.csv", allow_missing=False)
    assert len(values) == 20 and not dropped and not report.not_computable
    assert feature_fields(report, dropped, "s5_0")["expression_features"].startswith(
        f"{len(f.names)}/"
    )
