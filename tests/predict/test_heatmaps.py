"""Heatmap files: GeoJSON for QuPath, OME-TIFF geometry, PNG and montage."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from immunoplex.inference.heatmaps import geojson, write_slide_heatmaps
from immunoplex.inference.slideheat import Geometry, SlideHeat, tile_raster
from immunoplex.io import open_slide
from immunoplex.tiles.grid import make_tile_grid
from immunoplex.tiles.params import TilingParams


@pytest.fixture()
def heat(tiny_cohort: Path) -> SlideHeat:
    path = tiny_cohort / "slides" / "S0003.ome.tif"
    params = TilingParams(tile_size=16, mpp=2.0, min_tissue=0.0)  # every position: a full grid
    with open_slide(path) as slide:
        grid = make_tile_grid(slide, params)
    n = len(grid)
    rng = np.random.default_rng(0)
    att = rng.random(n)
    return SlideHeat(
        slide_id="S0003",
        path=path,
        coords=grid.coords,
        tile_size=16,
        tiling_mpp=2.0,
        attention=att / att.sum(),
        score=rng.normal(size=n),
        n_patient_tiles=n,
        patient_id="P0003",
        probability=0.7,
    )


def test_geojson_tiles_in_level0_pixels(heat: SlideHeat, tmp_path: Path) -> None:
    files = write_slide_heatmaps(heat, tmp_path, images=False)
    assert set(files) == {"tiles"}  # the GeoJSON is one of the heatmap outputs
    with open_slide(heat.path) as slide:
        gj = json.loads(json.dumps(geojson(heat, Geometry.of(slide, heat.tiling_mpp))))
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == len(heat.coords)
    with open_slide(heat.path) as slide:
        h0, w0 = slide.levels[0]
        scale = 2.0 / slide.mpp
    f0 = gj["features"][0]
    assert f0["properties"]["objectType"] == "tile"
    meas = f0["properties"]["measurements"]
    assert meas["attention"] == pytest.approx(heat.attention[0])
    assert meas["score"] == pytest.approx(heat.score[0])
    ring = np.asarray(f0["geometry"]["coordinates"][0])
    assert ring.shape == (5, 2) and (ring[0] == ring[-1]).all()
    y, x = heat.coords[0]
    assert ring[0].tolist() == [x * scale, y * scale]  # (x, y) order, level-0 pixels
    assert ring[2].tolist() == [(x + 16) * scale, (y + 16) * scale]
    allxy = np.concatenate([np.asarray(f["geometry"]["coordinates"][0]) for f in gj["features"]])
    assert allxy[:, 0].max() <= w0 + 1e-6 and allxy[:, 1].max() <= h0 + 1e-6
    tiles = pd.read_csv(tmp_path / "tiles.csv")
    assert tiles["attention_rank"].min() == 1
    assert tiles.loc[tiles["attention"].idxmax(), "attention_rank"] == 1


def test_ome_tiff_covers_the_slide_exactly(heat: SlideHeat, tmp_path: Path) -> None:
    files = write_slide_heatmaps(heat, tmp_path, images=True, top_k=6)
    assert {"ome_tiff", "png", "montage"} <= set(files)
    with tifffile.TiffFile(tmp_path / "heatmap.ome.tif") as tif:
        data = tif.series[0].asarray()
        ome = ET.fromstring(tif.ome_metadata)
    ns = {"o": ome.tag.split("}")[0].strip("{")}
    pix = ome.find(".//o:Pixels", ns)
    names = [c.get("Name") for c in pix.findall("o:Channel", ns)]
    assert names == ["attention", "score"] and data.dtype == np.float32
    with open_slide(heat.path) as slide:
        h0, w0 = slide.levels[0]
        mpp0 = slide.mpp
    sx = float(pix.get("PhysicalSizeX"))
    sy = float(pix.get("PhysicalSizeY"))
    assert sx == pytest.approx(2.0, rel=0.02)  # the tiling µm/px (up to whole-pixel rounding)
    assert data.shape[2] * sx == pytest.approx(w0 * mpp0)  # exactly the slide's extent
    assert data.shape[1] * sy == pytest.approx(h0 * mpp0)
    # each tile's pixels carry its attention and score
    y, x = heat.coords[5]
    assert data[0, y + 3, x + 3] == pytest.approx(heat.attention[5], rel=1e-6)
    assert data[1, y + 3, x + 3] == pytest.approx(heat.score[5], rel=1e-6)
    info = json.loads((tmp_path / "heatmap.json").read_text())
    assert info["ome_tiff"]["level0_per_pixel_x"] == pytest.approx(w0 / data.shape[2])
    for name in ("heatmap.png", "top_tiles.png"):
        import matplotlib.image as mpimg

        img = mpimg.imread(tmp_path / name)
        assert img.shape[0] > 200 and img.shape[1] > 400
        assert img[..., :3].std() > 0.05  # not blank


def test_tile_raster_averages_overlapping_tiles() -> None:
    geo = Geometry(level0=(8, 8), slide_mpp=1.0, tiling_shape=(8, 8), tiling_mpp=1.0)
    heat = SlideHeat(
        "s", Path("x"), np.array([[0, 0], [0, 2]]), 4, 1.0, np.array([1.0, 3.0]), np.zeros(2), 2
    )
    r = tile_raster(heat, geo, heat.attention)
    assert r[0, 0] == 1.0 and r[0, 3] == 2.0 and r[0, 5] == 3.0 and np.isnan(r[6, 6])
