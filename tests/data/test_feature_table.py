"""The patient feature table (data.features): read, transform, store, refuse bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from immunoplex.data.bags import PatientBagDataset, PatientRecord, collate_bags
from immunoplex.data.feature_table import FeatureTable, item_features
from immunoplex.errors import ConfigError, ManifestError

COLS = {"frac_intratumoural_cd8_t": "logit", "density_cd8_t_tissue_per_mm2": "log1p",
        "n_cells": "none"}  # fmt: skip


def _table(tmp_path: Path, rows: list[dict], catalogue: bool = True) -> Path:
    path = tmp_path / "cell_features.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    if catalogue:
        pd.DataFrame(
            [{"feature": "density_cd8_t_tissue_per_mm2", "unit": "cells/mm²",
              "description": "CD8 T cells per mm² of tissue"}]
        ).to_csv(tmp_path / "cell_features_columns.csv", index=False)  # fmt: skip
    return path


ROWS = [
    {"patient_id": "P1", "frac_intratumoural_cd8_t": 0.25, "density_cd8_t_tissue_per_mm2": 99.0,
     "n_cells": 10, "other": "x"},
    {"patient_id": "P2", "frac_intratumoural_cd8_t": 0.0, "density_cd8_t_tissue_per_mm2": None,
     "n_cells": 0, "other": "y"},
]  # fmt: skip


def test_values_are_transformed_and_empty_values_stay_nan(tmp_path: Path) -> None:
    t = FeatureTable.from_config({"table": str(_table(tmp_path, ROWS)), "columns": COLS})
    assert t is not None and t.columns == list(COLS)
    np.testing.assert_allclose(t.vector("P1"), [math.log(0.25 / 0.75), math.log(100.0), 10.0],
                               rtol=1e-6)  # fmt: skip
    p2 = t.vector("P2")
    assert p2[0] == pytest.approx(math.log(0.005 / 0.995))  # clipped, not -inf
    assert math.isnan(p2[1])  # an empty value is carried as unobserved, never filled
    assert t.vector("P3") is None
    assert t.labels[1] == "CD8 T cells per mm² of tissue (cells/mm²)"  # from the catalogue
    assert t.labels[0] == "frac_intratumoural_cd8_t"
    assert t.dims() == {"table_features": list(COLS), "table_labels": t.labels}


def test_round_trip_through_checkpoint_metadata(tmp_path: Path) -> None:
    path = _table(tmp_path, ROWS)
    (tmp_path / "cells_config.json").write_text(json.dumps({"segmentation": {"mpp": None}}))
    t = FeatureTable.from_config({"table": str(path), "columns": COLS})
    assert t is not None and t.cells == {"segmentation": {"mpp": None}}
    back = FeatureTable.from_dict(json.loads(json.dumps(t.to_dict())))
    assert back is not None
    assert (back.columns, back.transforms, back.labels, back.cells) == (
        t.columns, t.transforms, t.labels, t.cells)  # fmt: skip
    back.load(path, ["P1"])
    assert set(back.values) == {"P1"}
    np.testing.assert_array_equal(back.vector("P1"), t.vector("P1"))


def test_no_table_configured_is_none() -> None:
    assert FeatureTable.from_config({}) is None
    assert FeatureTable.from_config({"table": None, "columns": {}}) is None
    assert item_features(None, "P1") is None


@pytest.mark.parametrize(
    ("rows", "columns", "message"),
    [
        (ROWS, {"nope": "none"}, "column(s) ['nope'] of the model are not in the table"),
        (ROWS, {"other": "none"}, "row 2, column 'other': 'x' is not a number"),
        (ROWS + [ROWS[0]], COLS, "patient_id(s) ['P1'] appear on more than one row"),
        ([{"id": "P1", "n_cells": 1}], {"n_cells": "none"}, "no patient_id column"),
    ],
)
def test_bad_tables_are_one_line_errors(
    tmp_path: Path, rows: list[dict], columns: dict, message: str
) -> None:
    path = _table(tmp_path, rows, catalogue=False)
    with pytest.raises(ManifestError) as err:
        FeatureTable.from_config({"table": str(path), "columns": columns})
    assert message in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_specs_are_config_errors(tmp_path: Path) -> None:
    path = _table(tmp_path, ROWS)
    with pytest.raises(ConfigError, match="unknown transform"):
        FeatureTable.from_config({"table": str(path), "columns": {"n_cells": "sqrt"}})
    with pytest.raises(ConfigError, match="is empty"):
        FeatureTable.from_config({"table": str(path), "columns": {}})
    with pytest.raises(ManifestError, match="patient feature table not found"):
        FeatureTable.from_config({"table": str(tmp_path / "missing.csv"), "columns": COLS})


def test_batch_carries_features_and_row_presence(tmp_path: Path) -> None:
    t = FeatureTable.from_config({"table": str(_table(tmp_path, ROWS)), "columns": COLS})
    recs = []
    for pid in ("P1", "P3"):
        values, has = item_features(t, pid)  # type: ignore[misc]
        recs.append(PatientRecord(pid, 1, 0, "c", np.zeros(0, np.float32), None,
                                  features=values, has_features=has))  # fmt: skip
    ds = PatientBagDataset(recs, n_channels=2, n_genes=0, bag_size=None)
    batch = collate_bags([ds[0], ds[1]])
    assert batch["features"].shape == (2, 3)
    assert batch["has_features"].tolist() == [True, False]
    assert bool(batch["features"][1].isnan().all())  # no row: unobserved, not zeros


def test_cell_stage_columns_get_biology_labels() -> None:
    from immunoplex.data.feature_table import cell_label

    types = {"cd8_t": "CD8 T cell", "macrophage": "Macrophage",
             "clever1_macrophage": "Clever-1+ macrophage", "tumour": "Tumour cell"}  # fmt: skip
    assert cell_label("density_clever1_macrophage_stroma_per_mm2", types) == (
        "Clever-1+ macrophages per mm² stroma")  # fmt: skip
    assert cell_label("frac_intratumoural_cd8_t", types) == "CD8 T cells inside tumour (share)"
    assert cell_label("frac_clever1_macrophage_of_macrophage", types) == (
        "Clever-1+ macrophages, share of Macrophages")  # fmt: skip
    assert cell_label("nn_median_um_cd8_t_to_clever1_macrophage", types) == (
        "CD8 T cell to nearest Clever-1+ macrophage, median (µm)")  # fmt: skip
    assert cell_label("nbr_frac_cd8_t_around_tumour_r30um", types) == (
        "CD8 T cells, share of the cells within 30 µm of Tumour cells")  # fmt: skip
    assert cell_label("density_nk_stroma_per_mm2", types) is None  # an unknown type
    assert cell_label("n_cells", types) is None
