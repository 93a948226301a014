"""OME-Zarr (OME-NGFF 0.4 on zarr v2, 0.5 on zarr v3), read lazily with ``zarr``.

The store is a folder whose group attributes hold ``multiscales`` (0.5: under ``ome``); its
``datasets`` are the pyramid levels, largest first. Axes follow the spec (``t``, ``c``, ``z``,
``y``, ``x``; any subset with ``y``/``x`` last): ``t`` and ``z`` are read at index 0, a missing
``c`` axis is one channel. Channel names are the ``omero.channels[].label`` values. µm/px is the
``y``/``x`` entry of each dataset's ``scale`` transformation (times the multiscale's own, if
any), converted from the axis ``unit`` (nanometer, micrometer, millimeter...); a scale without a
unit is taken as µm unless it is exactly 1 (the writers' "no scale given" default: unknown).
A bioformats2raw layout (the image in series group ``0``) is followed.

Reads are lazy: a window reads and decodes only the chunks it overlaps (``segment_rows`` is the
chunk height, so the tiling code reads whole chunk rows and nothing is decoded twice).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from immunoplex.errors import SlideReadError
from immunoplex.io.arraybase import ArraySlide

UNIT_UM = {
    "angstrom": 1e-4,
    "nanometer": 1e-3,
    "nm": 1e-3,
    "micrometer": 1.0,
    "micron": 1.0,
    "um": 1.0,
    "µm": 1.0,
    "millimeter": 1e3,
    "mm": 1e3,
    "centimeter": 1e4,
    "meter": 1e6,
}
log = logging.getLogger(__name__)


def is_ngff(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in ("zarr.json", ".zattrs", ".zgroup"))


def _ome_attrs(group: Any) -> dict[str, Any]:
    attrs = dict(group.attrs)
    return dict(attrs["ome"]) if isinstance(attrs.get("ome"), dict) else attrs


def _scale(transforms: Any) -> list[float] | None:
    for t in transforms or []:
        if isinstance(t, dict) and t.get("type") == "scale" and "scale" in t:
            return [float(v) for v in t["scale"]]
    return None


class NgffSlide(ArraySlide):
    """An OME-Zarr image: pyramid levels are the multiscale datasets."""

    format = "ome-zarr"

    def __init__(self, path: Path, mpp: float | None = None) -> None:
        super().__init__(path, mpp=mpp)
        import zarr

        src = str(path)
        try:
            group = zarr.open_group(str(path), mode="r")
            attrs = _ome_attrs(group)
            if "multiscales" not in attrs and "0" in group:  # bioformats2raw.layout
                group = group["0"]
                attrs = _ome_attrs(group)
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SlideReadError(f"{src}: cannot open OME-Zarr store ({reason})") from None
        ms = attrs.get("multiscales")
        if not isinstance(ms, list) or not ms or not ms[0].get("datasets"):
            raise SlideReadError(f"{src}: zarr store has no OME-NGFF 'multiscales' metadata")
        ms0 = ms[0]
        axes = [a if isinstance(a, dict) else {"name": str(a)} for a in ms0.get("axes") or []]
        names = [str(a.get("name", "")).lower() for a in axes]
        arrays = []
        for ds in ms0["datasets"]:
            try:
                arrays.append(group[str(ds["path"])])
            except Exception as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise SlideReadError(
                    f"{src}: multiscale dataset {ds.get('path')!r} cannot be opened ({reason})"
                ) from None
        ndim = len(arrays[0].shape)
        if not names:  # NGFF 0.1-0.3: 5D tczyx
            names = ["t", "c", "z", "y", "x"][-ndim:]
        if len(names) != ndim or names[-2:] != ["y", "x"]:
            raise SlideReadError(f"{src}: OME-Zarr axes {names} do not end in y, x ({ndim}D)")
        self._axes = names
        self._c_axis = names.index("c") if "c" in names else None
        levels = [_Level(a, names) for a in arrays]
        n_c = levels[0].shape[0]
        labels = [
            str(ch.get("label") or "").strip()
            for ch in ((attrs.get("omero") or {}).get("channels") or [])
        ]
        if len(labels) == n_c and all(labels):
            self.channels = labels
            self.channel_source = "file (omero channel labels)"
        else:
            self.channels = [f"Channel {i}" for i in range(n_c)]
            self.anonymous = True
            self.channel_source = "none (no omero channel labels)"
        self._finish_arrays(levels, self._mpp(ms0, axes, src), [lv.chunk_rows for lv in levels])

    def _mpp(self, ms0: dict[str, Any], axes: list[dict[str, Any]], src: str) -> float | None:
        scale = _scale(ms0["datasets"][0].get("coordinateTransformations"))
        outer = _scale(ms0.get("coordinateTransformations"))
        if scale is None:
            return None
        if outer is not None and len(outer) == len(scale):
            scale = [a * b for a, b in zip(scale, outer, strict=True)]
        ys, xs = scale[-2], scale[-1]
        units = [str(axes[i].get("unit") or "").lower() for i in (-2, -1)] if axes else ["", ""]
        if not units[0] and not units[1]:
            if ys == 1.0 and xs == 1.0:
                return None  # the writers' default scale: no physical size known
            units = ["micrometer", "micrometer"]
        factors = [UNIT_UM.get(u) for u in units]
        if None in factors:
            log.warning("%s: unknown OME-Zarr axis unit(s) %s; µm/px unknown", src, units)
            return None
        mpp = 0.5 * (ys * factors[0] + xs * factors[1])  # type: ignore[operator]
        return mpp if mpp > 0 and math.isfinite(mpp) else None

    def _read_window(self, level: int, idx: list[int], y0: int, y1: int, x0: int, x1: int) -> Any:
        return self._arrays[level].read(idx, y0, y1, x0, x1)


class _Level:
    """One multiscale dataset seen as (C, H, W); ``read`` touches only the overlapping chunks."""

    def __init__(self, arr: Any, axes: list[str]) -> None:
        self.arr = arr
        self.axes = axes
        shape = tuple(int(v) for v in arr.shape)
        c = shape[axes.index("c")] if "c" in axes else 1
        self.shape = (c, shape[-2], shape[-1])
        self.dtype = np.dtype(str(arr.dtype)) if not isinstance(arr.dtype, np.dtype) else arr.dtype
        chunks = getattr(arr, "chunks", None) or shape
        self.chunk_rows = int(chunks[-2])

    def read(self, idx: list[int], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        key: list[Any] = []
        for a in self.axes[:-2]:
            key.append(0 if a != "c" else None)
        key += [slice(y0, y1), slice(x0, x1)]
        c_pos = self.axes.index("c") if "c" in self.axes else None
        contiguous = idx == list(range(idx[0], idx[-1] + 1))
        if c_pos is None:
            out = self.arr[tuple(key)][None]
            return out[[0] * len(idx)] if len(idx) != 1 else out
        if contiguous:
            key[c_pos] = slice(idx[0], idx[-1] + 1)
            out = self.arr[tuple(key)]
        else:
            key[c_pos] = idx
            out = self.arr.oindex[tuple(key)]
        # remaining non-spatial axes were indexed by integers: (C, h, w) is left
        return np.asarray(out)


def store_fingerprint(path: Path) -> str:
    """Content digest of a zarr store: every file's name and size, the metadata documents whole
    and 16 evenly spaced chunk files (a store's chunks are many small files)."""
    import hashlib

    h = hashlib.sha1()
    files = sorted(p for p in path.rglob("*") if p.is_file())
    chunks = []
    for f in files:
        rel = f.relative_to(path).as_posix()
        h.update(f"{rel}\0{f.stat().st_size}\0".encode())
        if f.name in ("zarr.json", ".zattrs", ".zarray", ".zgroup", ".zmetadata"):
            h.update(f.read_bytes())
        else:
            chunks.append(f)
    step = max(1, len(chunks) // 16)
    for f in chunks[::step][:16]:
        h.update(f.read_bytes())
    return f"zarr-{h.hexdigest()}"
