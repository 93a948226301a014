"""The settings tuned on the synthetic cohort: minimum-error thresholds, margin resolution of
lineage conflicts, the hysteresis floor, streamed GeoJSON, and the shared QC composite."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from immunoplex.cells import run_slide
from immunoplex.cells.io import OutlineSpool, cell_outlines, write_geojson
from immunoplex.cells.phenotype import (
    PhenotypeScheme,
    assign_phenotypes,
    min_error_threshold,
    otsu_threshold,
)
from immunoplex.cells.quantify import CellTable
from immunoplex.cells.segment import SegmentParams
from immunoplex.io import open_slide

from .conftest import disc_image, grid_centres, write_slide

RULES = {
    "cofactor": 1.0,
    "rules": [
        {"name": "tumour", "positive": ["PanCK"]},
        {"name": "cd8_t", "positive": ["CD8"]},
    ],
}


def _table(values: dict[str, list[float]]) -> CellTable:
    markers = list(values)
    X = np.array([values[m] for m in markers], np.float32).T
    obs = pd.DataFrame({"cell_id": np.arange(1, len(X) + 1), "slide_id": "s"})
    return CellTable(obs, X, X.copy(), markers, markers, 1.0)


def test_min_error_finds_a_rare_positive_class():
    rng = np.random.default_rng(0)
    # two negative backgrounds (tumour, stroma) and 3% positives: Otsu splits the backgrounds
    neg = np.r_[rng.normal(2.5, 0.15, 500), rng.normal(3.2, 0.2, 450)]
    pos = rng.normal(5.2, 0.3, 30)
    t, gap, bimodal = min_error_threshold(np.r_[neg, pos])
    assert neg.max() < t < pos.min() and gap > 1.5 and bimodal
    assert otsu_threshold(np.r_[neg, pos])[0] < neg.max()


def test_margin_resolves_spill_between_lineages():
    # cell 1: a CD8 T cell in a nest (PanCK spill); cell 0: a tumour cell with CD8 spill
    t = _table({"PanCK": [9, 1.5, 9, 9, 0, 0], "CD8": [1.5, 9, 0, 0, 9, 9]})
    thr = {"PanCK": 1.0, "CD8": 1.0}
    assign_phenotypes(t, PhenotypeScheme.from_dict(RULES), thresholds=thr)
    assert t.obs["phenotype"].astype(str).tolist()[:2] == ["tumour", "cd8_t"]
    assign_phenotypes(t, PhenotypeScheme.from_dict({**RULES, "resolve": "first"}), thresholds=thr)
    assert t.obs["phenotype"].astype(str).tolist()[:2] == ["tumour", "tumour"]
    assert t.uns["phenotype"]["resolve"] == "first"


def test_object_floor_drops_faint_blobs(tmp_path):
    centres = grid_centres(2, 2, 20.0)
    img, names = disc_image(centres, (50.0, 50.0), 1.0)
    cx, cy = centres[3]
    yy, xx = np.indices(img.shape[1:]) + 0.5
    img[0][np.hypot(xx - cx, yy - cy) <= 4.0] *= 0.12  # a faint nucleus-sized blob
    path = write_slide(tmp_path / "faint.ome.tif", img, names, 1.0)
    counts = {}
    for floor in (0.0, 0.6):
        params = SegmentParams(backend_params={"object_floor": floor})
        with open_slide(path) as slide:
            counts[floor] = len(run_slide(slide, "f", segment=params).table)
    assert counts == {0.0: 4, 0.6: 3}


def test_geojson_from_spool_equals_in_memory(tmp_path, disc_slide):
    path, _ = disc_slide
    out = tmp_path / "o"
    with open_slide(path) as slide:
        res = run_slide(slide, "d", out, outputs=["geojson", "mask"])
    assert not list(out.glob(".outlines.*"))  # the spool is removed
    doc = json.loads((out / "cells.geojson").read_text())
    assert len(doc["features"]) == len(res.table) == 30
    labels = __import__("tifffile").imread(res.files["mask"])
    ids = res.table.obs["cell_id"].to_numpy()
    rings = cell_outlines(labels, ids, 0, 0, 1.0)
    spool = OutlineSpool(tmp_path)
    spool.update(dict(list(rings.items())[:10]))
    spool.update(dict(list(rings.items())[10:]))
    a = write_geojson(tmp_path / "a.geojson", res.table, rings).read_bytes()
    b = write_geojson(tmp_path / "b.geojson", res.table, spool).read_bytes()
    spool.close()
    assert a == b and not spool.path.exists()
    assert json.loads(a)["features"][0]["geometry"]["coordinates"][0] == rings[int(ids[0])]


def test_qc_uses_the_tiles_composite(tmp_path, disc_slide, monkeypatch):
    from immunoplex.cells import qc
    from immunoplex.cells.window import read_window
    from immunoplex.tiles import qc as tiles_qc

    calls = []
    real = tiles_qc.composite

    def spy(img, colours, *a, **k):
        calls.append(list(colours))
        return real(img, colours, *a, **k)

    monkeypatch.setattr(tiles_qc, "composite", spy)
    path, _ = disc_slide
    with open_slide(path) as slide:
        res = run_slide(slide, "d", tmp_path / "o", outputs=["qc"])
        assert res.files["qc"].stat().st_size > 0
        # a channel read in strips equals one read
        whole = read_window(slide, [0], 0, 0, 50, 60, 2.0)[0]
        np.testing.assert_allclose(qc._plane(slide, 0, (50, 60), 2.0, budget=4096), whole)
    assert calls and calls[0][0] == tiles_qc.NUCLEAR_COLOUR  # DAPI first, in the nuclear colour
