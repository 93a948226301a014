"""Rule tables and spatial features on hand-made cell tables (no images)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from immunoplex.cells.phenotype import PhenotypeScheme, assign_phenotypes, otsu_threshold
from immunoplex.cells.quantify import CellTable
from immunoplex.cells.spatial import SlideCells, SpatialParams, feature_catalogue, feature_table
from immunoplex.errors import ConfigError

RULES = {
    "cofactor": 1.0,
    "rules": [
        {"name": "tumour", "positive": ["PanKeratin"]},
        {"name": "cd8_t", "positive": ["CD8a"]},
        {"name": "macrophage", "positive": ["CD68"]},
        {"name": "clever1_macrophage", "parent": "macrophage", "positive": ["Clever-1"]},
        {"name": "endothelial", "positive": ["CD31"]},
    ],
}


def _table(values: dict[str, list[float]]) -> CellTable:
    markers = list(values)
    X = np.array([values[m] for m in markers], np.float32).T
    n = len(X)
    obs = pd.DataFrame({"cell_id": np.arange(1, n + 1), "slide_id": "s"})
    return CellTable(obs, X, X.copy(), markers, markers, 1.0)


def test_rules_first_match_hierarchy_and_other():
    t = _table({"PanCK": [9, 9, 0, 0, 0, 0], "CD8": [9, 0, 9, 0, 0, 0],
                "CD68": [0, 0, 0, 9, 9, 0], "STAB1": [0, 0, 0, 9, 0, 0]})  # fmt: skip
    scheme = PhenotypeScheme.from_dict(RULES)
    assign_phenotypes(t, scheme, thresholds={"PanCK": 1, "CD8": 1, "CD68": 1, "STAB1": 1})
    phen = t.obs["phenotype"].astype(str).tolist()
    assert phen == ["tumour", "tumour", "cd8_t", "clever1_macrophage", "macrophage", "other"]
    assert t.obs["lineage"].astype(str).tolist()[3] == "macrophage"
    # CD31 is not on the slide: the rule is disabled, nobody is dropped
    assert t.uns["phenotype"]["disabled_rules"] == ["endothelial"]
    assert len(t.obs) == 6


def test_gates_override_otsu():
    t = _table({"PanCK": [0, 0, 0, 0], "CD8": [0.1, 0.2, 5.0, 6.0]})
    scheme = PhenotypeScheme.from_dict(
        {**RULES, "gates": {"CD8a": 2.4}}
    )  # asinh units: asinh(5)=2.31, asinh(6)=2.49
    assign_phenotypes(t, scheme)
    assert t.obs["phenotype"].astype(str).tolist() == ["other", "other", "other", "cd8_t"]
    assign_phenotypes(t, PhenotypeScheme.from_dict(RULES))  # Otsu: between the two groups
    assert t.obs["phenotype"].astype(str).tolist() == ["other", "other", "cd8_t", "cd8_t"]


def test_spillover_revokes_a_dim_neighbour_of_a_bright_positive():
    # cells 0-1: a CD8 T cell (CD8 41 over a background of 0.5) and a tumour cell touching it with
    # a third of its signal; 2-3: two touching CD8 T cells of similar brightness; 4: a dim
    # positive alone, 50 µm away; 5-9: negatives
    cd8 = [41, 14, 30, 36, 14, 0.5, 0.6, 0.4, 0.5, 0.5]
    t = _table({"PanCK": [0, 9, 0, 0, 0, 0, 0, 0, 0, 9], "CD8": cd8})
    t.obs["x_um"] = [0, 8, 100, 108, 150, 300, 320, 340, 360, 380]
    t.obs["y_um"] = 0.0
    gates = {"PanCK": 1, "CD8": 1}
    off = PhenotypeScheme.from_dict(RULES)
    assign_phenotypes(t, off, thresholds=gates)
    assert t.obs["CD8_pos"].tolist()[:5] == [True] * 5
    on = PhenotypeScheme.from_dict({**RULES, "spillover": {"ratio": 0.5, "radius_um": 10}})
    assign_phenotypes(t, on, thresholds=gates)
    assert t.obs["CD8_pos"].tolist()[:5] == [True, False, True, True, True]
    assert t.obs["phenotype"].astype(str).tolist()[:5] == ["cd8_t", "tumour", "cd8_t", "cd8_t",
                                                           "cd8_t"]  # fmt: skip
    assert t.uns["phenotype"]["spillover"]["n_revoked"]["CD8"] == 1
    # a smaller radius does not reach the neighbour
    near = PhenotypeScheme.from_dict({**RULES, "spillover": {"ratio": 0.5, "radius_um": 5}})
    assign_phenotypes(t, near, thresholds=gates)
    assert t.obs["CD8_pos"].tolist()[:5] == [True] * 5


@pytest.mark.parametrize(
    "spill", [{"ratio": 1.5}, {"ratio": 0.5, "radius_um": 0}, {"ratio": 0.5, "radius": 3}]
)
def test_bad_spillover_settings_are_one_line_config_errors(spill):
    with pytest.raises(ConfigError, match="spillover") as err:
        PhenotypeScheme.from_dict({**RULES, "spillover": spill})
    assert "\n" not in str(err.value)


def test_otsu_in_the_gap_and_one_population():
    t, gap = otsu_threshold(np.r_[np.full(10, 0.1), np.full(5, 3.0)])
    assert t == pytest.approx(1.55) and gap == pytest.approx(2.9)
    t = _table({"PanCK": [0.1, 0.12, 0.11, 0.13], "CD8": [0, 0, 0, 0]})
    assign_phenotypes(t, PhenotypeScheme.from_dict(RULES))
    assert (t.obs["phenotype"].astype(str) == "other").all()


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"rules": [{"name": "x", "positive": ["NotAMarker"]}]}, "unknown marker 'NotAMarker'"),
        ({"rules": [{"name": "x", "parent": "y", "positive": ["CD8"]}]}, "unknown parent"),
        ({"rules": [], "cofactor": 1}, "no rules"),
        ({"rules": [{"name": "x", "positive": ["CD8"]}], "colour_me": 1}, "unknown key"),
    ],
)
def test_bad_rules_are_one_line_config_errors(bad, match):
    with pytest.raises(ConfigError, match=match) as err:
        PhenotypeScheme.from_dict(bad)
    assert "\n" not in str(err.value)


def _slide(sid: str, pid: str, cells: list[tuple[str, float, float, bool]], areas) -> SlideCells:
    phen = np.array([c[0] for c in cells])
    xy = np.array([[c[1], c[2]] for c in cells], float)
    inside = np.array([c[3] for c in cells])
    return SlideCells(sid, pid, phen, xy, inside, np.zeros(len(cells), bool),
                      np.where(inside, 5.0, -5.0), areas)  # fmt: skip


def test_spatial_features_against_hand_counts():
    scheme = PhenotypeScheme.from_dict(RULES)
    a = _slide("a", "P1", [("tumour", 0, 0, True), ("cd8_t", 3, 4, True), ("cd8_t", 100, 0, False),
                           ("clever1_macrophage", 100, 10, False), ("macrophage", 200, 0, False)],
               {"tissue": 2.0, "tumour": 0.5, "stroma": 1.5, "border": 0.1})  # fmt: skip
    b = _slide("b", "P1", [("cd8_t", 0, 0, False), ("macrophage", 0, 20, False)],
               {"tissue": 2.0, "tumour": 0.5, "stroma": 1.5, "border": 0.1})  # fmt: skip
    params = SpatialParams(radius_um=15.0, fraction_pseudocount=0.0)  # the raw k / n
    per_slide = feature_table([a, b], scheme, params, by="slide").set_index("slide_id")
    assert per_slide.loc["a", "density_cd8_t_tumour_per_mm2"] == pytest.approx(1 / 0.5)
    assert per_slide.loc["a", "density_cd8_t_stroma_per_mm2"] == pytest.approx(1 / 1.5)
    assert per_slide.loc["a", "density_macrophage_tissue_per_mm2"] == pytest.approx(2 / 2.0)
    assert per_slide.loc["a", "frac_intratumoural_cd8_t"] == pytest.approx(0.5)
    assert per_slide.loc["a", "frac_clever1_macrophage_of_macrophage"] == pytest.approx(0.5)
    assert per_slide.loc["a", "nn_median_um_cd8_t_to_tumour"] == pytest.approx(np.median([5, 100]))
    assert per_slide.loc["a", "nn_median_um_cd8_t_to_clever1_macrophage"] == pytest.approx(
        np.median([np.hypot(97, 6), 10])
    )
    # within 15 µm: tumour<->cd8 (5 µm), cd8<->clever1 (10 µm); the lone macrophage has none
    assert per_slide.loc["a", "nbr_frac_cd8_t_around_tumour_r15um"] == 1.0
    assert per_slide.loc["a", "nbr_frac_macrophage_around_cd8_t_r15um"] == pytest.approx(0.5)
    patient = feature_table([a, b], scheme, params).set_index("patient_id")
    assert patient.loc["P1", "n_slides"] == 2
    assert patient.loc["P1", "density_cd8_t_stroma_per_mm2"] == pytest.approx(2 / 3.0)
    assert patient.loc["P1", "frac_intratumoural_cd8_t"] == pytest.approx(1 / 3)
    assert patient.loc["P1", "frac_clever1_macrophage_of_macrophage"] == pytest.approx(1 / 3)
    # the default: (k + 1) / (n + 2), 1 of 3 -> 0.4; a type with no cells stays NaN
    shrunk = feature_table([a, b], scheme, SpatialParams(radius_um=15.0)).set_index("patient_id")
    assert shrunk.loc["P1", "frac_intratumoural_cd8_t"] == pytest.approx(2 / 5)
    assert shrunk.loc["P1", "frac_clever1_macrophage_of_macrophage"] == pytest.approx(2 / 5)
    assert np.isnan(shrunk.loc["P1", "frac_intratumoural_endothelial"])
    assert (
        "(k + 1) / (n + 2)"
        in feature_catalogue(scheme)
        .set_index("feature")
        .loc["frac_intratumoural_cd8_t", "description"]
    )
    cat = feature_catalogue(scheme, params)
    assert set(per_slide.columns) - {"patient_id"} == set(cat["feature"])
    assert cat["unit"].notna().all()
