"""TileCache: built once per (content, panel, params), memory-mapped, panel order, atomic."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from immunoplex.errors import PanelMismatchError
from immunoplex.io import open_slide
from immunoplex.io.panel import Panel
from immunoplex.tiles.cache import TileCache, TileSet
from immunoplex.tiles.grid import make_tile_grid, read_tiles
from immunoplex.tiles.params import TilingParams
from tests.io.conftest import synthetic_image, write_ome

PARAMS = TilingParams(tile_size=16, mpp=2.0, min_tissue=0.5)


@pytest.fixture
def slide_path(tmp_path: Path) -> Path:
    return write_ome(
        tmp_path / "s.ome.tif",
        synthetic_image(3, 256),
        ["HH3", "CD8a (FITC)", "Pan-Keratin"],
        levels=2,
        compression="zstd",
    )


def test_build_then_load(tmp_path: Path, slide_path: Path) -> None:
    cache = TileCache(tmp_path / "cache")
    panel = Panel(["PanCK", "DAPI", "CD8"])
    ts = cache.load_or_build(slide_path, panel, PARAMS)
    assert isinstance(ts, TileSet)
    assert ts.channels == ["PanCK", "DAPI", "CD8"] and ts.present == [True, True, True]
    assert isinstance(ts.tiles, np.memmap)
    with open_slide(slide_path) as s:
        ref = read_tiles(s, make_tile_grid(s, PARAMS), [2, 0, 1])
    np.testing.assert_array_equal(ts.tiles, ref)
    again = cache.load_or_build(slide_path, panel, PARAMS)
    assert again.key == ts.key and again.path == ts.path
    np.testing.assert_array_equal(again.coords, ts.coords)
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_missing_markers(tmp_path: Path, slide_path: Path) -> None:
    cache = TileCache(tmp_path / "cache")
    panel = Panel(["DAPI", "STAB1", "CD8"])
    with pytest.raises(PanelMismatchError, match=r"missing required marker\(s\) \['STAB1'\]"):
        cache.load_or_build(slide_path, panel, PARAMS)
    ts = cache.load_or_build(slide_path, panel, PARAMS, required=["DAPI"])
    assert ts.present == [True, False, True]
    assert not ts.tiles[:, 1].any() and ts.tiles[:, 0].any()


def test_key_depends_on_content_params_and_panel(tmp_path: Path, slide_path: Path) -> None:
    cache = TileCache(tmp_path / "cache")
    panel = Panel(["DAPI", "CD8"])
    k = cache.key(slide_path, panel, PARAMS)
    assert k == cache.key(slide_path, Panel(["DAPI", "CD8"]), PARAMS)
    assert k != cache.key(slide_path, Panel(["CD8", "DAPI"]), PARAMS)
    assert k != cache.key(slide_path, panel, TilingParams(tile_size=8, mpp=2.0))
    assert k != cache.key(slide_path, panel, PARAMS, mpp=0.4)
    other = write_ome(
        tmp_path / "o.ome.tif",
        synthetic_image(3, 256, seed=5),
        ["HH3", "CD8a (FITC)", "Pan-Keratin"],
        levels=2,
        compression="zstd",
    )
    assert k != cache.key(other, panel, PARAMS)


def test_half_written_entry_is_not_trusted(tmp_path: Path, slide_path: Path) -> None:
    cache = TileCache(tmp_path / "cache")
    panel = Panel(["DAPI"])
    ts = cache.load_or_build(slide_path, panel, PARAMS)
    (ts.path / "meta.json").unlink()  # as if a build died before finishing
    (tmp_path / "cache" / f".tmp-{ts.key}-dead").mkdir()
    assert cache.load(ts.key) is None
    again = cache.load_or_build(slide_path, panel, PARAMS)
    assert len(again) == len(ts) and (again.path / "meta.json").is_file()


def test_compressed_cache(tmp_path: Path, slide_path: Path) -> None:
    plain = TileCache(tmp_path / "a").load_or_build(slide_path, Panel(["DAPI", "CD8"]), PARAMS)
    packed = TileCache(tmp_path / "b", compress=True).load_or_build(
        slide_path, Panel(["DAPI", "CD8"]), PARAMS
    )
    np.testing.assert_array_equal(plain.tiles, packed.tiles)
    assert (packed.path / "tiles.zst").is_file()


def test_folder_slide_cache(tmp_path: Path) -> None:
    import tifffile

    d = tmp_path / "fov"
    d.mkdir()
    data = synthetic_image(2, 128)
    for name, arr in zip(["DAPI", "CD8"], data, strict=True):
        tifffile.imwrite(d / f"{name}.tif", arr)
    ts = TileCache(tmp_path / "c").load_or_build(d, Panel(["CD8", "DAPI"]), PARAMS, mpp=0.5)
    assert ts.tiles.shape[1:] == (2, 16, 16) and len(ts) > 0
    shutil.rmtree(tmp_path / "c")
