"""Fixture factory for small multiplex test images written with tifffile (in tmp_path)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import tifffile

REALDATA = (
    Path(
        os.environ.get(
            "IMMUNOPLEX_REALDATA", Path(__file__).resolve().parents[3] / "shared" / "realdata"
        )
    )
    / "images"
)
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def synthetic_image(
    channels: int = 4, size: int = 256, dtype: str = "uint16", seed: int = 0
) -> np.ndarray:
    """(C, H, W): a bright disk of 'tissue' (nuclei texture in channel 0) on a dark background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size * 0.5, xx - size * 0.45)
    tissue = r < size * 0.3
    img = rng.poisson(3, (channels, size, size)).astype(np.float64)
    for c in range(channels):
        img[c] += tissue * (200 + 100 * c) * (0.5 + rng.random((size, size)))
    img[:, :4, :4] = 0  # a corner that reveals padding mistakes
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    if info is not None:
        img = np.clip(img, 0, info.max)
    return img.astype(dtype)


def write_ome(
    path: Path,
    data: np.ndarray,
    channels: Sequence[str] | None = None,
    mpp: float | None = 0.5,
    tile: int | None = 64,
    compression: str | None = "zlib",
    levels: int = 1,
    predictor: bool = False,
) -> Path:
    """OME-TIFF (C, H, W) with an optional SubIFD pyramid (2x block means)."""
    c = data.shape[0]
    names = list(channels) if channels is not None else [f"M{i}" for i in range(c)]
    meta: dict[str, object] = {"axes": "CYX", "Channel": {"Name": names}}
    if mpp is not None:
        meta.update(
            PhysicalSizeX=mpp, PhysicalSizeY=mpp, PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm"
        )
    kw: dict[str, object] = {"compression": compression, "photometric": "minisblack"}
    if tile:
        kw["tile"] = (tile, tile)
    if predictor:
        kw["predictor"] = True
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(data, subifds=levels - 1, metadata=meta, **kw)
        lv = data
        for _ in range(levels - 1):
            h, w = lv.shape[1] // 2, lv.shape[2] // 2
            lv = lv[:, : 2 * h, : 2 * w].reshape(c, h, 2, w, 2).mean((2, 4)).astype(data.dtype)
            tw.write(lv, subfiletype=1, **kw)
    return path


@pytest.fixture
def make_ome(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_ome(name="s.ome.tif", data=None, **write_ome kwargs) -> path``."""

    def factory(name: str = "slide.ome.tif", data: np.ndarray | None = None, **kw: object) -> Path:
        if data is None:
            data = synthetic_image()
        return write_ome(tmp_path / name, data, **kw)  # type: ignore[arg-type]

    return factory


@pytest.fixture
def realdata() -> Path:
    if not REALDATA.is_dir():
        pytest.skip(f"real third-party images not found at {REALDATA} (set IMMUNOPLEX_REALDATA)")
    return REALDATA
