"""AnnData / Parquet / OME-TIFF / GeoJSON outputs of one slide."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import tifffile

from immunoplex.cells import PhenotypeScheme, run_slide
from immunoplex.cells.io import read_h5ad
from immunoplex.cells.metrics import match_points
from immunoplex.io import open_slide
from immunoplex.paths import config_dir

from .conftest import disc_image, grid_centres, write_slide


def _slide(tmp_path):
    centres = grid_centres(6, 5, 18.0)
    cd8 = np.arange(len(centres)) % 3 == 0
    img, names = disc_image(centres, (100.0, 120.0), 0.5, markers={"CD8": cd8},
                            tumour_box_um=(0, 0, 55, 100))  # fmt: skip
    return open_slide(write_slide(tmp_path / "s.ome.tif", img, names, 0.5)), centres, cd8


def test_outputs_round_trip(tmp_path):
    slide, centres, cd8 = _slide(tmp_path)
    scheme = PhenotypeScheme.load(config_dir() / "cells" / "phenotypes" / "default.yaml")
    res = run_slide(slide, "S1", tmp_path / "out", scheme=scheme)
    f = res.files
    adata = ad.read_h5ad(f["h5ad"])
    assert adata.n_obs == len(centres) and list(adata.var_names) == ["DAPI", "CD45", "CD8", "PanCK"]
    assert adata.obsm["spatial"].shape == (len(centres), 2)
    assert np.allclose(adata.obsm["spatial"], adata.obs[["x_um", "y_um"]].to_numpy())
    assert "nuclear" in adata.layers and adata.uns["cells"]["mpp"] == 0.5
    table = read_h5ad(f["h5ad"])
    assert table.mpp == 0.5 and table.uns["phenotype"]["thresholds"]
    # the tumour box is x < 55 µm: compartments and signed distances follow it
    left = table.obs["x_um"].to_numpy() < 55
    assert (
        table.obs["compartment"].astype(str).to_numpy() == np.where(left, "tumour", "stroma")
    ).all()
    d = table.obs["tumour_distance_um"].to_numpy()
    assert (d[left] > 0).all() and (d[~left] < 0).all()
    assert np.allclose(np.abs(d), np.abs(table.obs["x_um"].to_numpy() - 55), atol=4.0)
    phen = table.obs["phenotype"].astype(str).to_numpy()
    # in the box every cell has the same PanCK (the fill), so a CD8+ cell there is a CD8 T cell
    # in a nest (PanCK's margin counts 0.6 in the default rules), the others tumour cells
    _, m = match_points(table.obs[["x_um", "y_um"]].to_numpy(), centres, 2.0)
    box = centres[:, 0] < 55
    assert (phen[m][box & cd8] == "cd8_t").all() and (phen[m][box & ~cd8] == "tumour").all()
    df = pd.read_parquet(f["parquet"])
    assert len(df) == len(centres) and {"CD8", "CD8_nuclear", "phenotype"} <= set(df.columns)
    with tifffile.TiffFile(f["mask"]) as tf:
        assert tf.is_ome and tf.series[0].shape == (200, 240)
        m = tf.series[0].asarray()
        assert m.dtype == np.uint32 and len(np.unique(m)) - 1 == len(centres)
        assert 'PhysicalSizeX="0.5"' in tf.ome_metadata
    gj = json.loads(f["geojson"].read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == len(centres)
    feat = gj["features"][0]
    assert feat["properties"]["objectType"] == "detection"
    assert {"name", "color"} <= set(feat["properties"]["classification"])
    ring = np.asarray(feat["geometry"]["coordinates"][0])
    assert (ring[0] == ring[-1]).all() and len(ring) >= 4
    # level-0 pixels: the ring surrounds the cell centroid (µm / 0.5)
    cx, cy = table.obs["x_um"].iat[0] / 0.5, table.obs["y_um"].iat[0] / 0.5
    assert ring[:, 0].min() < cx < ring[:, 0].max() and ring[:, 1].min() < cy < ring[:, 1].max()
    assert f["qc"].stat().st_size > 1000


def test_cd8_phenotypes_match_truth(tmp_path):
    slide, centres, cd8 = _slide(tmp_path)
    scheme = PhenotypeScheme.load(config_dir() / "cells" / "phenotypes" / "default.yaml")
    res = run_slide(slide, "S1", scheme=scheme)
    xy = res.table.obs[["x_um", "y_um"]].to_numpy()
    _, match = match_points(xy, centres, 2.0)
    phen = res.table.obs["phenotype"].astype(str).to_numpy()[match]
    stroma = centres[:, 0] >= 55
    assert (phen[stroma & cd8] == "cd8_t").all() and (phen[stroma & ~cd8] == "other").all()
