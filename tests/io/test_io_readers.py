"""Slide readers on synthetic TIFFs: every layout against the array that was written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from immunoplex.errors import ResolutionError
from immunoplex.io import Slide, open_slide
from tests.io.conftest import synthetic_image, write_ome


@pytest.mark.parametrize(
    ("tile", "compression", "predictor", "dtype"),
    [
        (64, "zlib", False, "uint16"),
        (64, "zstd", True, "uint16"),
        (None, None, False, "uint16"),
        (None, "lzw", True, "uint8"),
        (48, None, False, "float32"),
        (32, "zstd", False, "int16"),
    ],
)
def test_ome_round_trip(tmp_path: Path, tile, compression, predictor, dtype) -> None:
    data = synthetic_image(3, 200, dtype=dtype)
    p = write_ome(
        tmp_path / "a.ome.tif",
        data,
        ["DAPI", "CD8", "PanCK"],
        tile=tile,
        compression=compression,
        predictor=predictor,
        levels=3,
    )
    with open_slide(p) as s:
        assert isinstance(s, Slide)
        assert s.format == "ome-tiff"
        assert s.channels == ["DAPI", "CD8", "PanCK"]
        assert s.levels == [(200, 200), (100, 100), (50, 50)]
        assert s.dtype == np.dtype(dtype)
        assert s.mpp == pytest.approx(0.5)
        assert s.level_mpp(2) == pytest.approx(2.0)
        full = s.read_region(0, 0, 0, 200, 200)
        np.testing.assert_array_equal(full, data)
        # windows across segment edges, channel subsets in any order, the image edge
        np.testing.assert_array_equal(
            s.read_region(0, 37, 61, 90, 77, [2, 0]), data[[2, 0], 37:127, 61:138]
        )
        np.testing.assert_array_equal(s.read_region(0, 190, 195, 10, 5), data[:, 190:, 195:])
        lv1 = tifffile.TiffFile(p).series[0].levels[1].asarray()
        np.testing.assert_array_equal(s.read_region(1, 0, 0, 100, 100), lv1)


@pytest.mark.parametrize("compression", [None, "zlib", "zstd"])
def test_segment_aligned_windows(tmp_path: Path, compression: str | None) -> None:
    """Windows of whole tiles take the direct path (read/decoded straight into the output)."""
    data = synthetic_image(3, 256)
    p = write_ome(tmp_path / "t.ome.tif", data, tile=64, compression=compression)
    for threads in (1, 3):
        with open_slide(p, threads=threads) as s:
            for y, x, h, w in [(64, 128, 64, 64), (0, 192, 128, 64), (128, 0, 64, 256)]:
                np.testing.assert_array_equal(
                    s.read_region(0, y, x, h, w, [2, 0]), data[[2, 0], y : y + h, x : x + w]
                )


def test_out_of_bounds_is_zero_padded(make_ome) -> None:
    data = synthetic_image(2, 100)
    with open_slide(make_ome(data=data)) as s:
        r = s.read_region(0, 90, -5, 20, 15)
        assert r.shape == (2, 20, 15)
        np.testing.assert_array_equal(r[:, :10, 5:], data[:, 90:, :10])
        assert not r[:, 10:].any() and not r[:, :, :5].any()


def test_threads_do_not_change_result(make_ome) -> None:
    data = synthetic_image(4, 300)
    p = make_ome(data=data, tile=32)
    a = open_slide(p, threads=1).read_region(0, 5, 7, 250, 260)
    b = open_slide(p, threads=4).read_region(0, 5, 7, 250, 260)
    np.testing.assert_array_equal(a, b)


def test_mpp_override_and_unknown(make_ome) -> None:
    p = make_ome(mpp=None)
    s = open_slide(p)
    assert s.mpp is None
    with pytest.raises(ResolutionError, match="records no physical pixel size"):
        s.level_mpp(0)
    assert open_slide(p, mpp=0.65).level_mpp(0) == pytest.approx(0.65)


def test_generic_multipage_and_big_endian(tmp_path: Path) -> None:
    data = synthetic_image(3, 80)
    p = tmp_path / "stack.tif"
    tifffile.imwrite(
        p,
        data,
        byteorder=">",
        compression="zlib",
        rowsperstrip=7,
        resolution=(1 / 0.25e-4, 1 / 0.25e-4),
        resolutionunit="CENTIMETER",
    )
    with open_slide(p) as s:
        assert s.format == "tiff"
        assert s.channels == ["Channel 0", "Channel 1", "Channel 2"]
        assert s.mpp == pytest.approx(0.25)
        np.testing.assert_array_equal(s.read_region(0, 3, 4, 70, 60), data[:, 3:73, 4:64])


@pytest.mark.parametrize("planar", [False, True])
def test_generic_multisample(tmp_path: Path, planar: bool) -> None:
    yxs = np.moveaxis(synthetic_image(3, 64, dtype="uint8"), 0, -1)
    p = tmp_path / "rgb.tif"
    if planar:
        tifffile.imwrite(
            p,
            np.moveaxis(yxs, -1, 0),
            photometric="rgb",
            planarconfig="separate",
            tile=(32, 32),
            compression="zlib",
        )
    else:
        tifffile.imwrite(p, yxs, photometric="rgb", compression="zstd", tile=(32, 32))
    with open_slide(p) as s:
        assert len(s.channels) == 3
        np.testing.assert_array_equal(
            s.read_region(0, 10, 20, 40, 30), np.moveaxis(yxs, -1, 0)[:, 10:50, 20:50]
        )
        np.testing.assert_array_equal(s.read_region(0, 0, 0, 64, 64, [2]), yxs[None, :, :, 2])


def test_generic_pagenames(tmp_path: Path) -> None:
    p = tmp_path / "named.tif"
    data = synthetic_image(2, 32)
    with tifffile.TiffWriter(p) as tw:
        for i, name in enumerate(["CD8 (158)", "HH3 (89)"]):
            tw.write(data[i], extratags=[(285, "s", 0, name, True)])
    with open_slide(p) as s:
        assert s.channels == ["CD8", "HH3"]


def test_folder_slide(tmp_path: Path) -> None:
    data = synthetic_image(3, 64)
    d = tmp_path / "fov"
    d.mkdir()
    for name, arr in zip(["CD8", "DAPI", "Pan-Keratin"], data, strict=True):
        tifffile.imwrite(d / f"{name}.tif", arr, compression="zlib")
    (d / "notes.txt").write_text("ignored")
    with open_slide(d) as s:
        assert s.format == "folder"
        assert s.channels == ["CD8", "DAPI", "Pan-Keratin"]
        np.testing.assert_array_equal(s.read_region(0, 0, 0, 64, 64), data)


def test_describe(make_ome) -> None:
    d = open_slide(make_ome(levels=2)).describe()
    assert d["format"] == "ome-tiff"
    assert d["levels"] == [[256, 256], [128, 128]]
    assert d["dtype"] == "uint16"
    assert d["mpp"] == pytest.approx(0.5)
