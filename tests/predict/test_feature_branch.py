"""expression_norm=features (issue 17, item 4): the multimodal model's expression branch reads the
transferable within-sample features; the checkpoint stores them and immunoplex-predict applies
them with a per-patient coverage report (refuse, or drop the modality: never mean-filled)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from immunoplex.errors import ExpressionError
from immunoplex.expression.feature_state import ExpressionFeatures
from immunoplex.inference.predictor import Predictor
from immunoplex.inference.run import predict
from immunoplex.training.checkpoint import load_checkpoint
from tests.predict.conftest import opts, sub_manifest, train_checkpoint


@pytest.fixture(scope="module")
def feature_ckpt(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default image + expression model with its MLP expression encoder (the gene-set scores
    read genes, not features), 2 epochs, expression as within-sample features."""
    return train_checkpoint(
        tiny_cohort,
        tmp_path_factory.mktemp("run_features"),
        epochs=2,
        extra=["expression_norm=features", "model/expression_encoder=mlp"],
    )


def test_checkpoint_stores_the_feature_state(feature_ckpt: Path, tiny_cohort: Path) -> None:
    meta = load_checkpoint(feature_ckpt)["immunoplex"]
    state = meta["data"]["expression_features"]
    json.dumps(state)  # plain JSON: gene lists, pairs, numbers
    feats = ExpressionFeatures.from_dict(state)
    names = meta["dims"]["gene_names"]
    assert meta["dims"]["n_genes"] == len(names) == len(feats.names) and names == feats.names
    assert meta["data"]["genes"] == names and meta["data"]["expression_norm"] is None
    assert {n.split(":")[0] for n in names} == {"sig", "pair", "rank"}
    expr = pd.read_csv(tiny_cohort / "expression.csv", index_col=0)
    assert feats.universe == list(expr.columns) and len(names) < expr.shape[1]
    pred = Predictor.load(feature_ckpt, "cpu")
    assert pred.expression_features is not None and pred.expression_features.names == names
    assert pred.model.expression_encoder.n_genes == len(names)


def test_predict_matches_training_and_reports_coverage(
    feature_ckpt: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    ref = pd.read_csv(feature_ckpt.parent / "predictions_test.csv", dtype={"patient_id": str})
    ids = ref["patient_id"].tolist()[:4]
    manifest = sub_manifest(tiny_cohort, tmp_path / "m.csv", ids)
    out = tmp_path / "out"
    df = predict(opts(feature_ckpt, manifest, out, expression=str(tiny_cohort / "expression.csv")))
    got = df.set_index("patient_id").loc[ids]
    want = ref.set_index("patient_id").loc[ids]
    np.testing.assert_allclose(got["logit"], want["logit"], atol=1e-4)
    np.testing.assert_allclose(
        got["calibrated_probability"], want["calibrated_probability"], atol=1e-4
    )
    assert got["modalities"].map(lambda v: "expression" in v).all()
    assert not got["expression_dropped"].any() and (got["genes_missing"] == 0).all()
    assert got["expression_features_missing"].map(len).eq(0).all()
    js = json.loads((out / "predictions.json").read_text())
    assert js["feature_report"]["not_computable"] == []
    one = json.loads((out / "patients" / f"{ids[0]}.json").read_text())["row"]
    assert one["expression_features"].split("/")[0] == one["expression_features"].split("/")[1]
    assert "features computable" in one["expression_coverage"]


def test_partial_gene_coverage_refuses_or_drops_expression(
    feature_ckpt: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    ids = ["P0001", "P0002", "P0003"]
    manifest = sub_manifest(tiny_cohort, tmp_path / "m.csv", ids)
    expr = pd.read_csv(tiny_cohort / "expression.csv", dtype={"patient_id": str})
    partial = tmp_path / "expr_partial.csv"
    expr.drop(columns=["PDCD1"]).to_csv(partial, index=False)
    with pytest.raises(ExpressionError, match=r"cannot be computed.*pair:PDCD1>CD274"):
        predict(opts(feature_ckpt, manifest, tmp_path / "a", expression=str(partial)))
    dropped = predict(
        opts(
            feature_ckpt,
            manifest,
            tmp_path / "b",
            expression=str(partial),
            allow_missing_genes=True,
        )
    ).set_index("patient_id")
    assert dropped["expression_dropped"].all() and not dropped["genes_filled"].any()
    assert (dropped["genes_missing"] == 1).all()
    assert dropped["expression_features_missing"].map(lambda v: "rank:PDCD1" in v).all()
    assert dropped["modalities"].map(lambda v: "expression" not in v).all()
    # nothing filled: the same prediction as with no expression table at all
    none = predict(opts(feature_ckpt, manifest, tmp_path / "c")).set_index("patient_id")
    np.testing.assert_allclose(dropped.loc[ids, "logit"], none.loc[ids, "logit"], atol=1e-6)
    js = json.loads((tmp_path / "b" / "predictions.json").read_text())
    assert "pair:PDCD1>CD274" in js["feature_report"]["not_computable"]
    # a gene no feature needs: every feature computable (ranks among the genes present)
    bg = tmp_path / "expr_bg.csv"
    expr.drop(columns=["ACADM"]).to_csv(bg, index=False)
    kept = predict(opts(feature_ckpt, manifest, tmp_path / "d", expression=str(bg)))
    assert kept["modalities"].map(lambda v: "expression" in v).all()
    assert (kept["genes_missing"] == 1).all() and not kept["expression_dropped"].any()
