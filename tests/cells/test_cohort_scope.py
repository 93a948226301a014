"""``phenotypes.scope: cohort`` in the CLI: thresholds pooled over the run's slides (two passes)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir

from immunoplex.cli.cells import cells_cohort
from immunoplex.paths import config_dir

from .conftest import disc_image, grid_centres, write_slide


def _cohort(tmp_path):
    """Slide a: every other cell CD8+; slide b: every cell CD8+ (no negative class on it)."""
    rows = []
    for sid, cd8 in (("a", np.arange(8) % 2 == 0), ("b", np.ones(8, bool))):
        img, names = disc_image(grid_centres(4, 2, 18.0), (50.0, 80.0), 1.0,
                                markers={"CD8": cd8}, seed=len(rows))  # fmt: skip
        write_slide(tmp_path / f"{sid}.ome.tif", img, names, 1.0)
        rows.append({"slide_id": sid, "image": f"{sid}.ome.tif", "patient_id": sid})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    return tmp_path / "manifest.csv"


def _run(manifest, out, scope):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("cells", overrides=[f"manifest={manifest}", f"out_dir={out}",
                                          "progress=false", "outputs=[h5ad,parquet]",
                                          f"phenotypes.scope={scope}"])  # fmt: skip
    return cells_cohort(cfg)


def _n_cd8(out, sid):
    t = pd.read_parquet(out / "slides" / sid / "cells.parquet")
    return int((t["phenotype"] == "cd8_t").sum()), len(t)


def test_cohort_scope_pools_thresholds_over_slides(tmp_path):
    manifest = _cohort(tmp_path)
    per_slide = tmp_path / "slide"
    _run(manifest, per_slide, "slide")
    assert _n_cd8(per_slide, "a") == (4, 8)
    assert _n_cd8(per_slide, "b")[0] == 0  # one population on the slide: nobody positive

    pooled = tmp_path / "cohort"
    res = _run(manifest, pooled, "cohort")
    assert len(res["done"]) == 2 and not res["skipped"]
    assert _n_cd8(pooled, "a") == (4, 8) and _n_cd8(pooled, "b") == (8, 8)
    thr = json.loads((pooled / "thresholds.json").read_text())
    assert thr["scope"] == "cohort" and "CD8" in thr["thresholds"]
    for sid in ("a", "b"):  # both slides were phenotyped with the pooled thresholds
        s = json.loads((pooled / "slides" / sid / "settings.json").read_text())
        assert s["thresholds"] == thr["thresholds"]
    assert (pooled / "pass1" / "slides" / "a" / "cells.h5ad").is_file()
    feats = pd.read_csv(pooled / "slide_features.csv").set_index("slide_id")
    assert feats.loc["b", "density_cd8_t_tissue_per_mm2"] > 0
    again = _run(manifest, pooled, "cohort")  # resumable: both passes skip finished slides
    assert again["already"] == 2 and not again["done"]
