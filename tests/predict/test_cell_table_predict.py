"""The feature model on the cell stage's patient table (experiment=cell_table): immunoplex-cells
-> train -> checkpoint -> immunoplex-predict, which runs the same cell stage on new slides."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from immunoplex.cells.cohort import cells_cohort
from immunoplex.errors import ConfigError, ManifestError
from immunoplex.inference.predictor import Predictor
from immunoplex.inference.run import predict
from immunoplex.paths import config_dir
from tests.predict.conftest import opts, sub_manifest, train_checkpoint

pytestmark = pytest.mark.slow  # the cell stage on 24 tiny slides, then a short training


@pytest.fixture(scope="module")
def cell_table(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cell_stage")
    manifest = sub_manifest(
        tiny_cohort, out / "manifest.csv", pd.read_csv(tiny_cohort / "manifest.csv")["patient_id"]
        .astype(str).unique().tolist(),
    )  # fmt: skip
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("cells", overrides=[f"manifest={manifest}", f"out_dir={out}",
                                          "progress=false", "outputs=[h5ad,parquet]"])  # fmt: skip
    res = cells_cohort(cfg)
    assert not res["skipped"]
    return out / "cell_features.csv"


@pytest.fixture(scope="module")
def table_ckpt(
    tiny_cohort: Path, cell_table: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return train_checkpoint(
        tiny_cohort,
        tmp_path_factory.mktemp("run_cell_table"),
        epochs=3,
        extra=["experiment=cell_table", f"data.features.table={cell_table}"],
    )


def test_checkpoint_stores_the_table_spec_and_the_cell_stage(table_ckpt: Path) -> None:
    pred = Predictor.load(table_ckpt, "cpu")
    spec = pred.meta["data"]["features"]
    assert spec["columns"][0] == "frac_intratumoural_cd8_t"
    assert spec["transforms"]["frac_intratumoural_cd8_t"] == "logit"
    assert spec["cells"]["segmentation"]["nuclear_markers"] == ["DAPI"]  # cells_config.json
    assert "cells:density_clever1_macrophage_tissue_per_mm2" in pred.model.feature_names
    assert pred.model.modalities == ["expression"]


def test_predict_runs_the_cell_stage_and_matches_training(
    table_ckpt: Path, tiny_cohort: Path, cell_table: Path, tmp_path: Path
) -> None:
    ref = pd.read_csv(table_ckpt.parent / "predictions_test.csv", dtype={"patient_id": str})
    ids = ref["patient_id"].tolist()[:3]
    manifest = sub_manifest(tiny_cohort, tmp_path / "m.csv", ids)
    expr = str(tiny_cohort / "expression.csv")
    out = tmp_path / "auto"
    df = predict(opts(table_ckpt, manifest, out, expression=expr, explain=True))
    # the checkpoint's cell stage ran on these slides: per-slide tables and the patient table
    assert (out / "cells" / "cell_features.csv").is_file()
    sid = pd.read_csv(manifest)["slide_id"].iloc[0]
    assert (out / "cells" / "slides" / sid / "cells.h5ad").is_file()
    got = df.set_index("patient_id").loc[ids]
    want = ref.set_index("patient_id").loc[ids]
    np.testing.assert_allclose(got["logit"], want["logit"], atol=1e-4)
    assert all("cells" in m for m in got["modalities"])
    feats = json.loads((out / "explanations.json").read_text())["patients"][ids[0]]["features"]
    assert "CD8 T cells inside tumour (share)" in feats, sorted(feats)
    # the same from the training table given as features_table=
    df2 = predict(opts(table_ckpt, manifest, tmp_path / "given", expression=expr,
                       features_table=str(cell_table)))  # fmt: skip
    np.testing.assert_allclose(df2.set_index("patient_id").loc[ids, "logit"], want["logit"],
                               atol=1e-4)  # fmt: skip


def test_a_patient_missing_from_the_table_is_refused(
    table_ckpt: Path, tiny_cohort: Path, cell_table: Path, tmp_path: Path
) -> None:
    ids = pd.read_csv(tiny_cohort / "manifest.csv", dtype=str)["patient_id"].unique()[:2].tolist()
    manifest = sub_manifest(tiny_cohort, tmp_path / "m.csv", ids)
    table = pd.read_csv(cell_table, dtype={"patient_id": str})
    short = tmp_path / "short.csv"
    table[table["patient_id"] != ids[1]].to_csv(short, index=False)
    with pytest.raises(ManifestError) as err:
        predict(opts(table_ckpt, manifest, tmp_path / "o", features_table=str(short),
                     expression=str(tiny_cohort / "expression.csv")))  # fmt: skip
    assert f"no row for patient(s) ['{ids[1]}']" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_model_that_reads_no_table_refuses_one(tiny_cohort: Path, cell_table: Path,
                                                 tmp_path: Path) -> None:  # fmt: skip
    with pytest.raises(ConfigError, match="reads no patient feature table"):
        train_checkpoint(tiny_cohort, tmp_path / "run", epochs=1,
                         extra=["model=expression_only", f"data.features.table={cell_table}",
                                "data.features.columns={n_cells: none}"])  # fmt: skip
