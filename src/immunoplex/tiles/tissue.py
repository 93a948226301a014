"""Tissue detection on a low-resolution image built strip by strip: per-channel scaling,
threshold, clean-up, and the mask's resolution."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
from scipy import ndimage as ndi

from immunoplex.io.base import Slide
from immunoplex.io.panel import resolve_markers
from immunoplex.tiles.params import TilingParams
from immunoplex.tiles.resample import choose_level, read_downsampled, shape_at


# ---------------------------------------------------------------------- tissue
def resolve_channels(
    slide: Slide, markers: Sequence[str], aliases: Mapping[str, Sequence[str]] | None = None
) -> list[int]:
    """Slide channel indices of ``markers`` (by aliased name, :func:`resolve_markers`, with the
    user's ``aliases``); missing markers are skipped, each channel is listed once."""
    found = resolve_markers(list(dict.fromkeys(markers)), slide.channels, aliases)
    return list(dict.fromkeys(i for i in found if i is not None))


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
    (with ``blend`` the scaled nuclear channels are kept from that pass, so every channel is read
    once), so memory is a few low-res planes whatever the channel count. None when all are flat.
    """
    kept: dict[int, np.ndarray] = {}  # with ``blend``: scaled nuclear channels, read once

    def mean_of(chans: Sequence[int]) -> tuple[np.ndarray | None, list[int]]:
        acc: np.ndarray | None = None
        used = []
        for c in chans:
            z = scale_channel(read(c))
            if z is not None:
                if blend and c in nuclear:
                    kept[c] = z.copy()
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
        z = kept.pop(c) if c in kept else scale_channel(read(c))
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


def slide_tissue(
    slide: Slide, params: TilingParams, aliases: Mapping[str, Sequence[str]] | None = None
) -> tuple[np.ndarray, float]:
    """Tissue mask of a slide and its µm/px (:func:`mask_resolution`), in bounded memory.

    Channels are read one at a time at the mask resolution (:func:`read_downsampled`, in strips)
    and folded into :func:`tissue_signal`: the tissue markers, plus every other channel when
    ``tissue_all_channels`` (or when the slide has no tissue marker). Peak memory is a strip of
    one channel plus a few mask-sized planes, whatever the slide size and channel count.
    """
    mmpp = mask_resolution(slide, params)
    nuc = resolve_channels(slide, params.tissue_markers, aliases)
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
