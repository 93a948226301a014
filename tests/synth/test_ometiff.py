"""Slides read back with tifffile: pyramid, dtype, tiling, compression, OME-XML metadata."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tifffile

from immunoplex.io.write import is_complete_ome_tiff, n_levels, pyramid, write_ome_tiff
from immunoplex.synth.settings import resolve_settings

PANEL = ["DAPI", "PanCK", "CD8", "CD68", "STAB1", "CD31", "CD66b"]


def _channel_names(ome_xml: str) -> list[str]:
    return re.findall(r'<Channel [^>]*Name="([^"]*)"', ome_xml)


def test_generated_slides_read_back(synth_tiny):
    out, _ = synth_tiny
    assert resolve_settings("tiny")["image"]["panel"] == PANEL
    for path in sorted((out / "slides").glob("*.ome.tif"))[:5]:
        with tifffile.TiffFile(path) as tif:
            assert tif.is_ome
            series = tif.series[0]
            assert series.axes == "CYX"
            assert len(series.levels) >= 2
            assert series.dtype == np.uint16
            c, h, w = series.shape
            assert c == len(PANEL)
            for k, level in enumerate(series.levels):
                assert level.shape == (c, h >> k, w >> k)
                page = level.pages[0]
                assert page.is_tiled
                assert page.compression != tifffile.COMPRESSION.NONE
            assert tif.pages[0].subifds, "reduced levels must be SubIFDs"
            ome = tif.ome_metadata
            assert _channel_names(ome) == PANEL
            assert float(re.search(r'PhysicalSizeX="([^"]+)"', ome).group(1)) == 0.5
            assert re.search(r'PhysicalSizeXUnit="µm"', ome)
            base = series.levels[0].asarray()
            half = series.levels[1].asarray()
        assert base.max() > 1000  # real signal, not an empty canvas
        ref = base[:, : 2 * (h // 2), : 2 * (w // 2)].astype(np.float64)
        ref = ref.reshape(c, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
        assert np.abs(ref - half).max() <= 1.0


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((256, 256), 2), ((256, 224), 2), ((512, 512), 3), ((1024, 896), 3), ((1024, 1024), 4),
     ((100, 80), 2), ((4096, 4096), 6)],
)  # fmt: skip
def test_pyramid_levels(shape, expected):
    assert n_levels(shape) == expected
    data = np.zeros((1, *shape), np.uint16)
    levels = pyramid(data)
    assert len(levels) == expected
    assert min(levels[-1].shape[-2:]) < 256


def test_write_is_atomic_and_complete(tmp_path):
    data = (np.arange(3 * 300 * 200, dtype=np.uint32) % 4000).astype(np.uint16).reshape(3, 300, 200)
    path = tmp_path / "x.ome.tif"
    write_ome_tiff(path, data, ["DAPI", "CD8", "PanCK"], 0.5, compression="zlib")
    assert [p.name for p in tmp_path.iterdir()] == ["x.ome.tif"]
    assert is_complete_ome_tiff(path, (3, 300, 200), n_levels((300, 200)))
    np.testing.assert_array_equal(tifffile.imread(path), data)
    # a wrong shape or a truncated file is not complete
    assert not is_complete_ome_tiff(path, (3, 300, 201), n_levels((300, 200)))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 3])
    assert not is_complete_ome_tiff(path, (3, 300, 200), n_levels((300, 200)))
    # a failing write leaves neither the target nor a temporary file
    with pytest.raises(ValueError):
        write_ome_tiff(tmp_path / "bad.ome.tif", data, ["DAPI"], 0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.ome.tif"]
