"""Intensity split of merged nuclei, the margin weight of a spilling lineage marker, and the
depth at which an immune cell counts as intratumoural."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from immunoplex.cells import SegmentParams, run_slide, segment_slide
from immunoplex.cells.metrics import match_points
from immunoplex.cells.phenotype import PhenotypeScheme, assign_phenotypes
from immunoplex.cells.quantify import CellTable, CompartmentParams
from immunoplex.cells.spatial import SlideCells, SpatialParams, features
from immunoplex.cells.split import split_bright_cores
from immunoplex.errors import ConfigError
from immunoplex.io import open_slide

from .conftest import disc_image, grid_centres, write_slide

MPP = 0.5


def _nuclei_slide(tmp_path, seed: int = 0):
    """DAPI only, at 0.5 µm/px: a dim tumour-like nucleus (r 5 µm) with a bright lymphocyte-like
    nucleus (r 3 µm) lying on it (signals add, no neck between them), and one lone nucleus of
    each kind. Returns the path and the four true centres (µm)."""
    h = w = int(60 / MPP)
    yy, xx = (np.indices((h, w)) + 0.5) * MPP
    img = np.zeros((1, h, w), np.float32)
    discs = [((18.0, 20.0), 5.0, 60.0), ((20.5, 20.0), 3.0, 100.0),  # the merged pair
             ((42.0, 20.0), 5.0, 60.0), ((30.0, 45.0), 3.0, 100.0)]  # fmt: skip
    for (cx, cy), r, v in discs:
        img[0][np.hypot(xx - cx, yy - cy) <= r] += v
    rng = np.random.default_rng(seed)
    img += rng.normal(0, 1.5, img.shape).astype(np.float32).clip(0, None)
    path = write_slide(tmp_path / "pair.ome.tif", img, ["DAPI"], MPP)
    return path, np.array([c for c, _, _ in discs])


def _centres(labels: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    ids = np.arange(1, labels.max() + 1)
    com = np.array(ndi.center_of_mass(labels > 0, labels, ids))
    return (com[:, ::-1] + 0.5) * MPP


def test_bright_nucleus_on_a_dim_one_is_split(tmp_path):
    path, truth = _nuclei_slide(tmp_path)
    found = {}
    for ratio in (0.0, 1.25):
        params = SegmentParams(backend_params={"split_ratio": ratio}, membrane_markers="none")
        with open_slide(path) as slide:
            _, nuclei, _ = segment_slide(slide, params)
        found[ratio] = _centres(nuclei)
    # distance-transform seeds alone: the pair is one object
    assert len(found[0.0]) == 3
    # with the split: four nuclei, each within 2.5 µm of its true centre (the dim one loses the
    # overlap to the bright core, so its centroid moves away from it)
    assert len(found[1.25]) == 4
    score, _ = match_points(found[1.25], truth, max_distance=2.5)
    assert score.f1 == 1.0


def test_uniform_nuclei_are_not_split(tmp_path):
    # equal discs of one brightness (with noise and soft edges from the smoothing): no core
    centres = grid_centres(4, 3, 14.0)
    img, names = disc_image(centres, (50.0, 64.0), MPP, radius_um=4.0)
    path = write_slide(tmp_path / "uniform.ome.tif", img, names, MPP)
    with open_slide(path) as slide:
        _, nuclei, _ = segment_slide(slide, SegmentParams())
    assert nuclei.max() == len(centres)


def test_split_helper_leaves_single_objects_and_numbers_new_ones_after():
    lab = np.zeros((40, 40), np.int32)
    img = np.full((40, 40), 0.01, np.float32)
    yy, xx = np.indices(lab.shape)
    lab[np.hypot(yy - 20, xx - 20) <= 12] = 1
    img[lab == 1] = 0.5
    same = split_bright_cores(lab, img, 1.25, 30, 40, 3)
    assert (same == lab).all()
    img[np.hypot(yy - 20, xx - 25) <= 6] = 1.2  # a bright core inside the object
    out = split_bright_cores(lab, img, 1.25, 30, 40, 3)
    assert set(np.unique(out)) == {0, 1, 2}
    core = out == 2
    assert core[20, 25] and not core[20, 12] and (out[lab == 0] == 0).all()


def _table(values: dict[str, list[float]]) -> CellTable:
    markers = list(values)
    X = np.array([values[m] for m in markers], np.float32).T
    obs = pd.DataFrame({"cell_id": np.arange(1, len(X) + 1), "slide_id": "s"})
    return CellTable(obs, X, X.copy(), markers, markers, 1.0)


def test_margin_weight_of_a_spilling_marker():
    rules = [{"name": "tumour", "positive": ["PanCK"]}, {"name": "cd8_t", "positive": ["CD8"]}]
    # cell 0: a CD8 T cell in a nest whose PanCK (spill) passes more clearly than its CD8
    t = _table({"PanCK": [6, 9, 9, 0, 0], "CD8": [4, 0, 0, 9, 9]})
    thr = {"PanCK": 1.0, "CD8": 1.0}
    assign_phenotypes(t, PhenotypeScheme.from_dict({"cofactor": 1.0, "rules": rules}), thr)
    assert t.obs["phenotype"].astype(str).tolist() == ["tumour"] * 3 + ["cd8_t"] * 2
    weighted = [{**rules[0], "margin_weight": 0.6}, rules[1]]
    scheme = PhenotypeScheme.from_dict({"cofactor": 1.0, "rules": weighted})
    assign_phenotypes(t, scheme, thr)
    assert t.obs["phenotype"].astype(str).tolist() == [
        "cd8_t",
        "tumour",
        "tumour",
        "cd8_t",
        "cd8_t",
    ]
    assert t.uns["phenotype"]["rules"][0]["margin_weight"] == 0.6
    with pytest.raises(ConfigError, match="margin_weight"):
        PhenotypeScheme.from_dict({"rules": [{**rules[0], "margin_weight": 0}]})


def test_intratumoural_depth(tmp_path):
    # a 6 x 5 grid of cells, the tumour box covering the right part: cells near its edge are in
    # tumour but not `intratumoural_um` deep
    centres = grid_centres(6, 5, 18.0)
    img, names = disc_image(centres, (100.0, 120.0), 1.0, tumour_box_um=(44.0, 0.0, 120.0, 100.0))
    path = write_slide(tmp_path / "nest.ome.tif", img, names, 1.0)
    obs = {}
    for depth in (0.0, 12.0):
        comp = CompartmentParams(intratumoural_um=depth, mask_mpp=2.0, smooth_um=2.0)
        with open_slide(path) as slide:
            res = run_slide(slide, "n", compartments=comp)
        obs[depth] = o = res.table.obs
        inside = (o["compartment"] == "tumour").to_numpy()
        assert (o["intratumoural"].to_numpy() == (inside & (o["tumour_distance_um"] > depth))).all()
    assert (obs[0.0]["intratumoural"] == (obs[0.0]["compartment"] == "tumour")).all()
    n_in, n_deep = int(obs[0.0]["intratumoural"].sum()), int(obs[12.0]["intratumoural"].sum())
    assert 0 < n_deep < n_in
    # the feature counts the deep ones
    o = obs[12.0].assign(phenotype="cd8_t")
    cells = SlideCells(
        "n", "p", o["phenotype"].to_numpy(), o[["x_um", "y_um"]].to_numpy(),
        (o["compartment"] == "tumour").to_numpy(), o["in_border"].to_numpy(bool),
        o["tumour_distance_um"].to_numpy(), {"tissue": 1.0},
        intratumoural=o["intratumoural"].to_numpy(bool),
    )  # fmt: skip
    scheme = PhenotypeScheme.from_dict(
        {
            "rules": [
                {"name": "tumour", "positive": ["PanCK"]},
                {"name": "cd8_t", "positive": ["CD8"]},
            ]
        }
    )
    raw = SpatialParams(fraction_pseudocount=0.0)
    assert features([cells], scheme, raw)["frac_intratumoural_cd8_t"] == pytest.approx(
        n_deep / len(o)
    )
