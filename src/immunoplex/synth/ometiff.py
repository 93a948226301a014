"""Tiled, pyramidal OME-TIFF writing (reduced levels as SubIFDs), always atomic."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import numpy as np
import tifffile


def pyramid(data: np.ndarray, min_side: int = 256) -> list[np.ndarray]:
    """Base level plus 2x (mean) reductions until the smaller side is below ``min_side``.

    Always at least two levels, so every reader's pyramid code path is exercised.
    """
    levels = [data]
    while min(levels[-1].shape[-2:]) >= min_side or len(levels) < 2:
        a = levels[-1]
        h, w = a.shape[-2] // 2, a.shape[-1] // 2
        if h < 1 or w < 1:
            break
        a = a[..., : 2 * h, : 2 * w].astype(np.uint32)
        s = a[..., 0::2, 0::2] + a[..., 1::2, 0::2] + a[..., 0::2, 1::2] + a[..., 1::2, 1::2]
        levels.append(((s + 2) // 4).astype(data.dtype))
    return levels


def n_levels(shape: tuple[int, int], min_side: int = 256) -> int:
    """How many levels :func:`pyramid` makes for a base of ``shape`` (H, W)."""
    h, w = shape
    n = 1
    while (min(h, w) >= min_side or n < 2) and h >= 2 and w >= 2:
        h, w, n = h // 2, w // 2, n + 1
    return n


def _tile_for(shape: tuple[int, ...], tile: int) -> tuple[int, int]:
    side = max(16, min(tile, 1 << int(np.floor(np.log2(max(min(shape[-2:]), 16))))))
    side -= side % 16
    return (side, side)


def write_ome_tiff(
    path: Path,
    data: np.ndarray,
    channel_names: list[str],
    mpp: float,
    *,
    tile: int = 256,
    min_level_side: int = 256,
    compression: str = "zlib",
    compression_level: int | None = None,
    name: str | None = None,
    maxworkers: int = 1,
) -> None:
    """Write ``data`` (C, Y, X) uint16 as a tiled pyramidal OME-TIFF, atomically.

    The file is written under a temporary name in the same directory and renamed into place, so a
    reader never sees a partial file at ``path``.
    """
    if data.ndim != 3 or data.shape[0] != len(channel_names):
        raise ValueError(f"{path}: data {data.shape} does not match {len(channel_names)} channels")
    path = Path(path)
    levels = pyramid(data, min_level_side)
    # A UUID derived from the content (tifffile's default is time-based), so that the same seed
    # gives byte-identical files.
    digest = hashlib.sha1(np.ascontiguousarray(data[:, ::16, ::16]).tobytes()).hexdigest()
    metadata = {
        "UUID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"immunoplex-synth/{path.name}/{digest}")),
        "axes": "CYX",
        "Name": name or path.name.split(".")[0],
        "Channel": {"Name": list(channel_names)},
        "PhysicalSizeX": mpp,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": mpp,
        "PhysicalSizeYUnit": "µm",
    }
    comp = {"compression": compression}
    if compression_level is not None:
        comp["compressionargs"] = {"level": int(compression_level)}  # type: ignore[assignment]
    bigtiff = data.nbytes > 2**31
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff, ome=True) as tif:
            for i, level in enumerate(levels):
                scale = 2**i
                tif.write(
                    level,
                    subifds=len(levels) - 1 if i == 0 else None,
                    subfiletype=0 if i == 0 else 1,
                    tile=_tile_for(level.shape, tile),
                    photometric="minisblack",
                    resolution=(1e4 / (mpp * scale), 1e4 / (mpp * scale)),
                    resolutionunit="CENTIMETER",
                    metadata=metadata if i == 0 else None,
                    maxworkers=maxworkers,
                    **comp,
                )
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def is_complete_slide(path: Path, shape: tuple[int, int, int], levels: int) -> bool:
    """True when ``path`` is a readable OME-TIFF of the expected shape and number of levels."""
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return tuple(series.shape) == tuple(shape) and len(series.levels) == levels
    except Exception:  # noqa: BLE001 - any unreadable file is simply incomplete
        return False
