"""Second-pass split of nuclei by intensity: a small bright nucleus lying on a dimmer one.

The classical backend seeds nuclei at distance-transform peaks, so two overlapping or touching
nuclei with no neck between them become one object. Where their brightness differs (a lymphocyte
on a tumour cell: in DAPI a lymphocyte's compact nucleus is brighter than a tumour nucleus, and
where they overlap the signals add), the object's interior holds a compact bright core: it is cut
off as a nucleus of its own.
"""

from __future__ import annotations

import numpy as np


def split_bright_cores(
    labels: np.ndarray,
    image: np.ndarray,
    ratio: float,
    core_px: float,
    rest_px: float,
    erode_px: float,
    passes: int = 1,
) -> np.ndarray:
    """Split each object whose interior holds a compact region ``ratio`` x brighter than the
    rest of it into that core and the rest (a second nucleus lying on the first).

    The interior (the object eroded by ``erode_px``, so a soft rim is not a "dim part") is cut in
    two by Otsu's threshold on log intensity. The split is made when the classes' mean ratio
    is at least ``ratio``, the brightest connected core covers ``core_px`` and the dim rest of the
    interior ``rest_px``; the object's pixels are then shared between the core and the rest by a
    watershed on the intensity (the core keeps its bright shoulders). New labels follow
    ``labels.max()``; objects that are not split are unchanged. With ``passes`` > 1 both parts
    of a split are examined again.
    """
    n = int(labels.max()) if labels.size else 0
    idx = np.arange(1, n + 1)
    for _ in range(max(1, passes)):
        if not len(idx):
            break
        labels, idx = _split_once(labels, idx, image, ratio, core_px, rest_px, erode_px)
    return labels


def _split_once(
    labels: np.ndarray,
    idx: np.ndarray,
    image: np.ndarray,
    ratio: float,
    core_px: float,
    rest_px: float,
    erode_px: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One pass of :func:`split_bright_cores` over labels ``idx``; returns the new labels and
    the labels it split (both parts), for the next pass."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    n = int(labels.max()) if labels.size else 0
    # cheap screen: an object whose brightest pixel is not ratio x its median is left alone
    top = ndi.maximum(image, labels, idx)
    mid = ndi.median(image, labels, idx)
    cand = idx[np.asarray(top) >= ratio * np.maximum(np.asarray(mid), 1e-12)]
    if not len(cand):
        return labels, cand[:0]
    out = labels.copy()
    split: list[int] = []
    next_label = n + 1
    r = max(1, int(round(erode_px)))
    disk = _disk(r)
    slices = ndi.find_objects(labels)
    for lab in cand:
        sl = slices[lab - 1]
        if sl is None:
            continue
        sl = tuple(slice(max(0, a.start - 1), a.stop + 1) for a in sl)
        obj = labels[sl] == lab
        inner = ndi.binary_erosion(obj, disk)
        if inner.sum() < core_px + rest_px:
            continue
        v = np.log(np.maximum(image[sl], 1e-12))
        vi = v[inner]
        if not np.ptp(vi) > 0:
            continue
        t = float(threshold_otsu(vi))
        hi = inner & (v > t)
        lo = inner & ~hi
        if lo.sum() < rest_px or np.exp(v[hi].mean() - v[lo].mean()) < ratio:
            continue
        core, k = ndi.label(hi)
        if k > 1:
            sizes = np.bincount(core.ravel())[1:]
            core = (core == int(np.argmax(sizes)) + 1).astype(np.int32)
        if core.sum() < core_px:
            continue
        mk = np.zeros(obj.shape, np.int32)
        mk[lo] = 1
        mk[core > 0] = 2
        part = watershed(-v, mk, mask=obj)
        view = out[sl]
        view[obj & (part == 2)] = next_label
        split += [int(lab), next_label]
        next_label += 1
    return out, np.asarray(split, np.int64)


def _disk(r: int) -> np.ndarray:
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (yy * yy + xx * xx) <= r * r
