"""OME-Zarr (NGFF) stores written by ``ome-zarr`` read back by name, at the right µm/px, lazily."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from immunoplex.errors import SlideReadError
from immunoplex.io import open_slide
from immunoplex.io.panel import Panel, match_panel
from tests.io.conftest import synthetic_image

NAMES = ["DAPI", "CD8", "PanCK", "CD68"]


def write_ngff(
    path: Path,
    data: np.ndarray,
    names: list[str] | None = NAMES,
    mpp: float | None = 0.5,
    unit: str | None = "micrometer",
    chunks: int = 64,
) -> Path:
    """``data`` (C, H, W) as an OME-Zarr with 2 reduced levels, omero labels and a scale."""
    import zarr
    from ome_zarr.writer import write_image

    root = zarr.open_group(str(path), mode="w")
    axes: list[dict[str, str]] = [{"name": "c", "type": "channel"}]
    for a in "yx":
        axes.append({"name": a, "type": "space", **({"unit": unit} if unit else {})})
    kw: dict[str, object] = {}
    if mpp is not None:
        kw["scale"] = {"c": 1.0, "y": mpp, "x": mpp}
    if unit:
        kw["axes_units"] = {"y": unit, "x": unit}
    if names is not None:
        kw["omero"] = {
            "version": "0.5",
            "channels": [
                {"label": n, "color": "FFFFFF", "active": True,
                 "window": {"start": 0, "end": 1000, "min": 0, "max": 65535}}
                for n in names
            ],
        }  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_image(
            data,
            group=root,
            axes=axes,
            scale_factors=(2, 4),
            storage_options={"chunks": (1, chunks, chunks)},
            **kw,
        )
    return path


def test_ome_zarr_reads_back_by_name_at_the_right_mpp(tmp_path: Path) -> None:
    data = synthetic_image(channels=4, size=256)
    p = write_ngff(tmp_path / "s.ome.zarr", data, mpp=0.5)
    with open_slide(p) as s:
        assert s.format == "ome-zarr"
        assert s.channels == NAMES and s.channel_source == "file (omero channel labels)"
        assert s.mpp == pytest.approx(0.5)
        assert s.levels == [(256, 256), (128, 128), (64, 64)]
        assert s.level_mpp(1) == pytest.approx(1.0) and s.level_mpp(2) == pytest.approx(2.0)
        assert s.dtype == data.dtype and s.segment_rows(0) == 64
        np.testing.assert_array_equal(s.read_region(0, 0, 0, 256, 256), data)
        m = match_panel(Panel(["PanCK", "CD8"]), s.channels, source=p)
        i = m.indices[0]
        win = s.read_region(0, 30, 250, 40, 20, [i, 0])  # past the right edge: zeros
        np.testing.assert_array_equal(win[:, :, :6], data[[i, 0], 30:70, 250:256])
        assert not win[:, :, 6:].any()
        np.testing.assert_array_equal(
            s.read_region(0, 64, 0, 64, 64, [3, 1]), data[[3, 1], 64:128, :64]
        )


def test_ome_zarr_units_and_missing_labels(tmp_path: Path) -> None:
    data = synthetic_image(channels=2, size=64)
    p = write_ngff(tmp_path / "nm.ome.zarr", data, names=None, mpp=325.0, unit="nanometer")
    with open_slide(p) as s:
        assert s.mpp == pytest.approx(0.325)
        assert s.anonymous and s.channels == ["Channel 0", "Channel 1"]
    with open_slide(p, channel_names=["DAPI", "CD8"]) as s:
        assert s.channels == ["DAPI", "CD8"]
    q = write_ngff(tmp_path / "noscale.ome.zarr", data, mpp=None, unit=None, names=NAMES[:2])
    with open_slide(q) as s:
        assert s.mpp is None  # the writer's default scale of 1 says nothing physical
    with open_slide(q, mpp=0.8) as s:
        assert s.mpp == 0.8


def test_zarr_without_ngff_metadata_is_one_line_error(tmp_path: Path) -> None:
    import zarr

    p = tmp_path / "plain.zarr"
    zarr.open_group(str(p), mode="w").create_array("a", shape=(4, 4), dtype="u2")
    with pytest.raises(
        SlideReadError, match=r"plain.zarr: zarr store has no OME-NGFF 'multiscales'"
    ):
        open_slide(p)


def test_ome_zarr_tiles_and_caches(tmp_path: Path) -> None:
    from immunoplex.tiles.cache import TileCache, slide_fingerprint
    from immunoplex.tiles.params import TilingParams

    data = synthetic_image(channels=4, size=256)
    p = write_ngff(tmp_path / "s.ome.zarr", data, mpp=0.5)
    q = write_ngff(tmp_path / "t.ome.zarr", synthetic_image(channels=4, size=256, seed=1))
    assert slide_fingerprint(p) != slide_fingerprint(q)
    ts = TileCache(tmp_path / "cache").load_or_build(
        p, Panel(["DAPI", "CD8"]), TilingParams(tile_size=32, mpp=1.0, min_tissue=0.2)
    )
    assert len(ts) > 0 and ts.channels == ["DAPI", "CD8"] and ts.present == [True, True]
