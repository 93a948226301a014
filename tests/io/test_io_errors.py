"""Bad input gives one-line SlideReadErrors naming the file and the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from immunoplex.errors import SlideReadError
from immunoplex.io import open_slide
from tests.io.conftest import synthetic_image, write_ome


def _one_line(exc: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(path) in msg
    return msg


def test_not_a_tiff(tmp_path: Path) -> None:
    p = tmp_path / "fake.tif"
    p.write_bytes(b"%PDF-1.4 not an image at all")
    with pytest.raises(SlideReadError) as e:
        open_slide(p)
    assert "not a TIFF file" in _one_line(e, p)


def test_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(SlideReadError, match="no such file"):
        open_slide(tmp_path / "nope.tif")
    p = tmp_path / "empty.tif"
    p.touch()
    with pytest.raises(SlideReadError) as e:
        open_slide(p)
    assert "empty file" in _one_line(e, p)


@pytest.mark.parametrize("keep", [0.2, 0.97])
def test_truncated(tmp_path: Path, keep: float) -> None:
    src = write_ome(tmp_path / "full.ome.tif", synthetic_image(3, 128), compression=None)
    p = tmp_path / "cut.ome.tif"
    raw = src.read_bytes()
    p.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(SlideReadError) as e, open_slide(p) as s:
        s.read_region(0, 0, 0, 128, 128)
    msg = _one_line(e, p)
    assert "truncated" in msg or "corrupt" in msg


def _patch_tag(path: Path, tag: str, value: int) -> None:
    with tifffile.TiffFile(path) as t:
        off = t.pages[0].tags[tag].valueoffset
        t_type = t.pages[0].tags[tag].dtype
    raw = bytearray(path.read_bytes())
    n = 2 if int(t_type) == 3 else 4
    raw[off : off + n] = value.to_bytes(n, "little")
    path.write_bytes(bytes(raw))


def test_unsupported_compression(tmp_path: Path) -> None:
    p = tmp_path / "odd.tif"
    tifffile.imwrite(p, synthetic_image(1, 32)[0])
    _patch_tag(p, "Compression", 31234)
    with pytest.raises(SlideReadError) as e:
        open_slide(p)
    assert "unsupported TIFF compression 31234" in _one_line(e, p)


def test_zero_size(tmp_path: Path) -> None:
    p = tmp_path / "zero.tif"
    tifffile.imwrite(p, synthetic_image(1, 32)[0])
    _patch_tag(p, "ImageWidth", 0)
    with pytest.raises(SlideReadError) as e:
        open_slide(p)
    _one_line(e, p)


def test_duplicated_channel_names(tmp_path: Path) -> None:
    p = write_ome(tmp_path / "dup.ome.tif", synthetic_image(3, 32), ["DAPI", "CD8", "DAPI"])
    with pytest.raises(SlideReadError) as e:
        open_slide(p)
    assert "duplicated channel name 'DAPI'" in _one_line(e, p)


def test_nan_in_float_image(tmp_path: Path) -> None:
    data = synthetic_image(2, 64, dtype="float32")
    data[1, 10, 10] = np.nan
    p = write_ome(tmp_path / "nan.ome.tif", data, ["DAPI", "CD8"])
    with open_slide(p) as s:
        s.read_region(0, 20, 20, 10, 10)  # clean part reads fine
        with pytest.raises(SlideReadError) as e:
            s.read_region(0, 0, 0, 64, 64)
    assert "NaN/inf" in _one_line(e, p) and "CD8" in str(e.value)


def test_folder_with_multichannel_file(tmp_path: Path) -> None:
    d = tmp_path / "fov"
    d.mkdir()
    tifffile.imwrite(d / "DAPI.tif", synthetic_image(1, 32)[0])
    tifffile.imwrite(d / "stack.tif", synthetic_image(2, 32))
    with pytest.raises(SlideReadError, match="single-channel"):
        open_slide(d)


def test_folder_size_mismatch(tmp_path: Path) -> None:
    d = tmp_path / "fov"
    d.mkdir()
    tifffile.imwrite(d / "DAPI.tif", synthetic_image(1, 32)[0])
    tifffile.imwrite(d / "CD8.tif", synthetic_image(1, 40)[0])
    with pytest.raises(SlideReadError, match="differ in size"):
        open_slide(d)
