"""Reading a slide at any µm/px: the pyramid level to read, box resampling to the target
resolution, and strip-wise downsampling in bounded memory."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from immunoplex.io.base import Slide
from immunoplex.tiles.params import STRIP_BYTES


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
