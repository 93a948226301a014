"""The feature model through train -> checkpoint -> immunoplex-predict -> explanations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from immunoplex.inference.predictor import Predictor
from immunoplex.inference.run import predict
from tests.predict.conftest import opts, sub_manifest, train_checkpoint

pytestmark = pytest.mark.slow  # trains on the tiny cohort (~1 min on 2 shared cores)


@pytest.fixture(scope="module")
def features_ckpt(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_checkpoint(
        tiny_cohort,
        tmp_path_factory.mktemp("run_cell_features"),
        epochs=3,
        extra=["model=cell_features", "model.interaction_features=null"],
    )


def test_predict_matches_training_and_explains_in_biology(
    features_ckpt: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    pred = Predictor.load(features_ckpt, "cpu")
    assert type(pred.model).__name__ == "FeatureModel"
    ref = pd.read_csv(features_ckpt.parent / "predictions_test.csv", dtype={"patient_id": str})
    assert {"logit[anti-PD-1]", "logit[bexmarilimab+anti-PD-1]"} <= set(ref.columns)
    ids = ref["patient_id"].tolist()[:3]
    manifest = sub_manifest(tiny_cohort, tmp_path / "m.csv", ids)
    out = tmp_path / "out"
    df = predict(opts(features_ckpt, manifest, out, expression=str(tiny_cohort / "expression.csv"),
                      explain=True))  # fmt: skip
    got = df.set_index("patient_id").loc[ids]
    want = ref.set_index("patient_id").loc[ids]
    # the tile features are recomputed from the slides by the checkpoint's own extractor
    np.testing.assert_allclose(got["logit"], want["logit"], atol=1e-4)
    ex = json.loads((out / "explanations.json").read_text())
    feats = ex["patients"][ids[0]]["features"]
    assert any(k.startswith("Clever-1+ (STAB1+CD68+) macrophage") for k in feats)
    assert "sclever1 (standardised)" in feats
    assert {r["feature"] for r in ex["cohort"]["features"]} == set(feats)
