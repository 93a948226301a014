"""Tissue detection, tile grids, tile reading with resampling, grid files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from immunoplex.errors import ConfigError, ResolutionError
from immunoplex.io import open_slide
from immunoplex.tiling import (
    TileGrid,
    TilingParams,
    choose_level,
    detect_tissue,
    load_grid,
    make_tile_grid,
    read_resampled,
    read_tiles,
    save_grid,
)
from tests.io.conftest import synthetic_image, write_ome


def block_mean(a: np.ndarray, k: int) -> np.ndarray:
    c, h, w = a.shape
    return a[:, : h // k * k, : w // k * k].reshape(c, h // k, k, w // k, k).mean((2, 4))


@pytest.fixture
def slide_path(tmp_path: Path) -> Path:
    return write_ome(
        tmp_path / "s.ome.tif",
        synthetic_image(3, 512),
        ["DAPI", "CD8", "PanCK"],
        mpp=0.5,
        levels=3,
        tile=64,
    )


def test_params_validation_and_dict() -> None:
    p = TilingParams(tile_size=16, mpp=1.0, stride=8, min_tissue=0.25)
    assert TilingParams.from_dict(p.to_dict()) == p
    assert p.step == 8 and TilingParams().step == 32
    with pytest.raises(ConfigError):
        TilingParams(min_tissue=1.5)
    with pytest.raises(ConfigError, match="unknown tiling parameter"):
        TilingParams.from_dict({"tile": 3})


def test_grid_covers_the_disk(slide_path: Path) -> None:
    with open_slide(slide_path) as s:
        params = TilingParams(tile_size=16, mpp=2.0, min_tissue=0.5)
        grid = make_tile_grid(s, params)
    assert isinstance(grid, TileGrid)
    assert grid.shape == (128, 128) and grid.mpp == 2.0
    assert grid.coords.dtype == np.int64 and grid.coords.shape[1] == 2
    assert (grid.tissue >= 0.5).all()
    # the disk has radius 0.3 * 512 px at 0.5 µm/px = 38.4 px at 2 µm/px, centre (64, 57.6)
    centre = grid.coords + 8
    r = np.hypot(centre[:, 0] - 64, centre[:, 1] - 57.6)
    assert r.max() < 38.4 + 12
    assert len(grid) >= int(np.pi * 30**2 / 256)


def test_detect_tissue_dim_and_dark() -> None:
    rng = np.random.default_rng(1)
    img = rng.poisson(0.2, (1, 100, 100)).astype(np.float32)
    img[0, 30:70, 30:70] += rng.poisson(3, (40, 40))  # a dim slide, dark background
    m = detect_tissue(img, 4.0, TilingParams(smooth_um=8, min_object_um2=100))
    assert m[35:65, 35:65].mean() > 0.95
    assert m[:20].mean() < 0.05
    full = detect_tissue(rng.poisson(50, (1, 64, 64)).astype(np.float32), 4.0)
    assert full.mean() > 0.95  # a field of view inside tissue is all tissue


def test_choose_level_and_read_tiles(slide_path: Path) -> None:
    data = synthetic_image(3, 512)
    with open_slide(slide_path) as s:
        assert choose_level(s, 2.0) == 2
        assert choose_level(s, 1.5) == 1
        assert choose_level(s, 0.1) == 0
        grid = make_tile_grid(s, TilingParams(tile_size=16, mpp=1.0, min_tissue=0.5))
        tiles = read_tiles(s, grid, [2, 0])
        assert tiles.shape == (len(grid), 2, 16, 16) and tiles.dtype == np.uint16
        lv1 = s.read_region(1, 0, 0, 256, 256, [2, 0])
        for i in [0, len(grid) // 2, len(grid) - 1]:
            y, x = grid.coords[i]
            np.testing.assert_array_equal(tiles[i], lv1[:, y : y + 16, x : x + 16])
    # a non-integer factor from level 0 matches area averaging of level 0
    with open_slide(slide_path) as s:
        got = read_resampled(s, 1.25, 40, 50, 16, 16, [0], level=0)
        ref = block_mean(data[:1].astype(np.float64), 5)[:, 20:28, 25:33]
        got2 = read_resampled(s, 2.5, 20, 25, 8, 8, [0], level=0)
        np.testing.assert_allclose(got2, ref, rtol=1e-5)
        assert got.shape == (1, 16, 16)


def test_read_tiles_into_out_channels(slide_path: Path) -> None:
    with open_slide(slide_path) as s:
        grid = make_tile_grid(s, TilingParams(tile_size=16, mpp=2.0))
        ref = read_tiles(s, grid)
        out = np.zeros((len(grid), 5, 16, 16), np.uint16)
        read_tiles(s, grid, [0, 2], out=out, out_channels=[4, 1])
    np.testing.assert_array_equal(out[:, 4], ref[:, 0])
    np.testing.assert_array_equal(out[:, 1], ref[:, 2])
    assert not out[:, [0, 2, 3]].any()


def test_unknown_mpp_refused(tmp_path: Path) -> None:
    p = write_ome(tmp_path / "nompp.ome.tif", synthetic_image(2, 64), ["DAPI", "CD8"], mpp=None)
    with open_slide(p) as s, pytest.raises(ResolutionError, match="manifest 'mpp' column"):
        make_tile_grid(s, TilingParams())
    with open_slide(p, mpp=0.5) as s:
        assert make_tile_grid(s, TilingParams(tile_size=8)).shape == (16, 16)


def test_grid_parquet_round_trip(slide_path: Path, tmp_path: Path) -> None:
    with open_slide(slide_path) as s:
        grid = make_tile_grid(s, TilingParams(tile_size=16, mpp=2.0, stride=8))
        out = save_grid(grid, tmp_path / "g" / "s.parquet", slide=s, slide_id="s")
    back = load_grid(out)
    np.testing.assert_array_equal(back.coords, grid.coords)
    np.testing.assert_allclose(back.tissue, grid.tissue)
    assert back.params == grid.params and back.shape == grid.shape


def test_tiny_slide_gives_empty_grid(tmp_path: Path) -> None:
    p = write_ome(tmp_path / "t.ome.tif", synthetic_image(1, 20), ["DAPI"], tile=None)
    with open_slide(p) as s:
        grid = make_tile_grid(s, TilingParams(tile_size=32, mpp=2.0))
        assert len(grid) == 0
        assert read_tiles(s, grid).shape == (0, 1, 32, 32)
