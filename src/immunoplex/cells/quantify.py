"""Per-cell measurements: centroid (µm), area (µm²), mean marker intensities (whole cell and
nucleus), tumour/stroma compartment and signed distance to the nearest tumour border (µm).

Sign convention: ``tumour_distance_um`` > 0 inside tumour (distance to the nearest stroma pixel),
< 0 in stroma (minus the distance to the nearest tumour pixel); NaN when the slide has no tumour
marker or no tumour. Coordinates put pixel (i, j) of the working grid at ((j + 0.5) * mpp,
(i + 0.5) * mpp) µm, so the same tissue gives the same µm at any resolution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from immunoplex.cells.segment import TileCells
from immunoplex.cells.window import channel_indices, pick_level, working_shape
from immunoplex.errors import ConfigError
from immunoplex.io import Slide


@dataclass
class CellTable:
    """One row per cell: ``obs`` (ids, geometry, compartment), ``X`` whole-cell means and
    ``nuclear`` nuclear means (cells x markers, in ``markers`` order), plus provenance."""

    obs: pd.DataFrame
    X: np.ndarray
    nuclear: np.ndarray
    markers: list[str]
    channels: list[str]
    mpp: float
    uns: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.obs)

    def marker(self, name: str, nuclear: bool = False) -> np.ndarray:
        return (self.nuclear if nuclear else self.X)[:, self.markers.index(name)]


def measure_tile(tile: TileCells, mpp: float) -> dict[str, np.ndarray]:
    """Area, nucleus area, centroid (µm) and per-channel means of the cells ``tile`` keeps."""
    n = len(tile.ids)
    c = tile.image.shape[0]
    if n == 0:
        e = np.empty(0)
        return {
            "cell_id": e.astype(np.int64), "x_um": e, "y_um": e, "area_um2": e,
            "nucleus_area_um2": e, "X": np.empty((0, c), np.float32),
            "nuclear": np.empty((0, c), np.float32),
        }  # fmt: skip
    first = int(tile.ids[0])

    def local(lab: np.ndarray) -> np.ndarray:
        return np.where(lab > 0, lab.astype(np.int64) - first + 1, 0).ravel()

    lc, ln = local(tile.cells), local(tile.nuclei)
    area = np.bincount(lc, minlength=n + 1)[1:].astype(np.float64)
    narea = np.bincount(ln, minlength=n + 1)[1:].astype(np.float64)
    yy, xx = np.indices(tile.cells.shape)
    cy = np.bincount(lc, weights=yy.ravel(), minlength=n + 1)[1:] / np.maximum(area, 1)
    cx = np.bincount(lc, weights=xx.ravel(), minlength=n + 1)[1:] / np.maximum(area, 1)
    img = tile.image.reshape(c, -1)
    X = np.stack([np.bincount(lc, weights=img[k], minlength=n + 1)[1:] for k in range(c)], 1)
    N = np.stack([np.bincount(ln, weights=img[k], minlength=n + 1)[1:] for k in range(c)], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        X = X / area[:, None]
        N = np.where(narea[:, None] > 0, N / np.maximum(narea, 1)[:, None], np.nan)
    return {
        "cell_id": tile.ids.astype(np.int64),
        "x_um": (cx + tile.x0 + 0.5) * mpp,
        "y_um": (cy + tile.y0 + 0.5) * mpp,
        "area_um2": area * mpp * mpp,
        "nucleus_area_um2": narea * mpp * mpp,
        "X": X.astype(np.float32),
        "nuclear": N.astype(np.float32),
    }


@dataclass(frozen=True)
class CompartmentParams:
    """Tumour mask from the tumour markers, at a coarse µm/px (bounded memory)."""

    tumour_markers: tuple[str, ...] = ("PanCK",)
    mask_mpp: float = 4.0
    smooth_um: float = 4.0  # about a tumour-cell radius: small nests survive, borders stay put
    min_tumour_um2: float = 300.0  # the smallest nest kept: about two tumour cells
    max_hole_um2: float = 400.0
    border_um: float = 30.0  # |distance| <= this is the border band
    # an immune cell counts as intratumoural (obs["intratumoural"], frac_intratumoural_*) this
    # deep inside a nest: one held at the border, within the map's ~3 µm placement error, is not
    intratumoural_um: float = 0.0
    threshold: float | None = None  # on the smoothed, slide-normalised signal; None = Otsu
    min_contrast: float = 2.0  # Otsu classes' mean ratio below this = no tumour (one population)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> CompartmentParams:
        d = dict(d or {})
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown compartment setting(s) {unknown}")
        if "tumour_markers" in d:
            d["tumour_markers"] = tuple(str(m) for m in d["tumour_markers"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tumour_markers"] = list(self.tumour_markers)
        return out


@dataclass
class TumourMap:
    """Tumour mask and signed border distance (µm) on a coarse grid of ``mpp`` µm/px."""

    tumour: np.ndarray | None
    distance_um: np.ndarray | None
    mpp: float
    pixel_area_mm2: float

    def lookup(self, x_um: np.ndarray, y_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(in_tumour, signed distance µm) at points, the distance interpolated bilinearly
        between coarse pixel centres: the border is placed to within a fraction of a coarse
        pixel, not rounded to the pixel grid (with nearest-pixel lookup every cell within half a
        4-µm pixel of a nest, e.g. a CD8 T cell held at the border, read as 2 µm inside)."""
        if self.tumour is None or self.distance_um is None:
            return np.zeros(len(x_um), bool), np.full(len(x_um), np.nan)
        h, w = self.tumour.shape
        u = np.clip(np.asarray(x_um, np.float64) / self.mpp - 0.5, 0, w - 1)
        v = np.clip(np.asarray(y_um, np.float64) / self.mpp - 0.5, 0, h - 1)
        j0 = np.minimum(np.floor(u).astype(np.int64), max(w - 2, 0))
        i0 = np.minimum(np.floor(v).astype(np.int64), max(h - 2, 0))
        j1, i1 = np.minimum(j0 + 1, w - 1), np.minimum(i0 + 1, h - 1)
        fu, fv = u - j0, v - i0
        D = self.distance_um
        d = (D[i0, j0] * (1 - fu) + D[i0, j1] * fu) * (1 - fv) + (
            D[i1, j0] * (1 - fu) + D[i1, j1] * fu
        ) * fv
        return d > 0, d


def tumour_map(
    slide: Slide,
    params: CompartmentParams,
    aliases: Mapping[str, Sequence[str]] | None = None,
    block_rows: int = 2048,
) -> TumourMap:
    """Read the tumour markers at ``mask_mpp`` in row blocks, smooth, threshold, clean up, and
    compute the signed distance to the tumour border."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    idx = channel_indices(slide.channels, list(params.tumour_markers), aliases)
    level, f = pick_level(slide, params.mask_mpp)
    k = max(1, int(round(f)))
    mpp = slide.level_mpp(level) * k
    area = mpp * mpp * 1e-6
    lh, lw = slide.levels[level]
    h, w = max(1, lh // k), max(1, lw // k)
    if not idx or lh < k or lw < k:
        return TumourMap(np.zeros((h, w), bool), np.full((h, w), np.nan, np.float32), mpp, area)
    coarse = np.zeros((len(idx), h, w), np.float32)
    step = max(k, (block_rows // k) * k)
    for y in range(0, h * k, step):
        rows = min(step, h * k - y)
        raw = slide.read_region(level, y, 0, rows, w * k, channels=idx).astype(np.float32)
        coarse[:, y // k : (y + rows) // k] = raw.reshape(len(idx), rows // k, k, w, k).mean((2, 4))
    for c in range(len(idx)):
        top = np.percentile(coarse[c], 99.5)
        coarse[c] /= top if top > 0 else max(float(coarse[c].max()), 1.0)
    sig = ndi.gaussian_filter(coarse.mean(0), params.smooth_um / mpp)
    empty = TumourMap(np.zeros((h, w), bool), np.full((h, w), np.nan, np.float32), mpp, area)
    if params.threshold is not None:
        t = float(params.threshold)
    elif np.ptp(sig) > 0:
        t = float(threshold_otsu(sig))
        if not _contrasted(sig, t, params.min_contrast):
            return empty
    else:
        return empty
    mask = sig > t
    lab, n = ndi.label(mask)
    if n:
        sizes = np.bincount(lab.ravel()) * area * 1e6
        mask = (sizes >= params.min_tumour_um2)[lab] & (lab > 0)
    holes = ndi.binary_fill_holes(mask) & ~mask
    hl, nh = ndi.label(holes)
    if nh:
        hs = np.bincount(hl.ravel()) * area * 1e6
        mask |= (hs <= params.max_hole_um2)[hl] & (hl > 0)
    if not mask.any():
        return TumourMap(mask, np.full((h, w), np.nan, np.float32), mpp, area)
    del coarse, sig, lab, holes, hl
    # pixel centres: half a pixel each side of the border. One float64 transform at a time,
    # kept as float32 (a 20,000-px slide at 4 µm/px is a 5,000 x 5,000 map)
    d = ndi.distance_transform_edt(~mask)
    d *= mpp
    d -= 0.5 * mpp
    np.negative(d, out=d)
    dist = d.astype(np.float32)
    del d
    d = ndi.distance_transform_edt(mask)
    d *= mpp
    d -= 0.5 * mpp
    dist[mask] = d[mask]
    del d
    return TumourMap(mask, dist, mpp, area)


def _contrasted(sig: np.ndarray, t: float, ratio: float) -> bool:
    hi, lo = sig[sig > t], sig[sig <= t]
    return bool(hi.size and lo.size and hi.mean() >= ratio * max(float(lo.mean()), 1e-12))


def build_table(
    parts: Sequence[Mapping[str, np.ndarray]],
    slide: Slide,
    slide_id: str,
    mpp: float,
    markers: list[str],
    tmap: TumourMap,
    border_um: float,
    intratumoural_um: float = 0.0,
) -> CellTable:
    """Concatenate per-tile measurements into a :class:`CellTable` with compartments."""
    cat = {k: np.concatenate([p[k] for p in parts]) if parts else None for k in
           ("cell_id", "x_um", "y_um", "area_um2", "nucleus_area_um2")}  # fmt: skip
    n_ch = len(slide.channels)
    X = np.concatenate([p["X"] for p in parts]) if parts else np.empty((0, n_ch), np.float32)
    N = np.concatenate([p["nuclear"] for p in parts]) if parts else np.empty((0, n_ch), np.float32)
    n = len(X)
    obs = pd.DataFrame(
        {k: (v if v is not None else np.empty(0)) for k, v in cat.items()},
    )
    obs["cell_id"] = obs["cell_id"].astype(np.int64)
    obs.insert(1, "slide_id", pd.Series([slide_id] * n, dtype="object"))
    inside, dist = tmap.lookup(obs["x_um"].to_numpy(), obs["y_um"].to_numpy())
    obs["compartment"] = pd.Categorical(
        np.where(inside, "tumour", "stroma"), categories=["tumour", "stroma"]
    )
    obs["tumour_distance_um"] = dist.astype(np.float32)
    obs["in_border"] = np.abs(dist) <= border_um
    obs["intratumoural"] = inside & (dist > intratumoural_um)
    obs.index = pd.Index([f"{slide_id}:{i}" for i in obs["cell_id"]], name="cell")
    h, w = working_shape(slide, mpp)
    uns = {
        "mpp": float(mpp),
        "shape_px": [int(h), int(w)],
        "slide_mpp": float(slide.level_mpp(0)),
        "slide_path": str(slide.path),
        "border_um": float(border_um),
        "intratumoural_um": float(intratumoural_um),
        "sign_convention": "tumour_distance_um > 0 inside tumour, < 0 in stroma",
    }
    return CellTable(obs, X, N, markers, list(slide.channels), float(mpp), uns)


def compartment_areas_mm2(
    tmap: TumourMap, x_um: np.ndarray, y_um: np.ndarray, border_um: float, tissue_um: float
) -> dict[str, float]:
    """Area (mm²) of tumour, stroma and the border band, within the tissue.

    Tissue is the tumour mask plus every coarse pixel within ``tissue_um`` of a cell centre.
    """
    from scipy import ndimage as ndi

    if tmap.tumour is None:
        raise ValueError("a tumour map without a grid")
    h, w = tmap.tumour.shape
    seeds = np.zeros((h, w), bool)
    i = np.clip((np.asarray(y_um) / tmap.mpp).astype(np.int64), 0, h - 1)
    j = np.clip((np.asarray(x_um) / tmap.mpp).astype(np.int64), 0, w - 1)
    seeds[i, j] = True
    tissue = tmap.tumour.copy()
    if seeds.any():
        near = ndi.distance_transform_edt(~seeds)
        near *= tmap.mpp
        tissue |= near <= tissue_um
        del near
    a = tmap.pixel_area_mm2
    tumour = float(np.count_nonzero(tmap.tumour)) * a
    d = tmap.distance_um
    border = 0.0 if d is None else float(np.count_nonzero(tissue & (np.abs(d) <= border_um))) * a
    total = float(np.count_nonzero(tissue)) * a
    return {"tissue": total, "tumour": tumour, "stroma": total - tumour, "border": border}
