"""Readers on third-party files in ../shared/realdata/images (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from immunoplex.io import open_slide
from immunoplex.io.panel import Panel, match_panel
from immunoplex.tiles.grid import make_tile_grid, read_tiles
from immunoplex.tiles.params import TilingParams

pytestmark = pytest.mark.realdata
MIBI = "mibitiff/fov8_RowNumber0_Depth_Profile0-MassCorrected-Filtered.tiff"


def test_ome_csm(realdata: Path) -> None:
    files = sorted((realdata / "csm_multiplex_if").glob("*.ome.tif"))
    assert len(files) == 2, f"expected the two CSM crops, found {files}"
    for p in files:
        with open_slide(p) as s:
            assert s.format == "ome-tiff"
            assert s.channels == ["DAPI", "PDL1", "GZMB", "PD1", "CK-EPCAM", "CD8a", "FOXP3"]
            assert s.levels[:2] == [(500, 500), (250, 250)]
            assert s.mpp is None
            ref = tifffile.imread(p)
            np.testing.assert_array_equal(s.read_region(0, 0, 0, 500, 500), ref)
            m = match_panel(Panel(["PanCK", "DAPI", "CD8"]), s.channels, source=p)
            assert m.indices == [4, 0, 5]


def test_vectra_qptiff(realdata: Path) -> None:
    p = realdata / "vectra_qptiff" / "small_vectra.qptiff"
    with open_slide(p) as s:
        assert s.format == "qptiff"
        assert s.channels == ["DAPI", "FITC", "Cy3"]  # thumbnail/overview/label are not channels
        assert s.levels == [(1440, 1920)] and s.dtype == np.uint8
        assert s.mpp == pytest.approx(0.4965, abs=1e-3)
        ref = tifffile.TiffFile(p).series[0].asarray()
        np.testing.assert_array_equal(s.read_region(0, 0, 0, 1440, 1920), ref)
        grid = make_tile_grid(s, TilingParams(tile_size=32, mpp=2.0))
        assert 40 < len(grid) < 120  # a round TMA core on a dark background
        assert 0.3 < grid.mask.mean() < 0.7


def test_inform_component(realdata: Path) -> None:
    p = next((realdata / "inform_component").glob("*component_data.tif"))
    with open_slide(p) as s:
        assert s.format == "qptiff"
        assert s.channels == ["Alexa 594", "Cy3", "Cy5", "DAPI", "FITC"]
        assert s.dtype == np.float32 and s.levels == [(260, 348)]
        np.testing.assert_array_equal(
            s.read_region(0, 0, 0, 260, 348), tifffile.TiffFile(p).series[0].asarray()
        )


def test_mibitiff_equals_folder(realdata: Path) -> None:
    with open_slide(realdata / MIBI) as m, open_slide(realdata / "mibi_fov_folder" / "fov8") as f:
        assert m.format == "mibitiff" and f.format == "folder"
        assert m.channels[7] == "CD8" and m.channel_labels[7] == "CD8 (158)"
        assert m.mpp == pytest.approx(400 / 1024)
        assert sorted(m.channels) == sorted(f.channels) and len(m.channels) == 22
        a = m.read_region(0, 0, 0, 1024, 1024)
        order = [f.channels.index(c) for c in m.channels]
        b = f.read_region(0, 0, 0, 1024, 1024, order)
        np.testing.assert_array_equal(a, b)  # same values (uint16 file vs uint8 files)
        panel = Panel(["DAPI", "PanCK", "CD8", "CD45"])
        im = match_panel(panel, m.channels, source=m.path)
        jf = match_panel(panel, f.channels, source=f.path)
        assert [m.channels[i] for i in im.indices] == ["HH3", "PanKeratin", "CD8", "CD45"]
        grid = make_tile_grid(m, TilingParams(tile_size=32, mpp=2.0))
        assert grid.mask.mean() > 0.95  # the whole field of view is tissue
        ta = read_tiles(m, grid, im.indices)
        tb = read_tiles(f.__class__(f.path, mpp=m.mpp), grid, jf.indices)
        np.testing.assert_array_equal(ta, tb)
