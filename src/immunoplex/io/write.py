"""The one OME-TIFF writer: tiled, pyramidal (reduced levels as SubIFDs), physical size, atomic.

Slides (synthetic cohort), heatmaps and label masks all go through :func:`write_ome_tiff`, so
QuPath, napari and :func:`immunoplex.io.open_slide` read them the same way. Reduced levels are 2x2
means for intensities (NaN-aware for floats) and nearest samples for label images.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile

from immunoplex.utils.atomic import atomic_path

Reduce = Literal["mean", "nearest"]


def reduce2(a: np.ndarray, how: Reduce = "mean") -> np.ndarray:
    """One 2x reduction of (..., H, W): block means (rounded for integers, NaN-aware for floats)
    or, for label images, the top-left sample of each block."""
    h, w = a.shape[-2] // 2, a.shape[-1] // 2
    if how == "nearest":
        return np.ascontiguousarray(a[..., 0 : 2 * h : 2, 0 : 2 * w : 2])
    b = a[..., : 2 * h, : 2 * w]
    if a.dtype.kind == "f":
        blocks = b.reshape(*b.shape[:-2], h, 2, w, 2)
        with np.errstate(invalid="ignore"), _quiet():
            out = np.nanmean(blocks, axis=(-3, -1))
        return out.astype(a.dtype)
    s = b.astype(np.uint64 if a.dtype.itemsize >= 4 else np.uint32)
    s = s[..., 0::2, 0::2] + s[..., 1::2, 0::2] + s[..., 0::2, 1::2] + s[..., 1::2, 1::2]
    return ((s + 2) // 4).astype(a.dtype)


class _quiet:
    """Silence numpy's 'Mean of empty slice' for all-NaN blocks (they stay NaN, as intended)."""

    def __enter__(self) -> None:
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._cm.__exit__(*exc)


def n_levels(shape: tuple[int, int], min_side: int = 256) -> int:
    """Levels of the default pyramid for a base of ``shape`` (H, W): halve while the smaller side
    is at least ``min_side``, and always at least two levels (so readers' pyramid paths run)."""
    h, w = shape
    n = 1
    while (min(h, w) >= min_side or n < 2) and h >= 2 and w >= 2:
        h, w, n = h // 2, w // 2, n + 1
    return n


def pyramid(
    data: np.ndarray, min_side: int = 256, levels: int | None = None, reduce: Reduce = "mean"
) -> list[np.ndarray]:
    """Base level plus 2x reductions: ``levels`` in all, or :func:`n_levels` of the base."""
    n = n_levels(data.shape[-2:], min_side) if levels is None else max(1, int(levels))
    out = [data]
    while len(out) < n and min(out[-1].shape[-2:]) >= 2:
        out.append(reduce2(out[-1], reduce))
    return out


def _tile_for(shape: tuple[int, ...], tile: int) -> tuple[int, int] | None:
    if max(shape[-2:]) < 16:
        return None
    side = max(16, min(tile, 1 << int(np.floor(np.log2(max(min(shape[-2:]), 16))))))
    side -= side % 16
    return (side, side)


def write_ome_tiff(
    path: str | Path,
    data: np.ndarray,
    channel_names: Sequence[str],
    mpp: float | tuple[float, float],
    *,
    tile: int = 256,
    min_level_side: int = 256,
    levels: int | None = None,
    reduce: Reduce = "mean",
    compression: str = "zlib",
    compression_level: int | None = None,
    name: str | None = None,
    description: str | None = None,
    maxworkers: int = 1,
) -> Path:
    """Write ``data`` (C, Y, X) as a tiled pyramidal OME-TIFF, atomically.

    ``mpp`` is µm/px of the base level, one value or (y, x). The OME UUID derives from the content
    (tifffile's is time-based), so identical data gives byte-identical files.
    """
    path = Path(path)
    if data.ndim != 3 or data.shape[0] != len(channel_names):
        raise ValueError(f"{path}: data {data.shape} does not match {len(channel_names)} channels")
    mpp_y, mpp_x = (float(mpp), float(mpp)) if np.isscalar(mpp) else map(float, mpp)  # type: ignore[arg-type]
    pyr = pyramid(data, min_level_side, levels, reduce)
    digest = hashlib.sha1(np.ascontiguousarray(data[:, ::16, ::16]).tobytes()).hexdigest()
    metadata: dict[str, object] = {
        "UUID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"immunoplex/{path.name}/{digest}")),
        "axes": "CYX",
        "Name": name or path.name.split(".")[0],
        "Channel": {"Name": list(channel_names)},
        "PhysicalSizeX": mpp_x,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": mpp_y,
        "PhysicalSizeYUnit": "µm",
    }
    if description:
        metadata["Description"] = description
    comp: dict[str, object] = {"compression": compression}
    if compression_level is not None:
        comp["compressionargs"] = {"level": int(compression_level)}
    with (
        atomic_path(path) as tmp,
        tifffile.TiffWriter(tmp, bigtiff=data.nbytes > 2**31, ome=True) as tif,
    ):
        for i, level in enumerate(pyr):
            scale = 2**i
            tif.write(
                level,
                subifds=len(pyr) - 1 if i == 0 else None,
                subfiletype=0 if i == 0 else 1,
                tile=_tile_for(level.shape, tile),
                photometric="minisblack",
                resolution=(1e4 / (mpp_x * scale), 1e4 / (mpp_y * scale)),
                resolutionunit="CENTIMETER",
                metadata=metadata if i == 0 else None,
                maxworkers=maxworkers,
                **comp,
            )
    return path


def is_complete_ome_tiff(path: Path, shape: tuple[int, ...], levels: int) -> bool:
    """True when ``path`` is a readable OME-TIFF of the expected shape and number of levels."""
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return tuple(series.shape) == tuple(shape) and len(series.levels) == levels
    except Exception:  # noqa: BLE001 - any unreadable file is simply incomplete
        return False
