"""The Slide interface and the TIFF helpers every reader shares (dispatch is in :mod:`.open`).

A Slide is a stack of named channels with a resolution pyramid. Every TIFF-based format reduces to
a table ``planes[level][channel] -> (PageReader, sample)``; ``read_region`` then reads only the
tile/strip segments that overlap the window (see :mod:`immunoplex.io.segments`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import tifffile

from immunoplex.errors import ResolutionError, SlideReadError
from immunoplex.io.segments import SEGMENT_CACHE, Job, PageReader, SegmentLayout, run_jobs

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(
                max_workers=max(1, os.cpu_count() or 1), thread_name_prefix="immunoplex-io"
            )
        return _POOL


def default_threads() -> int:
    """Threads a slide uses for a large read_region (``$IMMUNOPLEX_IO_THREADS`` or all cores)."""
    env = os.environ.get("IMMUNOPLEX_IO_THREADS")
    if env:
        return max(1, int(env))
    return max(1, os.cpu_count() or 1)


Member = tuple[PageReader, int, tuple[int, ...], tuple[int, ...]]
"""(reader, segment-index offset of the sample plane, samples, output channels)."""
Plan = list[tuple[SegmentLayout, list[Member]]]


@dataclass(frozen=True)
class Plane:
    """One channel at one level: a page reader and the sample within that page."""

    reader: PageReader
    sample: int = 0


class Slide:
    """A multiplex image: named channels, pyramid levels, µm/px, windowed reads.

    Subclasses fill ``channels``, ``_planes`` (per level, per channel) and ``mpp`` in ``__init__``
    and call :meth:`_finish`. ``read_region`` pads windows that extend past the image with zeros.
    """

    format: str = "tiff"

    def __init__(self, path: str | os.PathLike[str], mpp: float | None = None) -> None:
        self.path = Path(path)
        self.channels: list[str] = []
        self.levels: list[tuple[int, int]] = []
        self.mpp: float | None = None
        self.dtype: np.dtype = np.dtype(np.uint16)
        self.threads: int = default_threads()
        self._planes: list[list[Plane]] = []
        self._plans: dict[tuple[int, tuple[int, ...]], Plan] = {}
        self._fds: list[int] = []
        self._files: list[tifffile.TiffFile] = []
        self._mpp_override = mpp
        self.channel_source: str = "file"  # where the names came from (see :mod:`.names`)
        self.anonymous = False  # True: the file names no channels ("Channel 0"...)

    # ------------------------------------------------------------------ set-up helpers
    def _open_fd(self, path: Path) -> int:
        fd = os.open(path, os.O_RDONLY)
        self._fds.append(fd)
        return fd

    def _finish(self, file_mpp: float | None) -> None:
        """Validate the plane table and fill levels, dtype and mpp."""
        src = str(self.path)
        if not self._planes or not self._planes[0]:
            raise SlideReadError(f"{src}: no image channels found")
        n = len(self._planes[0])
        if len(self.channels) != n:
            raise SlideReadError(f"{src}: {len(self.channels)} channel names for {n} channels")
        seen: dict[str, int] = {}
        for i, name in enumerate(self.channels):
            if name in seen:
                raise SlideReadError(
                    f"{src}: duplicated channel name {name!r} (channels {seen[name]} and {i})"
                )
            seen[name] = i
        levels: list[tuple[int, int]] = []
        keep: list[list[Plane]] = []
        for planes in self._planes:
            if len(planes) != n:
                break
            shapes = {(p.reader.layout.height, p.reader.layout.width) for p in planes}
            if len(shapes) != 1:
                if not levels:
                    raise SlideReadError(f"{src}: channels differ in size {sorted(shapes)}")
                break
            shape = shapes.pop()
            if levels and (shape[0] > levels[-1][0] or shape[1] > levels[-1][1]):
                break
            levels.append(shape)
            keep.append(planes)
        self._planes = keep
        self.levels = levels
        self.dtype = np.result_type(*[p.reader.dtype for p in keep[0]])
        if self.dtype.kind not in "uif":
            raise SlideReadError(f"{src}: unsupported pixel type {self.dtype}")
        for p in keep[0]:
            end = p.reader.end_of_data()
            fsize = os.fstat(p.reader.fd).st_size
            if end > fsize:
                raise SlideReadError(
                    f"{p.reader.source}: truncated file (image data ends at byte {end}, "
                    f"file has {fsize})"
                )
        if self._mpp_override is not None:
            if not (self._mpp_override > 0 and np.isfinite(self._mpp_override)):
                raise ResolutionError(f"{src}: invalid µm/px override {self._mpp_override}")
            self.mpp = float(self._mpp_override)
        else:
            self.mpp = file_mpp
        # decode one segment now, so unsupported codecs fail at open rather than mid-run
        first = keep[0][0].reader
        if len(first.offsets):
            first.decode_segment(0)

    # ------------------------------------------------------------------ public API
    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) at level 0."""
        return (len(self.channels), *self.levels[0])

    def level_mpp(self, level: int) -> float:
        """µm/px at ``level``; raises ResolutionError when the slide's pixel size is unknown."""
        if self.mpp is None:
            raise ResolutionError(
                f"{self.path}: the file records no physical pixel size; give µm/px in the "
                "manifest 'mpp' column or the config 'mpp' override"
            )
        h0, w0 = self.levels[0]
        h, w = self.levels[level]
        return self.mpp * 0.5 * (w0 / w + h0 / h)

    def downsample(self, level: int) -> float:
        """Level-0 pixels per pixel at ``level`` (mean of both axes)."""
        h0, w0 = self.levels[0]
        h, w = self.levels[level]
        return 0.5 * (w0 / w + h0 / h)

    def _plan(self, level: int, idx: list[int]) -> Plan:
        """How ``read_region`` reads channels ``idx`` at ``level``: per segment layout, the
        (reader, segment-index offset, samples, output channels) to read for each cell.

        Channels stored as samples of one page share a decode per segment; planes of a planar
        page are separate segments. Cached per (level, channels).
        """
        key = (level, tuple(idx))
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        groups: dict[int, tuple[PageReader, list[int], list[int]]] = {}
        for pos, c in enumerate(idx):
            plane = self._planes[level][c]
            g = groups.setdefault(id(plane.reader), (plane.reader, [], []))
            g[1].append(plane.sample)
            g[2].append(pos)
        by_layout: dict[SegmentLayout, list[Member]] = {}
        for reader, samples, dest in groups.values():
            lay = reader.layout
            members = by_layout.setdefault(lay, [])
            if lay.planar:
                stride = lay.rows * lay.cols
                members += [
                    (reader, s * stride, (0,), (d,)) for s, d in zip(samples, dest, strict=True)
                ]
            else:
                members.append((reader, 0, tuple(samples), tuple(dest)))
        plan = list(by_layout.items())
        if len(self._plans) >= 256:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def segment_rows(self, level: int, channels: Sequence[int] | None = None) -> int:
        """Row period of the storage segments (tiles or strips) of ``channels`` at ``level``.

        Windows whose top and bottom edges fall on multiples of it cover every segment they touch
        whole: each segment is decoded once and none goes to the partial-segment cache. When the
        channels' segment heights have no small common multiple, the largest height is returned.
        """
        idx = range(len(self.channels)) if channels is None else channels
        heights = {self._planes[level][c].reader.layout.seg_h for c in idx}
        if not heights:
            return 1
        period = math.lcm(*heights)
        return period if period <= 8 * max(heights) else max(heights)

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
        inside = y >= 0 and x >= 0 and y + h <= lh and x + w <= lw
        # every pixel of an in-bounds window is written by some segment: skip the zero fill
        out = (np.empty if inside else np.zeros)((len(idx), h, w), self.dtype)
        if h == 0 or w == 0 or not idx:
            return out
        jobs: list[Job] = [
            (reader, base + i, sy, sx, samples, dest, whole)
            for layout, members in self._plan(level, idx)
            for i, sy, sx, whole in layout.cells(y, x, h, w)
            for reader, base, samples, dest in members
        ]
        if self.threads > 1 and len(jobs) > 1:
            k = min(self.threads, len(jobs))  # one batch of segments per thread
            for f in [_pool().submit(run_jobs, jobs[i::k], out, y, x) for i in range(k)]:
                f.result()
        else:
            run_jobs(jobs, out, y, x)
        if out.dtype.kind == "f" and not np.isfinite(out).all():
            bad = [self.channels[idx[i]] for i in range(len(idx)) if not np.isfinite(out[i]).all()]
            raise SlideReadError(
                f"{self.path}: NaN/inf pixel values in channel(s) {bad} (level {level}, "
                f"region y={y} x={x} h={h} w={w})"
            )
        return out

    def describe(self) -> dict[str, object]:
        """Plain summary (what ``immunoplex-inspect --json`` prints)."""
        return {
            "path": str(self.path),
            "format": self.format,
            "channels": list(self.channels),
            "channel_source": self.channel_source,
            "levels": [list(s) for s in self.levels],
            "dtype": str(self.dtype),
            "mpp": self.mpp,
            "level_mpp": [
                self.mpp * self.downsample(i) if self.mpp else None for i in range(len(self.levels))
            ],
        }

    def close(self) -> None:
        for planes in self._planes:
            for p in planes:
                SEGMENT_CACHE.drop(p.reader.uid)
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        for f in self._files:
            f.close()
        self._files.clear()

    def __enter__(self) -> Slide:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, format={self.format!r}, "
            f"channels={len(self.channels)}, levels={self.levels}, dtype={self.dtype}, "
            f"mpp={self.mpp})"
        )


# ---------------------------------------------------------------------- shared TIFF helpers
_SUFFIX = re.compile(r"\s*[\(\[][^\)\]]*[\)\]]\s*$")


def strip_suffix(name: str) -> str:
    """'CD8 (158)' -> 'CD8'; 'DAPI (DAPI)' -> 'DAPI'."""
    stripped = _SUFFIX.sub("", name).strip()
    return stripped or name.strip()


def tag_mpp(page: tifffile.TiffPage) -> float | None:
    """µm/px from the X/YResolution tags, or None when absent or not a physical size.

    Resolutions in inches that imply > 100 µm/px (the ubiquitous 72/96/300 dpi defaults) and
    unit-less resolutions are treated as unknown.
    """
    tags = page.tags
    if "XResolution" not in tags:
        return None
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    um_per_unit = {2: 25400.0, 3: 10000.0}.get(unit)
    vals = []
    for key in ("XResolution", "YResolution"):
        if key not in tags:
            continue
        num, den = tags[key].value
        if num and den:
            vals.append(num / den)
    if not vals or um_per_unit is None:
        return None
    mpp = um_per_unit / float(np.mean(vals))
    if not 0.005 <= mpp <= 100.0:
        return None
    return mpp


def check_tiff(path: Path) -> None:
    """Raise SlideReadError unless ``path`` is a non-empty file starting with a TIFF header."""
    if not path.exists():
        raise SlideReadError(f"{path}: no such file or directory")
    size = path.stat().st_size
    if size == 0:
        raise SlideReadError(f"{path}: empty file")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head not in TIFF_MAGIC:
        raise SlideReadError(f"{path}: not a TIFF file (header {head!r})")


def open_tiff(path: Path) -> tifffile.TiffFile:
    """tifffile.TiffFile with its errors turned into one-line SlideReadErrors."""
    check_tiff(path)
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)  # our one-line error replaces tifffile's warnings
    try:
        tif = tifffile.TiffFile(path)
        if not len(tif.pages):
            raise ValueError("no image pages")
        tif.pages[0]  # noqa: B018  (forces the first IFD to parse)
    except SlideReadError:
        raise
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SlideReadError(f"{path}: corrupt or unreadable TIFF ({reason})") from None
    finally:
        log.setLevel(level)
    return tif


def series_planes(
    series: tifffile.TiffPageSeries, fd: int, source: str
) -> list[list[tuple[PageReader, int]]]:
    """Per level, per channel (page reader, sample) for a tifffile series.

    The channel axis is 'C' (else 'I'/'Q', the axis tifffile uses for plain page stacks); other
    non-spatial axes (Z, T...) are taken at index 0; samples of a page (RGB) are channels too.
    """
    out: list[list[tuple[PageReader, int]]] = []
    for level in series.levels:
        pages = list(level.pages)
        if not pages or any(p is None for p in pages):
            raise SlideReadError(f"{source}: series has missing pages")
        kf = pages[0].keyframe
        page_axes = kf.axes
        axes = level.axes
        shape = level.shape
        lead_axes = axes[: len(axes) - len(page_axes)]
        lead_shape = shape[: len(lead_axes)]
        n_lead = int(np.prod(lead_shape)) if lead_shape else 1
        if len(pages) != n_lead:
            raise SlideReadError(
                f"{source}: series axes {axes} do not match its {len(pages)} pages"
            )
        ch_axis = next((lead_axes.index(a) for a in "CIQ" if a in lead_axes), None)
        n_c = lead_shape[ch_axis] if ch_axis is not None else 1
        spp = int(kf.samplesperpixel)
        readers: dict[int, PageReader] = {}
        planes: list[tuple[PageReader, int]] = []
        for c in range(n_c):
            coord = [0] * len(lead_axes)
            if ch_axis is not None:
                coord[ch_axis] = c
            pi = int(np.ravel_multi_index(coord, lead_shape)) if lead_shape else 0
            if pi not in readers:
                readers[pi] = PageReader(pages[pi], fd, source)
            for s in range(spp):
                planes.append((readers[pi], s))
        out.append(planes)
    return out
