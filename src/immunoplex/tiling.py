"""Tissue detection, tile grids at a chosen µm/px, tile reading with resampling, grid files.

Everything works in bounded memory: low-resolution images are built from horizontal strips of
the coarsest pyramid level that is still fine enough (one channel at a time for the tissue mask and
the QC thumbnail), and tiles are read in spatial chunks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from immunoplex.errors import ConfigError, ResolutionError
from immunoplex.io.slide import Slide

NUCLEAR_MARKERS = ("DAPI",)  # canonical name; HH3/Nuc/Hoechst are its aliases
STRIP_BYTES = 1 << 20  # default source bytes per strip of read_downsampled
CHUNK_BYTES = 4 << 20  # default source bytes per chunk of iter_tile_chunks


@dataclass(frozen=True)
class TilingParams:
    """How a slide is cut into tiles (all sizes in pixels at ``mpp``)."""

    tile_size: int = 32
    mpp: float = 2.0
    stride: int | None = None
    min_tissue: float = 0.5
    tissue_markers: tuple[str, ...] = NUCLEAR_MARKERS
    tissue_all_channels: bool = True  # average the nuclear signal with all channels' mean
    mask_mpp: float | None = None  # None: tile footprint / 8, at most mask_max_side px per side
    mask_max_side: int = 2048  # the mask's longest side (bounds tissue-detection memory)
    smooth_um: float = 16.0
    min_object_um2: float = 4000.0
    max_hole_um2: float = 20000.0

    def __post_init__(self) -> None:
        if self.tile_size < 1:
            raise ConfigError(f"tile_size must be >= 1, got {self.tile_size}")
        if not self.mpp > 0:
            raise ConfigError(f"tiling mpp must be > 0, got {self.mpp}")
        if self.stride is not None and self.stride < 1:
            raise ConfigError(f"stride must be >= 1, got {self.stride}")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ConfigError(f"min_tissue must be in [0, 1], got {self.min_tissue}")
        if self.mask_max_side < 16:
            raise ConfigError(f"mask_max_side must be >= 16, got {self.mask_max_side}")
        object.__setattr__(self, "tissue_markers", tuple(str(m) for m in self.tissue_markers))

    @property
    def step(self) -> int:
        return self.stride or self.tile_size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tissue_markers"] = list(self.tissue_markers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TilingParams:
        known = {f for f in cls.__dataclass_fields__}
        extra = set(d) - known
        if extra:
            raise ConfigError(f"unknown tiling parameter(s) {sorted(extra)}")
        kw = dict(d)
        if "tissue_markers" in kw and kw["tissue_markers"] is not None:
            kw["tissue_markers"] = tuple(kw["tissue_markers"])
        return cls(**kw)


@dataclass
class TileGrid:
    """Tile top-left corners (y, x) in pixels at ``mpp`` plus the tissue fraction of each."""

    coords: np.ndarray  # (N, 2) int64
    tissue: np.ndarray  # (N,) float32
    shape: tuple[int, int]  # slide (H, W) at mpp
    params: TilingParams
    mpp: float
    mask: np.ndarray | None = field(default=None, repr=False)  # tissue mask at mask_mpp
    mask_mpp: float | None = None

    def __len__(self) -> int:
        return int(self.coords.shape[0])


# ---------------------------------------------------------------------- resolution
def choose_level(slide: Slide, mpp: float) -> int:
    """Coarsest pyramid level whose µm/px is still <= ``mpp`` (level 0 if all are coarser)."""
    best = 0
    for lv in range(len(slide.levels)):
        if slide.level_mpp(lv) <= mpp * (1 + 1e-3):
            best = lv
    return best


def shape_at(slide: Slide, mpp: float) -> tuple[int, int]:
    """Slide size in pixels at ``mpp``."""
    h0, w0 = slide.levels[0]
    s = slide.level_mpp(0) / mpp
    return max(1, int(round(h0 * s))), max(1, int(round(w0 * s)))


def _box_axis(a: np.ndarray, n_out: int, f: float, start: float, axis: int) -> np.ndarray:
    """Area (box) resampling along ``axis``: output i averages [start + i f, start + (i+1) f).

    Whole pixels are summed with ``np.add.reduceat`` (one pass, in float64) and the
    fractional pixels at both ends are added with their overlap weights.
    """
    n = a.shape[axis]
    k = int(round(f))
    s0 = int(round(start))
    if k >= 1 and abs(f - k) < 1e-9 and abs(start - s0) < 1e-9 and s0 >= 0 and s0 + n_out * k <= n:
        # integer factor on whole pixels: every output is the mean of k consecutive inputs, summed
        # as k strided slices (k vectorised adds instead of a k-long reduction per output)
        sl: list[slice] = [slice(None)] * a.ndim
        acc: np.ndarray | None = None
        for j in range(k):
            sl[axis] = slice(s0 + j, s0 + n_out * k, k)
            v = a[tuple(sl)]
            acc = v.astype(np.float64) if acc is None else np.add(acc, v, out=acc)
        assert acc is not None
        acc /= f
        return acc.astype(np.float32)
    e = np.clip(start + f * np.arange(n_out + 1), 0, n)
    lo = np.ceil(e[:-1] - 1e-9).astype(np.int64)
    hi = np.floor(e[1:] + 1e-9).astype(np.int64)
    bshape = [1] * a.ndim
    bshape[axis] = n_out

    def w(v: np.ndarray) -> np.ndarray:
        return v.reshape(bshape)

    full = hi > lo
    idx = np.stack([np.minimum(lo, n - 1), np.minimum(hi, n - 1)], 1).ravel()
    out = np.take(
        np.add.reduceat(a, idx, axis=axis, dtype=np.float64), np.arange(0, 2 * n_out, 2), axis
    )
    # reduceat sums [lo, hi) except when hi == n (then [lo, n-1)): add the last pixel back
    last = full & (hi == n) & (lo < n - 1)
    out *= w(full)
    if last.any():
        out += np.take(a, np.full(n_out, n - 1), axis=axis) * w(last)
    inside = ~full & (np.floor(e[:-1]) == np.floor(e[1:] - 1e-9))  # within one pixel
    p = np.minimum(np.floor(e[:-1]).astype(np.int64), n - 1)
    left = np.where(inside, 0.0, lo - e[:-1])
    right = np.where(inside, 0.0, e[1:] - hi)
    mid = np.where(inside, e[1:] - e[:-1], 0.0)
    if (left > 1e-9).any() or inside.any():
        out += np.take(a, p, axis=axis) * w(left + mid)
    if (right > 1e-9).any():
        out += np.take(a, np.minimum(hi, n - 1), axis=axis) * w(right * (hi < n))
    out /= f
    return out.astype(np.float32)


def _source_window(f: float, y: int, x: int, h: int, w: int) -> tuple[int, int, int, int]:
    """Source-level pixels (y0, x0, y1, x1) that the window [y, y+h) x [x, x+w) at a coarser
    resolution (``f`` source pixels per pixel) overlaps."""
    iy0, ix0 = int(math.floor(y * f + 1e-6)), int(math.floor(x * f + 1e-6))
    iy1, ix1 = int(math.ceil((y + h) * f - 1e-6)), int(math.ceil((x + w) * f - 1e-6))
    return iy0, ix0, max(iy1, iy0 + 1), max(ix1, ix0 + 1)


def _aligned_copy(f: float, oy: float, ox: float) -> bool:
    """Whether resampling by ``f`` from offset (oy, ox) is a plain copy."""
    return abs(f - 1.0) < 1e-6 and abs(oy) < 1e-6 and abs(ox) < 1e-6


def _resample(region: np.ndarray, f: float, oy: float, ox: float, h: int, w: int) -> np.ndarray:
    """(C, h, w) float32 area average of ``region`` (C, ., .): output pixel (i, j) averages the
    region's [oy + i f, oy + (i+1) f) x [ox + j f, ox + (j+1) f) (pixels outside count as 0)."""
    k = round(f)
    if abs(f - k) < 1e-6 and k >= 1 and abs(oy) < 1e-6 and abs(ox) < 1e-6:
        r = region[:, : h * k, : w * k].astype(np.float32)
        return r if k == 1 else r.reshape(r.shape[0], h, k, w, k).mean(axis=(2, 4))
    r = _box_axis(region, h, f, oy, axis=1)  # (C, h, cols)
    return _box_axis(r, w, f, ox, axis=2)


def read_resampled(
    slide: Slide,
    mpp: float,
    y: int,
    x: int,
    h: int,
    w: int,
    channels: Sequence[int] | None = None,
    level: int | None = None,
) -> np.ndarray:
    """Window (C, h, w) at ``mpp`` (pixel coordinates at ``mpp``), float32, area-resampled."""
    lv = choose_level(slide, mpp) if level is None else level
    f = mpp / slide.level_mpp(lv)  # pyramid levels keep the aspect ratio: one factor
    iy0, ix0, iy1, ix1 = _source_window(f, y, x, h, w)
    region = slide.read_region(lv, iy0, ix0, iy1 - iy0, ix1 - ix0, channels)
    return _resample(region, f, y * f - iy0, x * f - ix0, h, w)


def to_dtype(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast resampled float data back to the slide dtype (rounded and clipped for integers)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(a), info.min, info.max).astype(dtype)
    return a.astype(dtype)


def read_downsampled(
    slide: Slide,
    mpp: float,
    channels: Sequence[int] | None = None,
    max_strip_bytes: int | None = None,
) -> np.ndarray:
    """The whole slide at ``mpp`` as float32 (C, H, W), area-resampled, in bounded memory.

    The coarsest fine-enough pyramid level is read in horizontal strips whose edges fall on the
    file's segment rows (every tile/strip is decoded once and none is cached). Each strip is
    reduced along x at once; output rows are written as soon as all their source rows have been
    read, the few rows an output row shares with the next strip being carried over. Peak memory:
    the output plus a few times ``max_strip_bytes`` (default :data:`STRIP_BYTES`; a strip is at
    least one row of segments, reduced a block of rows at a time). Same values as
    :func:`read_resampled` of the whole slide, up to float rounding.
    """
    lv = choose_level(slide, mpp)
    H, W = shape_at(slide, mpp)
    chans = list(range(len(slide.channels))) if channels is None else list(channels)
    out = np.zeros((len(chans), H, W), np.float32)
    if not chans:
        return out
    f = mpp / slide.level_mpp(lv)
    rows, cols = slide.levels[lv]  # whole level: no segment is read in part
    unit = abs(f - 1.0) < 1e-6
    period = slide.segment_rows(lv, chans)
    budget = STRIP_BYTES if max_strip_bytes is None else max_strip_bytes
    step = max(period, budget // (len(chans) * cols * slide.dtype.itemsize) // period * period)
    # rows per column pass: its float64 copy of the source and sums (3 per output pixel)
    block = max(1, budget // (len(chans) * (8 * cols + 24 * W)))
    carry = np.zeros((len(chans), 0, W), np.float32)  # column-reduced rows not yet used
    c0 = 0  # source row of carry[:, 0]
    i = 0  # next output row
    for r0 in range(0, rows, step):
        r1 = min(r0 + step, rows)
        region = slide.read_region(lv, r0, 0, r1 - r0, cols, chans)
        if unit:
            n = max(0, min(r1, H) - r0)
            out[:, r0 : r0 + n, :cols] = region[:, :n, :W]
            continue
        nc = carry.shape[1]
        buf = np.empty((len(chans), nc + r1 - r0, W), np.float32)
        buf[:, :nc] = carry
        for a in range(0, r1 - r0, block):
            b = min(a + block, r1 - r0)
            buf[:, nc + a : nc + b] = _box_axis(region[:, a:b], W, f, 0.0, axis=2)
        del region
        i_end = H if r1 == rows else min(H, int(math.floor(r1 / f + 1e-9)))
        if i_end > i:
            out[:, i:i_end] = _box_axis(buf, i_end - i, f, max(i * f - c0, 0.0), axis=1)
            nxt = min(int(math.floor(i_end * f + 1e-9)), r1)
            carry = buf[:, nxt - c0 :].copy()
            c0, i = nxt, i_end
        else:
            carry = buf
    return out


# ---------------------------------------------------------------------- tissue
def resolve_channels(slide: Slide, markers: Sequence[str]) -> list[int]:
    """Slide channel indices of ``markers`` (by aliased name); missing markers are skipped."""
    from immunoplex.io.panel import Panel

    if not markers:
        return []
    panel = Panel(list(dict.fromkeys(markers)))
    idx = []
    for m in panel.markers:
        want = panel.canonical(m)
        for i, ch in enumerate(slide.channels):
            if panel.canonical(ch) == want:
                idx.append(i)
                break
    return idx


def mask_resolution(slide: Slide, params: TilingParams) -> float:
    """µm/px of the tissue mask: ``mask_mpp`` or 1/8 of a tile footprint, never finer than level 0
    and coarse enough for the mask to have at most ``mask_max_side`` pixels a side."""
    mpp = params.mask_mpp or params.tile_size * params.mpp / 8.0
    mpp = max(mpp, slide.level_mpp(0))
    h0, w0 = slide.levels[0]
    longest_um = max(h0, w0) * slide.level_mpp(0)
    mpp = max(mpp, longest_um / params.mask_max_side)
    # a whole number of pixels of the level it is read from, when that coarsens the mask by at
    # most 25%: box resampling by an integer factor is a reshape and a sum, several times faster
    # than fractional pixel weights
    base = slide.level_mpp(choose_level(slide, mpp))
    k = math.ceil(mpp / base - 1e-6)
    return base * k if k * base <= 1.25 * mpp else mpp


def _float_keys(x: np.ndarray) -> np.ndarray:
    """uint32 keys of float32 values that sort like the values (sign-magnitude to ordered)."""
    u = x.view(np.uint32)
    return np.where(u >> 31, ~u, u | np.uint32(1 << 31))


def _key_value(key: int) -> np.float32:
    """The float32 value of a :func:`_float_keys` key."""
    u = key & 0x7FFFFFFF if key >> 31 else ~key & 0xFFFFFFFF
    return np.uint32(u).view(np.float32)


def percentiles(a: np.ndarray, q: Sequence[float], block: int = 1 << 16) -> np.ndarray:
    """``np.percentile(a, q)`` (linear interpolation, bit for bit) of a finite float32 array
    without copying it: the order statistics are found by a two-pass radix select (16 bits of
    the values' bit patterns per pass) over ``block``-element pieces."""
    flat = np.ascontiguousarray(a, np.float32).reshape(-1)
    n = flat.size
    virtual = (n - 1) * (np.asarray(q, np.float64) / 100)
    prev = np.floor(virtual).astype(np.int64)
    nxt = np.minimum(prev + 1, n - 1)
    ranks = np.unique(np.concatenate([prev, nxt]))

    def pieces() -> Iterator[np.ndarray]:
        for s in range(0, n, block):
            yield _float_keys(flat[s : s + block])

    hist = np.zeros(1 << 16, np.int64)
    for k in pieces():
        hist += np.bincount(k >> 16, minlength=1 << 16)
    cum = np.cumsum(hist)
    top = np.searchsorted(cum, ranks, side="right")  # high 16 bits of each rank's key
    below = np.where(top > 0, cum[top - 1], 0)  # elements in lower buckets
    low = {int(b): np.zeros(1 << 16, np.int64) for b in np.unique(top)}
    for k in pieces():
        hi = k >> 16
        for b, h in low.items():
            h += np.bincount(k[hi == b] & 0xFFFF, minlength=1 << 16)
    value = {}
    for r, b, nb in zip(ranks, top, below, strict=True):
        lo16 = int(np.searchsorted(np.cumsum(low[int(b)]), r - nb, side="right"))
        value[int(r)] = _key_value((int(b) << 16) | lo16)
    x0 = np.array([value[int(i)] for i in prev], np.float32)
    x1 = np.array([value[int(i)] for i in nxt], np.float32)
    gamma = virtual - prev
    d = x1 - x0
    out = x0 + d * gamma  # numpy's lerp, exact from both ends
    np.subtract(x1, d * (1 - gamma), out=out, where=gamma >= 0.5)
    return out


def scale_channel(ch: np.ndarray) -> np.ndarray | None:
    """A low-res channel scaled to [0, ~1] by its 99.5th percentile (from its 0.5th percentile
    when it has negative values), non-finite values as 0, or None when it is flat.

    Works in place on ``ch`` when it is a float32 array (pass a copy to keep the original).
    """
    a = np.asarray(ch, np.float32)
    if not np.isfinite(a).all():
        np.nan_to_num(a, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    if a.min() < 0:
        lo_p, hi_p = percentiles(a, [0.5, 99.5])
        lo, hi = float(min(lo_p, 0.0)), float(hi_p)
    else:
        lo, hi = 0.0, float(percentiles(a, [99.5])[0])
    if not hi - lo > 0:
        return None
    a -= lo
    a /= hi - lo
    return np.maximum(a, 0, out=a)


def tissue_signal(
    read: Callable[[int], np.ndarray],
    channels: Sequence[int],
    nuclear: Sequence[int] = (),
    blend: bool = False,
) -> np.ndarray | None:
    """Tissue signal (H, W) float32 from low-res channels that ``read(c)`` returns one at a time.

    Each channel is scaled by :func:`scale_channel`. The signal is the mean of the ``nuclear``
    channels (of all ``channels`` when there is none or all are flat); with ``blend`` it is
    averaged with the mean of all ``channels`` (stroma has few nuclei). One running sum is kept
    (with ``blend`` the nuclear channels are read a second time instead of keeping a second sum),
    so memory is a few low-res planes whatever the channel count. None when all are flat.
    """

    def mean_of(chans: Sequence[int]) -> tuple[np.ndarray | None, list[int]]:
        acc: np.ndarray | None = None
        used = []
        for c in chans:
            z = scale_channel(read(c))
            if z is not None:
                acc = z if acc is None else np.add(acc, z, out=acc)
                used.append(c)
            del z  # freed before the next channel is read
        if acc is not None:
            acc /= len(used)
        return acc, used

    if not blend:
        sig = mean_of(nuclear)[0] if nuclear else None
        return sig if sig is not None else mean_of(channels)[0]
    sig, used = mean_of(channels)
    nuc = [c for c in nuclear if c in used]
    if sig is None or not nuc:
        return sig
    sig *= 0.5
    for c in nuc:
        z = scale_channel(read(c))
        if z is not None:
            z *= 0.5 / len(nuc)
            sig += z
    return sig


def detect_tissue(
    img: np.ndarray,
    mpp: float,
    params: TilingParams | None = None,
    nuclear: Sequence[int] | None = None,
) -> np.ndarray:
    """Tissue mask (H, W) bool from a low-res (C, H, W) fluorescence image at ``mpp``.

    The signal (:func:`tissue_signal`) is the mean of the percentile-scaled ``nuclear`` channels
    (all when None), averaged with the mean of all channels when ``params.tissue_all_channels``
    and ``nuclear`` is given; then :func:`threshold_signal` and :func:`clean_mask`.
    """
    p = params or TilingParams()
    a = np.asarray(img, np.float32)
    if a.ndim == 2:
        a = a[None]
    sig = tissue_signal(
        lambda i: a[i].copy(),
        range(len(a)),
        nuclear or (),
        blend=nuclear is not None and p.tissue_all_channels,
    )
    if sig is None:
        return np.zeros(a.shape[1:], bool)
    raw = threshold_signal(sig, mpp, p)
    del sig
    return clean_mask(raw, mpp, p)


def threshold_signal(sig: np.ndarray, mpp: float, params: TilingParams) -> np.ndarray:
    """Raw tissue mask (H, W) bool of a float32 tissue signal at ``mpp`` (before
    :func:`clean_mask`). ``sig`` is overwritten: smoothing and scaling work in place.

    The signal is Gaussian-smoothed, put on an arcsinh scale (so dark backgrounds and dim slides
    separate well) and split by Otsu. When Otsu finds no real contrast (< 3x between classes)
    the image is taken to be all tissue (a field of view inside tissue) unless it is empty.
    """
    sigma = params.smooth_um / mpp
    if sigma > 0.3:  # separable, line by line through a buffer: safe in place
        ndi.gaussian_filter(sig, sigma, mode="nearest", output=sig)
    med, top = (float(v) for v in percentiles(sig, [50.0, 99.0]))
    if top <= 0:
        return np.zeros(sig.shape, bool)
    c = max(0.02 * top, 1e-6)
    v = np.arcsinh(np.divide(sig, c, out=sig), out=sig)
    t, m0, m1 = otsu(v)
    flat = m1 - m0 < math.log(3.0) and med > 0.05 * top  # no contrast: all tissue
    return np.ones(sig.shape, bool) if flat else v > t


def otsu(v: np.ndarray, bins: int = 256) -> tuple[float, float, float]:
    """Otsu threshold on values clipped to their 0.1-99.9 percentiles, with the class means.

    The histogram is accumulated over pieces of ``v`` (no copy of the whole image).
    """
    flat = np.ascontiguousarray(v, np.float32).reshape(-1)
    lo, hi = percentiles(flat, [0.1, 99.9])
    if hi <= lo:
        return float(hi), float(lo), float(lo)
    hist = np.zeros(bins, np.int64)
    for s in range(0, flat.size, 1 << 16):
        hist += np.histogram(np.clip(flat[s : s + (1 << 16)], lo, hi), bins, (lo, hi))[0]
    edges = np.histogram_bin_edges(flat[:1], bins, (lo, hi))
    centers = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centers)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    i = int(np.argmax(between[:-1])) if bins > 1 else 0
    return float(edges[i + 1]), float(m0[i]), float(m1[i])


def _label_sizes(lab: np.ndarray, n: int, rows: int = 256) -> np.ndarray:
    """Pixels of each label 1..n, counted in bands of ``rows`` (no image-sized temporaries)."""
    counts = np.zeros(n + 1, np.int64)
    for r in range(0, lab.shape[0], rows):
        counts += np.bincount(lab[r : r + rows].ravel(), minlength=n + 1)
    return counts[1:]


def _lookup(table: np.ndarray, lab: np.ndarray, rows: int = 256) -> np.ndarray:
    """``table[lab]`` in bands of ``rows`` (indexing casts the labels to int64 at once)."""
    out = np.empty(lab.shape, table.dtype)
    for r in range(0, lab.shape[0], rows):
        out[r : r + rows] = table[lab[r : r + rows]]
    return out


def clean_mask(mask: np.ndarray, mpp: float, params: TilingParams) -> np.ndarray:
    """Close small gaps, drop specks smaller than min_object_um2, fill holes < max_hole_um2."""
    px_area = mpp * mpp
    r = max(1, int(round(params.smooth_um / mpp / 2)))
    st = ndi.generate_binary_structure(2, 1)
    m = ndi.binary_closing(mask, structure=st, iterations=r, border_value=0) | mask
    m = ndi.binary_opening(m, structure=st, iterations=1)
    lab, n = ndi.label(m)
    if n:
        sizes = _label_sizes(lab, n) * px_area
        keep = np.concatenate([[False], sizes >= params.min_object_um2])
        m = _lookup(keep, lab)
    holes = ~m
    n = ndi.label(holes, output=lab)  # reuses the label plane
    if n:
        sizes = _label_sizes(lab, n) * px_area
        border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        small = np.concatenate([[False], sizes < params.max_hole_um2])
        small[border] = False
        m |= _lookup(small, lab)
    return m


def slide_tissue(slide: Slide, params: TilingParams) -> tuple[np.ndarray, float]:
    """Tissue mask of a slide and its µm/px (:func:`mask_resolution`), in bounded memory.

    Channels are read one at a time at the mask resolution (:func:`read_downsampled`, in strips)
    and folded into :func:`tissue_signal`: the tissue markers, plus every other channel when
    ``tissue_all_channels`` (or when the slide has no tissue marker). Peak memory is a strip of
    one channel plus a few mask-sized planes, whatever the slide size and channel count.
    """
    mmpp = mask_resolution(slide, params)
    nuc = resolve_channels(slide, params.tissue_markers)
    blend = params.tissue_all_channels and bool(nuc)
    sig = tissue_signal(
        lambda c: read_downsampled(slide, mmpp, [c])[0],
        range(len(slide.channels)) if params.tissue_all_channels or not nuc else nuc,
        nuc if blend else (),
        blend=blend,
    )
    if sig is None:
        return np.zeros(shape_at(slide, mmpp), bool), mmpp
    raw = threshold_signal(sig, mmpp, params)
    del sig  # the signal plane is not needed for the morphology
    return clean_mask(raw, mmpp, params), mmpp


# ---------------------------------------------------------------------- grid
def make_tile_grid(slide: Slide, params: TilingParams) -> TileGrid:
    """Tiles of ``params.tile_size`` at ``params.mpp`` with at least ``min_tissue`` tissue."""
    if slide.mpp is None:
        slide.level_mpp(0)  # raises ResolutionError with the message users need
    H, W = shape_at(slide, params.mpp)
    mask, mmpp = slide_tissue(slide, params)
    T, S = params.tile_size, params.step
    ys = np.arange(0, H - T + 1, S, dtype=np.int64)
    xs = np.arange(0, W - T + 1, S, dtype=np.int64)
    if len(ys) == 0 or len(xs) == 0:
        return TileGrid(
            np.zeros((0, 2), np.int64),
            np.zeros(0, np.float32),
            (H, W),
            params,
            params.mpp,
            mask,
            mmpp,
        )
    frac = tile_fractions(mask, mmpp, ys, xs, T, params.mpp)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    keep = frac >= params.min_tissue - 1e-9
    coords = np.stack([yy[keep], xx[keep]], axis=1).astype(np.int64)
    return TileGrid(coords, frac[keep].astype(np.float32), (H, W), params, params.mpp, mask, mmpp)


def tile_fractions(
    mask: np.ndarray, mask_mpp: float, ys: np.ndarray, xs: np.ndarray, T: int, mpp: float
) -> np.ndarray:
    """Tissue fraction of each tile (len(ys), len(xs)): mask pixels under each tile's footprint,
    counted one row of tiles at a time (cumulative column sums of the row's band)."""
    s = mpp / mask_mpp

    def bounds(v: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        a = np.clip(np.floor(v * s + 0.5), 0, n).astype(np.int64)
        b = np.clip(np.floor((v + T) * s + 0.5), 0, n).astype(np.int64)
        b = np.maximum(b, np.minimum(a + 1, n))
        return a, b

    y0, y1 = bounds(ys, mask.shape[0])
    x0, x1 = bounds(xs, mask.shape[1])
    tot = np.empty((len(ys), len(xs)), np.int64)
    col = np.zeros(mask.shape[1] + 1, np.int64)
    for i, (a, b) in enumerate(zip(y0, y1, strict=True)):
        np.cumsum(mask[a:b].sum(axis=0), out=col[1:])
        tot[i] = col[x1] - col[x0]
    area = np.maximum((y1 - y0)[:, None] * (x1 - x0)[None, :], 1)
    return (tot / area).astype(np.float32)


def _chunks(grid: TileGrid, chunk: int) -> Iterator[np.ndarray]:
    """Indices of tiles grouped into square chunks of ``chunk`` px at the grid's mpp."""
    if len(grid) == 0:
        return
    key = (grid.coords[:, 0] // chunk) * (grid.shape[1] // chunk + 2) + grid.coords[:, 1] // chunk
    order = np.argsort(key, kind="stable")
    ks = key[order]
    cuts = np.flatnonzero(np.diff(ks)) + 1
    yield from np.split(order, cuts)


def chunk_side(slide: Slide, level: int, channels: Sequence[int], max_bytes: int) -> int:
    """Side (source pixels at ``level``) of the square chunks tiles are read in: at most about
    ``max_bytes`` of source pixels, in whole segment rows (so chunk edges fall on segment edges
    for square tiles and each segment is decoded once)."""
    side = max(1, math.isqrt(max_bytes // max(1, len(channels) * slide.dtype.itemsize)))
    period = slide.segment_rows(level, channels)
    return max(period, side // period * period) if period <= side else side


def _chunk_px(
    slide: Slide, grid: TileGrid, channels: Sequence[int], max_chunk_bytes: int | None
) -> int:
    """Side of a read chunk in pixels at the grid's µm/px (a multiple of the tile size)."""
    T = grid.params.tile_size
    lv = choose_level(slide, grid.mpp)
    f = grid.mpp / slide.level_mpp(lv)
    budget = CHUNK_BYTES if max_chunk_bytes is None else max_chunk_bytes
    return max(T, int(chunk_side(slide, lv, channels, budget) / f) // T * T)


def read_order(slide: Slide, grid: TileGrid, channels: Sequence[int] | None = None) -> np.ndarray:
    """Tile indices in the order :func:`iter_tile_chunks` reads them (chunk by chunk): batches
    cut from this order touch each file segment about once."""
    chans = list(range(len(slide.channels))) if channels is None else list(channels)
    if len(grid) == 0 or not chans:
        return np.arange(len(grid))
    return np.concatenate(list(_chunks(grid, _chunk_px(slide, grid, chans, None))))


def iter_tile_chunks(
    slide: Slide,
    grid: TileGrid,
    channels: Sequence[int] | None = None,
    dtype: np.dtype | None = None,
    max_chunk_bytes: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(indices, tiles (n, C, T, T)) of ``grid`` per spatial chunk, resampled to the grid's µm/px.

    Each chunk is one source window of about ``max_chunk_bytes`` (default :data:`CHUNK_BYTES`;
    :func:`chunk_side`), read once for all channels and resampled one channel at a time, so
    memory stays bounded whatever the slide size. Indices ascend within a chunk. Tiles are in
    ``dtype`` (default: the slide's).
    """
    chans = list(range(len(slide.channels))) if channels is None else list(channels)
    if len(grid) == 0 or not chans:
        return
    dt = np.dtype(slide.dtype if dtype is None else dtype)
    T = grid.params.tile_size
    lv = choose_level(slide, grid.mpp)
    f = grid.mpp / slide.level_mpp(lv)
    for idx in _chunks(grid, _chunk_px(slide, grid, chans, max_chunk_bytes)):
        c = grid.coords[idx]
        y0, x0 = int(c[:, 0].min()), int(c[:, 1].min())
        h, w = int(c[:, 0].max()) + T - y0, int(c[:, 1].max()) + T - x0
        iy0, ix0, iy1, ix1 = _source_window(f, y0, x0, h, w)
        region = slide.read_region(lv, iy0, ix0, iy1 - iy0, ix1 - ix0, chans)
        oy, ox = y0 * f - iy0, x0 * f - ix0
        if _aligned_copy(f, oy, ox) and region.dtype == dt:
            block = region
        else:
            block = np.empty((len(chans), h, w), dt)
            for i in range(len(chans)):
                block[i] = to_dtype(_resample(region[i : i + 1], f, oy, ox, h, w)[0], dt)
        tiles = np.empty((len(idx), len(chans), T, T), dt)
        for j, (ty, tx) in enumerate(c - (y0, x0)):
            tiles[j] = block[:, ty : ty + T, tx : tx + T]
        del region, block  # not kept alive while the caller holds this chunk
        yield idx, tiles


def read_tiles(
    slide: Slide,
    grid: TileGrid,
    channels: Sequence[int] | None = None,
    out: np.ndarray | None = None,
    out_channels: Sequence[int] | None = None,
) -> np.ndarray:
    """Tiles (N, C, T, T) of ``grid`` in the slide dtype, resampled to the grid's µm/px.

    Reads in bounded spatial chunks (:func:`iter_tile_chunks`). ``out`` receives the tiles in
    place (in its dtype); with ``out_channels`` the C read channels go to those positions of
    ``out``'s channel axis.
    """
    chans = list(range(len(slide.channels))) if channels is None else list(channels)
    T = grid.params.tile_size
    if out is None:
        out = np.zeros((len(grid), len(chans), T, T), slide.dtype)
    for idx, tiles in iter_tile_chunks(slide, grid, chans, out.dtype):
        if out_channels is None:
            out[idx] = tiles
        else:
            for i, d in enumerate(out_channels):
                out[idx, d] = tiles[:, i]
    return out


def iter_tile_batches(
    slide: Slide, grid: TileGrid, channels: Sequence[int] | None = None, batch: int = 4096
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(indices, tiles) in spatially ordered batches: whole-slide reading in bounded memory."""
    if len(grid) == 0:
        return
    order = np.lexsort((grid.coords[:, 1], grid.coords[:, 0]))
    for s in range(0, len(order), batch):
        idx = order[s : s + batch]
        sub = TileGrid(grid.coords[idx], grid.tissue[idx], grid.shape, grid.params, grid.mpp)
        yield idx, read_tiles(slide, sub, channels)


# ---------------------------------------------------------------------- grid files
def save_grid(
    grid: TileGrid, path: str | Path, slide: Slide | None = None, slide_id: str | None = None
) -> Path:
    """Write the grid to Parquet (y, x, tissue) with the parameters that made it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "params": grid.params.to_dict(),
        "mpp": grid.mpp,
        "shape": list(grid.shape),
        "mask_mpp": grid.mask_mpp,
        "slide_id": slide_id,
        "source": str(slide.path) if slide is not None else None,
        "slide_mpp": slide.mpp if slide is not None else None,
        "channels": list(slide.channels) if slide is not None else None,
    }
    table = pa.table(
        {
            "y": pa.array(grid.coords[:, 0], pa.int64()),
            "x": pa.array(grid.coords[:, 1], pa.int64()),
            "tissue": pa.array(grid.tissue.astype(np.float32), pa.float32()),
        }
    )
    table = table.replace_schema_metadata({"immunoplex": json.dumps(meta)})
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def grid_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata dict stored by :func:`save_grid`."""
    import pyarrow.parquet as pq

    md = pq.read_schema(path).metadata or {}
    raw = md.get(b"immunoplex")
    if raw is None:
        raise ResolutionError(f"{path}: not an immunoplex tile grid (no metadata)")
    return json.loads(raw)


def load_grid(path: str | Path) -> TileGrid:
    """Read a grid written by :func:`save_grid` (without its mask)."""
    import pyarrow.parquet as pq

    meta = grid_metadata(path)
    t = pq.read_table(path)
    coords = np.stack([t["y"].to_numpy(), t["x"].to_numpy()], axis=1).astype(np.int64)
    coords = coords.reshape(-1, 2)
    return TileGrid(
        coords,
        t["tissue"].to_numpy().astype(np.float32),
        tuple(meta["shape"]),
        TilingParams.from_dict(meta["params"]),
        float(meta["mpp"]),
        None,
        meta.get("mask_mpp"),
    )


# ---------------------------------------------------------------------- QC thumbnail
QC_COLOURS = {
    "DAPI": (0.15, 0.35, 1.0),
}
QC_PALETTE = [
    (1.0, 0.15, 0.15),
    (0.1, 1.0, 0.2),
    (1.0, 0.85, 0.0),
    (1.0, 0.2, 1.0),
    (0.0, 0.95, 0.95),
    (1.0, 0.55, 0.0),
    (0.7, 0.7, 0.7),
]


def qc_channels(slide: Slide, markers: Sequence[str] | None, limit: int = 6) -> list[int]:
    """Channels to show: the requested markers the slide has, else its first ``limit``."""
    idx = resolve_channels(slide, markers or [])
    return idx[:limit] if idx else list(range(min(limit, len(slide.channels))))


def composite(
    img: np.ndarray | Iterable[np.ndarray],
    colours: Sequence[tuple[float, float, float]],
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Additive pseudo-colour RGB (H, W, 3) in [0, 1] of a (C, H, W) image or of (H, W) channels
    given one at a time (so only one is held); each channel scaled to its 1-99.7th percentile on
    tissue (whole image without a mask) with a mild gamma."""
    rgb: np.ndarray | None = None
    sel: np.ndarray | None = None
    for ch, col in zip(img, colours, strict=False):
        if rgb is None:
            rgb = np.zeros((*ch.shape, 3), np.float32)
            if mask is not None and mask.shape == ch.shape and mask.any():
                sel = mask
        lo, hi = np.percentile(ch[sel] if sel is not None else ch, [1.0, 99.7])
        if not hi > lo:
            continue
        z = np.clip((np.asarray(ch, np.float32) - lo) / (hi - lo), 0, 1)
        z = np.power(z, 0.9, out=z)
        z *= 0.8
        for k in range(3):
            rgb[..., k] += z * np.float32(col[k])
    if rgb is None:
        shape = img.shape[1:] if isinstance(img, np.ndarray) else (0, 0)
        return np.zeros((*shape, 3), np.float32)
    return np.clip(rgb, 0, 1, out=rgb)


def render_qc(
    slide: Slide,
    grid: TileGrid,
    path: str | Path,
    markers: Sequence[str] | None = None,
    max_size: int = 1024,
    title: str | None = None,
) -> Path:
    """PNG for a person: marker composite with legend, tissue outline, the kept tile grid."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Patch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    H, W = grid.shape
    tmpp = max(grid.mpp * max(H, W) / max_size, slide.level_mpp(0))
    chans = qc_channels(slide, markers)
    th, tw = shape_at(slide, tmpp)
    mask_small = None
    if grid.mask is not None:
        zy = th / grid.mask.shape[0]
        zx = tw / grid.mask.shape[1]
        mask_small = ndi.zoom(grid.mask.astype(np.uint8), (zy, zx), order=0).astype(bool)
        mask_small = mask_small[:th, :tw]
        if mask_small.shape != (th, tw):
            mask_small = None
    colours = []
    pal = iter(QC_PALETTE)
    from immunoplex.io.panel import canonical_marker

    for c in chans:
        colours.append(QC_COLOURS.get(canonical_marker(slide.channels[c])) or next(pal))
    rgb = composite((read_downsampled(slide, tmpp, [c])[0] for c in chans), colours, mask_small)
    ext_w, ext_h = W * grid.mpp, H * grid.mpp  # µm
    aspect = ext_h / ext_w
    fig_w = 9.0
    fig, ax = plt.subplots(figsize=(fig_w, fig_w * aspect * 0.92 + 0.9), dpi=110)
    fig.patch.set_facecolor("black")
    ax.set_facecolor("black")
    ax.imshow(rgb, extent=(0, ext_w, ext_h, 0), interpolation="nearest")
    if grid.mask is not None and grid.mask_mpp:
        mh, mw = grid.mask.shape
        ax.contour(
            np.linspace(0, mw * grid.mask_mpp, mw),
            np.linspace(0, mh * grid.mask_mpp, mh),
            grid.mask.astype(float),
            levels=[0.5],
            colors=["white"],
            linewidths=1.2,
        )
    T = grid.params.tile_size * grid.mpp
    if len(grid):
        ys = grid.coords[:, 0] * grid.mpp
        xs = grid.coords[:, 1] * grid.mpp
        boxes = np.stack(
            [
                np.stack([xs, ys], 1),
                np.stack([xs + T, ys], 1),
                np.stack([xs + T, ys + T], 1),
                np.stack([xs, ys + T], 1),
            ],
            1,
        )
        lw = 0.6 if len(grid) < 2000 else 0.3
        ax.add_collection(
            PolyCollection(boxes, facecolors="none", edgecolors=(1, 1, 0.3, 0.55), linewidths=lw)
        )
    ax.set_xlim(0, ext_w)
    ax.set_ylim(ext_h, 0)
    ax.tick_params(colors="0.8", labelsize=7)
    ax.set_xlabel("µm", color="0.8", fontsize=8)
    handles = [
        Patch(color=col, label=slide.channels[c]) for c, col in zip(chans, colours, strict=False)
    ]
    handles.append(Patch(facecolor="none", edgecolor="white", label="tissue mask"))
    handles.append(Patch(facecolor="none", edgecolor=(1, 1, 0.3), label="tiles"))
    leg = ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        frameon=False,
        labelcolor="white",
    )
    leg.set_title("markers", prop={"size": 8})
    leg.get_title().set_color("white")
    p = grid.params
    head = title or slide.path.name
    ax.set_title(
        f"{head}\n{len(grid)} tiles of {p.tile_size} px at {grid.mpp:g} µm/px "
        f"(stride {p.step}, min tissue {p.min_tissue:g}); slide {slide.mpp:.3g} µm/px, "
        f"{slide.levels[0][1]}x{slide.levels[0][0]} px",
        color="white",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, facecolor=fig.get_facecolor())
    plt.close(fig)
    return path
