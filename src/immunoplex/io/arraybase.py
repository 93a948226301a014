"""Slides backed by arrays rather than TIFF pages (IMC ``.txt``/``.mcd``, OME-Zarr).

A subclass fills ``channels`` and calls :meth:`ArraySlide._finish_arrays` with, per level, an
array-like of shape (C, H, W) (numpy, ``np.memmap``, or anything whose :meth:`_read_window` it
overrides). ``read_region`` has the :class:`~immunoplex.io.base.Slide` contract: (C, h, w) in the
file dtype, zeros outside the image, NaN/inf in float data is an error naming the channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from immunoplex.errors import ResolutionError, SlideReadError
from immunoplex.io.base import Slide


class ArraySlide(Slide):
    """Channels x rows x columns arrays per level; windows are sliced, not decoded from pages."""

    def _finish_arrays(
        self, arrays: Sequence[Any], file_mpp: float | None, seg_rows: Sequence[int] | None = None
    ) -> None:
        src = str(self.path)
        if not arrays:
            raise SlideReadError(f"{src}: no image data found")
        self._arrays = list(arrays)
        shapes = [tuple(int(v) for v in a.shape) for a in self._arrays]
        c, h, w = shapes[0]
        if c == 0 or h == 0 or w == 0:
            raise SlideReadError(f"{src}: zero-size image {shapes[0]}")
        if len(self.channels) != c:
            raise SlideReadError(f"{src}: {len(self.channels)} channel names for {c} channels")
        seen: dict[str, int] = {}
        for i, name in enumerate(self.channels):
            if name in seen:
                raise SlideReadError(
                    f"{src}: duplicated channel name {name!r} (channels {seen[name]} and {i})"
                )
            seen[name] = i
        levels: list[tuple[int, int]] = []
        for s in shapes:
            if s[0] != c or (levels and (s[1] > levels[-1][0] or s[2] > levels[-1][1])):
                break
            levels.append((s[1], s[2]))
        self._arrays = self._arrays[: len(levels)]
        self.levels = levels
        self._seg_rows = list(seg_rows or [1] * len(levels))[: len(levels)]
        self.dtype = np.dtype(self._arrays[0].dtype)
        if self.dtype.kind not in "uif":
            raise SlideReadError(f"{src}: unsupported pixel type {self.dtype}")
        if self._mpp_override is not None:
            if not (self._mpp_override > 0 and np.isfinite(self._mpp_override)):
                raise ResolutionError(f"{src}: invalid µm/px override {self._mpp_override}")
            self.mpp = float(self._mpp_override)
        else:
            self.mpp = file_mpp

    def segment_rows(self, level: int, channels: Sequence[int] | None = None) -> int:
        """Row period of the storage chunks (1 for in-memory data)."""
        return int(self._seg_rows[level])

    def _read_window(self, level: int, idx: list[int], y0: int, y1: int, x0: int, x1: int) -> Any:
        """(len(idx), y1-y0, x1-x0) of ``level`` (window inside the image)."""
        arr = self._arrays[level]
        if idx == list(range(arr.shape[0])):
            return np.array(arr[:, y0:y1, x0:x1])  # a copy: callers may write into it
        return np.array(arr[idx, y0:y1, x0:x1])

    def read_region(
        self,
        level: int,
        y: int,
        x: int,
        h: int,
        w: int,
        channels: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Window (C, h, w) of ``level`` in the file's dtype; pixels outside the image are 0."""
        if not 0 <= level < len(self.levels):
            raise IndexError(f"level {level} out of range (slide has {len(self.levels)})")
        if h < 0 or w < 0:
            raise ValueError(f"negative region size {h}x{w}")
        idx = list(range(len(self.channels))) if channels is None else [int(c) for c in channels]
        for c in idx:
            if not 0 <= c < len(self.channels):
                raise IndexError(f"channel {c} out of range (slide has {len(self.channels)})")
        lh, lw = self.levels[level]
        y0, y1 = max(y, 0), min(y + h, lh)
        x0, x1 = max(x, 0), min(x + w, lw)
        if y0 >= y1 or x0 >= x1 or not idx:
            return np.zeros((len(idx), h, w), self.dtype)
        try:
            data = np.asarray(self._read_window(level, idx, y0, y1, x0, x1), dtype=self.dtype)
        except SlideReadError:
            raise
        except Exception as exc:  # a chunk that cannot be read or decoded
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SlideReadError(
                f"{self.path}: cannot read level {level} region y={y} x={x} h={h} w={w} ({reason})"
            ) from None
        if (y0, y1, x0, x1) == (y, y + h, x, x + w):
            out = np.ascontiguousarray(data)
        else:
            out = np.zeros((len(idx), h, w), self.dtype)
            out[:, y0 - y : y1 - y, x0 - x : x1 - x] = data
        if out.dtype.kind == "f" and not np.isfinite(out).all():
            bad = [self.channels[idx[i]] for i in range(len(idx)) if not np.isfinite(out[i]).all()]
            raise SlideReadError(
                f"{self.path}: NaN/inf pixel values in channel(s) {bad} (level {level}, "
                f"region y={y} x={x} h={h} w={w})"
            )
        return out
