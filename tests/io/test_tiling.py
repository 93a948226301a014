"""Tissue detection, tile grids, tile reading with resampling, grid files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from immunoplex.errors import ConfigError, ResolutionError
from immunoplex.io import open_slide
from immunoplex.io.base import Slide
from immunoplex.tiles.grid import iter_tile_chunks, load_grid, make_tile_grid, read_tiles, save_grid
from immunoplex.tiles.params import TileGrid, TilingParams
from immunoplex.tiles.qc import PALETTE, composite, render_qc
from immunoplex.tiles.resample import choose_level, read_downsampled, read_resampled, shape_at
from immunoplex.tiles.tissue import detect_tissue, percentiles, slide_tissue
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


def record_reads(monkeypatch: pytest.MonkeyPatch, s: Slide) -> list[tuple[int, int, int, int]]:
    """(level, y, h, channels) of every read_region call on ``s``."""
    calls: list[tuple[int, int, int, int]] = []
    real = s.read_region

    def spy(level: int, y: int, x: int, h: int, w: int, channels: object = None) -> np.ndarray:
        calls.append((level, y, h, len(s.channels) if channels is None else len(channels)))
        return real(level, y, x, h, w, channels)

    monkeypatch.setattr(s, "read_region", spy)
    return calls


@pytest.mark.parametrize("mpp", [0.5, 0.8, 1.0, 1.37, 3.3, 8.0])
def test_strip_downsampling_equals_whole_level(
    slide_path: Path, mpp: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_slide(slide_path) as s:
        ref = read_resampled(s, mpp, 0, 0, *shape_at(s, mpp))  # one whole-level window
        calls = record_reads(monkeypatch, s)
        got = read_downsampled(s, mpp, [2, 0], max_strip_bytes=1)  # one segment row per strip
    np.testing.assert_allclose(got, ref[[2, 0]], rtol=1e-5, atol=1e-3)
    assert len(calls) > 1 and max(c[2] for c in calls) <= 64  # the tiles are 64 px high
    assert all(c[1] % 64 == 0 for c in calls)  # strips start on segment rows


def test_tissue_is_read_channel_by_channel_in_strips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = write_ome(tmp_path / "big.ome.tif", synthetic_image(3, 512), ["CD8", "DAPI", "PanCK"])
    params = TilingParams(tile_size=16, mpp=1.0)  # mask at 2 µm/px from the 0.5 µm/px level
    with open_slide(p) as s:
        whole = detect_tissue(read_resampled(s, 2.0, 0, 0, 128, 128), 2.0, params, nuclear=[1])
        calls = record_reads(monkeypatch, s)
        monkeypatch.setattr("immunoplex.tiles.resample.STRIP_BYTES", 64 << 10)
        mask, mmpp = slide_tissue(s, params)
    assert mmpp == 2.0 and mask.shape == (128, 128)
    np.testing.assert_array_equal(mask, whole)
    # one channel per call, at most 64 KiB of source rows (64 rows of 512 px) per call, and
    # each channel's strips cover the level once (the nuclear one too: blend keeps it scaled)
    assert {c[3] for c in calls} == {1} and max(c[2] for c in calls) == 64
    assert sum(c[2] for c in calls) == 512 * 3


def test_mask_side_is_capped(slide_path: Path) -> None:
    with open_slide(slide_path) as s:
        grid = make_tile_grid(s, TilingParams(tile_size=8, mpp=0.5, mask_max_side=100))
    assert grid.mask is not None and max(grid.mask.shape) <= 100
    assert grid.mask_mpp == pytest.approx(512 * 0.5 / 100)
    with pytest.raises(ConfigError, match="mask_max_side"):
        TilingParams(mask_max_side=4)


def test_tile_chunks_are_bounded(slide_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_slide(slide_path) as s:
        grid = make_tile_grid(s, TilingParams(tile_size=8, mpp=0.5, min_tissue=0.0))
        ref = read_tiles(s, grid)
        calls = record_reads(monkeypatch, s)
        got = np.zeros_like(ref)
        for idx, tiles in iter_tile_chunks(s, grid, max_chunk_bytes=64 * 64 * 3 * 2):
            assert np.all(np.diff(idx) > 0) and len(idx) <= 64
            got[idx] = tiles
    np.testing.assert_array_equal(got, ref)
    assert len(calls) == 64 and max(c[2] for c in calls) == 64  # 8x8 chunks of 64x64 px


def test_percentiles_match_numpy() -> None:
    rng = np.random.default_rng(3)
    q = [0.0, 0.1, 0.5, 1.0, 50.0, 99.0, 99.5, 99.9, 100.0]
    for a in (
        rng.normal(0, 3, (37, 91)),
        rng.integers(0, 4, 5000),
        np.r_[np.zeros(900), rng.gamma(1, 2, 100)],
        np.array([-2.5]),
    ):
        a = a.astype(np.float32)
        np.testing.assert_array_equal(percentiles(a, q, block=256), np.percentile(a, q))


def test_composite_channel_by_channel(slide_path: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img = rng.gamma(2, 100, (3, 40, 50)).astype(np.float32)
    mask = np.zeros((40, 50), bool)
    mask[10:30, 5:40] = True
    whole = composite(img, PALETTE[:3], mask)
    assert whole.rgb.shape == (40, 50, 3) and 0 < whole.rgb.max() <= 1
    streamed = composite(iter(img.copy()), PALETTE[:3], mask)
    np.testing.assert_array_equal(streamed.rgb, whole.rgb)
    # the limits come back (legend) and reproduce the image when given back (crops of a slide)
    assert whole.low.shape == whole.high.shape == (3,) and (whole.high > whole.low).all()
    again = composite(img, PALETTE[:3], limits=(whole.low, whole.high))
    np.testing.assert_array_equal(again.rgb, whole.rgb)
    crop = composite(img[:, 10:20, 5:15], PALETTE[:3], limits=(whole.low, whole.high))
    np.testing.assert_array_equal(crop.rgb, whole.rgb[10:20, 5:15])
    with open_slide(slide_path) as s:
        grid = make_tile_grid(s, TilingParams(tile_size=16, mpp=2.0))
        out = render_qc(s, grid, tmp_path / "qc.png", markers=["DAPI", "CD8"], max_size=64)
    assert out.stat().st_size > 1000


@pytest.mark.parametrize("axis", [1, 2])
def test_integer_box_factor_fast_path_equals_general_path(axis: int) -> None:
    from immunoplex.tiles.resample import _box_axis

    a = np.random.default_rng(0).integers(0, 4000, (2, 41, 43)).astype(np.uint16)
    n_out = a.shape[axis] // 4
    fast = _box_axis(a, n_out, 4.0, 0.0, axis)  # integer factor: reshape + sum
    general = _box_axis(a, n_out, 4.0 + 1e-7, 0.0, axis)  # fractional weights
    assert fast.shape == general.shape and fast.dtype == np.float32
    np.testing.assert_allclose(fast, general, rtol=1e-5)
    ref = np.take(a, np.arange(n_out * 4), axis=axis).astype(np.float64)
    shape = list(a.shape)
    shape[axis : axis + 1] = [n_out, 4]
    np.testing.assert_allclose(fast, ref.reshape(shape).mean(axis=axis + 1), rtol=1e-6)
    shifted = _box_axis(a, n_out - 1, 4.0, 2.0, axis)  # whole-pixel offset
    ref2 = np.take(a, np.arange(2, 2 + (n_out - 1) * 4), axis=axis).astype(np.float64)
    shape[axis] = n_out - 1
    np.testing.assert_allclose(shifted, ref2.reshape(shape).mean(axis=axis + 1), rtol=1e-6)
