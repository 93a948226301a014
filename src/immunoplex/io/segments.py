"""Fast path: read a window of one TIFF page straight from its tile/strip segments.

Only the segments that overlap the window are read (``os.pread``, thread-safe) and decoded with
imagecodecs directly for the common codecs (none, zstd, deflate, LZW, LZMA, PackBits; horizontal
predictor), falling back to tifffile's own per-page decoder for everything else (JPEG tables,
floating-point predictor, odd bit depths...). Decoders release the GIL, so callers parallelise
across channels and segments with threads.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import imagecodecs
import numpy as np
import tifffile

from immunoplex.errors import SlideReadError

# TIFF compression tag value -> imagecodecs decoder taking (bytes) -> bytes-like
_DECODERS: dict[int, Callable[[bytes], bytes]] = {}


def _register() -> None:
    table = {
        5: "lzw_decode",
        8: "zlib_decode",
        32946: "zlib_decode",
        50000: "zstd_decode",
        34926: "zstd_decode",
        34925: "lzma_decode",
        32773: "packbits_decode",
    }
    for code, name in table.items():
        fn = getattr(imagecodecs, name, None)
        if fn is not None:
            _DECODERS[code] = fn


_register()


class SegmentCache:
    """Process-wide LRU of decoded segments, bounded in bytes.

    Only segments that a read covered partially are kept (large strips, tiles cut by a window
    edge): those are the ones a neighbouring window decodes again.
    """

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self._data: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int]) -> np.ndarray | None:
        with self._lock:
            arr = self._data.get(key)
            if arr is not None:
                self._data.move_to_end(key)
            return arr

    def put(self, key: tuple[int, int], arr: np.ndarray) -> None:
        if arr.nbytes > self.max_bytes // 4:
            return
        with self._lock:
            if key in self._data:
                return
            self._data[key] = arr
            self._bytes += arr.nbytes
            while self._bytes > self.max_bytes and self._data:
                _, old = self._data.popitem(last=False)
                self._bytes -= old.nbytes

    def drop(self, owner: int) -> None:
        with self._lock:
            for key in [k for k in self._data if k[0] == owner]:
                self._bytes -= self._data.pop(key).nbytes


_IOV_MAX = 1024  # buffers per preadv call (Linux)
_READER_IDS = itertools.count()
SEGMENT_CACHE = SegmentCache(int(os.environ.get("IMMUNOPLEX_SEGMENT_CACHE_MB", "256")) << 20)


@dataclass(frozen=True)
class SegmentLayout:
    """Geometry of a page's segments (tiles or strips) in pixels."""

    height: int
    width: int
    samples: int
    seg_h: int
    seg_w: int
    rows: int  # segments per column
    cols: int  # segments per row
    planar: bool  # planar configuration 2: one set of segments per sample

    def cells(self, y: int, x: int, h: int, w: int) -> list[tuple[int, int, int, bool]]:
        """Segments overlapping the window [y, y+h) x [x, x+w) as (row-major index of the
        first sample's segment, top, left, whole); whole: full-size and inside the window."""
        y0, y1 = max(y, 0), min(y + h, self.height)
        x0, x1 = max(x, 0), min(x + w, self.width)
        if y0 >= y1 or x0 >= x1:
            return []
        sh, sw = self.seg_h, self.seg_w
        rows = [
            (r * self.cols, r * sh, y <= r * sh and (r + 1) * sh <= y1)
            for r in range(y0 // sh, (y1 - 1) // sh + 1)
        ]
        cols = [
            (c, c * sw, x <= c * sw and (c + 1) * sw <= x1)
            for c in range(x0 // sw, (x1 - 1) // sw + 1)
        ]
        return [(i + c, sy, sx, wy and wx) for i, sy, wy in rows for c, sx, wx in cols]


class PageReader:
    """Reads windows of one TIFF page (all samples) from its segments."""

    def __init__(self, page: tifffile.TiffPage | tifffile.TiffFrame, fd: int, source: str) -> None:
        kf = page.keyframe
        self.uid = next(_READER_IDS)  # cache key; unlike id() never reused
        self.source = source
        self.fd = fd
        self.page = page
        self.keyframe = kf
        self.offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        self.counts = np.asarray(page.databytecounts, dtype=np.int64)
        h, w = int(kf.imagelength), int(kf.imagewidth)
        spp = int(kf.samplesperpixel)
        if h <= 0 or w <= 0:
            raise SlideReadError(f"{source}: zero-size image ({h}x{w})")
        if int(kf.imagedepth) > 1:
            raise SlideReadError(f"{source}: volumetric TIFF pages (depth > 1) are not supported")
        planar = int(kf.planarconfig) == 2 and spp > 1
        if kf.is_tiled:
            seg_h, seg_w = int(kf.tilelength), int(kf.tilewidth)
        else:
            rps = int(kf.rowsperstrip) or h
            seg_h, seg_w = min(rps, h), w
        rows, cols = -(-h // seg_h), -(-w // seg_w)
        nseg = rows * cols * (spp if planar else 1)
        if len(self.offsets) < nseg or len(self.counts) < nseg:
            raise SlideReadError(
                f"{source}: page has {len(self.offsets)} segments, expected {nseg} (corrupt file)"
            )
        self.layout = SegmentLayout(h, w, spp, seg_h, seg_w, rows, cols, planar)
        byteorder = page.parent.byteorder
        self.dtype = np.dtype(kf.dtype) if kf.dtype is not None else None
        if self.dtype is None:
            raise SlideReadError(f"{source}: unsupported sample format/bit depth")
        self.file_dtype = self.dtype.newbyteorder(byteorder)
        self.compression = int(kf.compression)
        self.predictor = int(kf.predictor)
        bps = kf.bitspersample
        bps = bps[0] if isinstance(bps, tuple) else bps
        fast_bits = bps == self.dtype.itemsize * 8
        self.fast = (
            fast_bits
            and int(kf.fillorder) == 1
            and self.predictor in (1, 2)
            and (self.compression == 1 or self.compression in _DECODERS)
        )
        try:
            self.compression_name = tifffile.COMPRESSION(self.compression).name
        except ValueError:
            raise SlideReadError(
                f"{source}: unsupported TIFF compression {self.compression}"
            ) from None
        self.jpegtables = getattr(kf, "jpegtables", None)
        # whole segments can be read/decoded straight into the output array
        self.direct = (
            self.fast
            and self.predictor == 1
            and self.file_dtype.isnative
            and (planar or spp == 1)
            and (self.compression == 1 or self.compression in (8, 32946, 50000, 34926))
        )

    # ------------------------------------------------------------------ segments
    @property
    def missing_fraction(self) -> float:
        """Fraction of the page's segments the file holds no data for (offset or byte count 0).

        TIFF allows such sparse segments (they read as 0); a page missing nearly all of them is
        a damaged or unfinished file, not an empty image (see ``tiles.empty``)."""
        n = self.layout.rows * self.layout.cols * (self.layout.samples if self.layout.planar else 1)
        if n == 0:
            return 0.0
        off, cnt = self.offsets[:n], self.counts[:n]
        return float(np.count_nonzero((off == 0) | (cnt == 0))) / n

    def end_of_data(self) -> int:
        """Largest byte position any segment reaches (to detect truncated files)."""
        if len(self.offsets) == 0:
            return 0
        return int((self.offsets + self.counts).max())

    def read_bytes(self, index: int) -> bytes:
        off, cnt = int(self.offsets[index]), int(self.counts[index])
        if cnt == 0:
            return b""
        data = os.pread(self.fd, cnt, off)
        if len(data) != cnt:
            raise SlideReadError(
                f"{self.source}: truncated file (segment {index} needs {cnt} bytes at offset "
                f"{off}, got {len(data)})"
            )
        return data

    def decode_segment(self, index: int, data: bytes | None = None) -> np.ndarray:
        """Decoded segment as (seg_rows, seg_w, samples_in_segment) in native byte order
        (``data``: its bytes when already read)."""
        lay = self.layout
        row = (index % (lay.rows * lay.cols)) // lay.cols
        nrows = (
            min(lay.seg_h, lay.height - row * lay.seg_h)
            if not self.keyframe.is_tiled
            else lay.seg_h
        )
        nsamp = 1 if lay.planar else lay.samples
        if data is None:
            data = self.read_bytes(index)
        if not data:
            return np.zeros((nrows, lay.seg_w, nsamp), self.dtype)
        try:
            if self.fast:
                raw = data if self.compression == 1 else _DECODERS[self.compression](data)
                arr = np.frombuffer(raw, dtype=self.file_dtype)
                per_row = lay.seg_w * nsamp
                have_rows = arr.size // per_row
                if have_rows < nrows:
                    raise SlideReadError(
                        f"{self.source}: segment {index} decodes to {arr.size} samples, expected "
                        f"{nrows * per_row} (corrupt or truncated data)"
                    )
                arr = arr[: nrows * per_row].reshape(nrows, lay.seg_w, nsamp)
                if self.predictor == 2:
                    arr = imagecodecs.delta_decode(arr, axis=-2)
                if not arr.dtype.isnative:
                    arr = arr.astype(self.dtype)
                return arr
            out, _, _ = self.keyframe.decode(data, index, jpegtables=self.jpegtables)
        except SlideReadError:
            raise
        except Exception as exc:  # codec errors come in many types
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SlideReadError(
                f"{self.source}: cannot decode segment {index} with compression "
                f"{self.compression_name} ({reason})"
            ) from None
        if out is None:
            raise SlideReadError(f"{self.source}: cannot decode segment {index}")
        out = np.asarray(out)
        out = out.reshape(out.shape[-3:])  # drop depth axis
        if not out.dtype.isnative:
            out = out.astype(out.dtype.newbyteorder("="))
        return out[:nrows]

    def _read_direct(self, index: int, dst: np.ndarray, contiguous: bool) -> bool:
        """Read/decode a whole segment straight into ``dst`` (no intermediate array).

        ``dst`` is the segment's (seg_h, seg_w) place in the output, rows contiguous, the whole
        of it ``contiguous`` or not. Uncompressed segments are read with one ``os.preadv`` (one
        buffer per row when the window is wider than the segment); compressed ones are decoded
        into ``dst`` when it is contiguous. Returns False when the segment must go through
        :meth:`decode_segment` instead.
        """
        cnt, off = int(self.counts[index]), int(self.offsets[index])
        if cnt == 0:
            dst[...] = 0
            return True
        if self.compression == 1:
            if cnt < dst.nbytes or not (contiguous or len(dst) <= _IOV_MAX):
                return False
            n = os.preadv(self.fd, [dst] if contiguous else list(dst), off)
            if n != dst.nbytes:
                raise SlideReadError(
                    f"{self.source}: truncated file (segment {index} needs {dst.nbytes} bytes at "
                    f"offset {off}, got {n})"
                )
            return True
        if not contiguous:
            return False
        data = self.read_bytes(index)
        try:
            got = _DECODERS[self.compression](data, out=dst.reshape(-1).view(np.uint8))
            if got.nbytes == dst.nbytes:
                return True
        except Exception:  # wrong size or corrupt: decode_segment says why
            pass
        dst[...] = self.decode_segment(index, data)[:, :, 0]
        return True

    # ------------------------------------------------------------------ windows
    def read_segment(
        self,
        index: int,
        sy: int,
        sx: int,
        samples: tuple[int, ...],
        dest: tuple[int, ...],
        out: np.ndarray,
        y: int,
        x: int,
    ) -> None:
        """Copy segment ``index`` (top-left pixel (sy, sx)) where it overlaps the window of
        ``out`` (C, h, w) at (y, x): its sample ``samples[i]`` to channel ``dest[i]``.

        A segment the window covers in part is decoded once and kept in the
        :data:`SEGMENT_CACHE` for neighbouring windows (see :func:`run_jobs` for whole ones).
        """
        _, h, w = out.shape
        lay = self.layout
        ey, ex = min(sy + lay.seg_h, lay.height), min(sx + lay.seg_w, lay.width)
        covered = y <= sy and x <= sx and y + h >= ey and x + w >= ex
        key = (self.uid, index)
        seg = None if covered else SEGMENT_CACHE.get(key)
        if seg is None:
            seg = self.decode_segment(index)
            if not covered:
                seg.flags.writeable = False
                SEGMENT_CACHE.put(key, seg)
        ya, yb = max(y, sy), min(y + h, sy + seg.shape[0], lay.height)
        xa, xb = max(x, sx), min(x + w, sx + seg.shape[1], lay.width)
        if ya >= yb or xa >= xb:
            return
        src = seg[ya - sy : yb - sy, xa - sx : xb - sx]
        for s, d in zip(samples, dest, strict=True):
            out[d, ya - y : yb - y, xa - x : xb - x] = src[:, :, s]


Job = tuple[PageReader, int, int, int, tuple[int, ...], tuple[int, ...], bool]
"""(reader, segment index, segment top, segment left, samples, output channels, whole): whole
when the segment is full-size and inside the window (see :meth:`SegmentLayout.cells`)."""


def run_jobs(jobs: Sequence[Job], out: np.ndarray, y: int, x: int) -> None:
    """Run segment jobs for the window of ``out`` (C, h, w) at (y, x), one after the other.

    Whole segments of single-sample pages go straight into ``out``
    (:meth:`PageReader._read_direct`), the rest through :meth:`PageReader.read_segment`.
    """
    w = out.shape[2]
    for reader, index, sy, sx, samples, dest, whole in jobs:
        if whole and reader.direct:
            lay = reader.layout
            dst = out[dest[0], sy - y : sy - y + lay.seg_h, sx - x : sx - x + lay.seg_w]
            if reader._read_direct(index, dst, w == lay.seg_w):
                continue
        reader.read_segment(index, sy, sx, samples, dest, out, y, x)
