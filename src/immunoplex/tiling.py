"""Tissue detection, tile grids at a chosen µm/px, tile reading with resampling, grid files.

Everything works in bounded memory: low-resolution images are built band by band from the
coarsest pyramid level that is still fine enough, and tiles are read in spatial chunks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from immunoplex.errors import ConfigError, ResolutionError
from immunoplex.io.slide import Slide

NUCLEAR_MARKERS = ("DAPI",)  # canonical name; HH3/Nuc/Hoechst are its aliases


@dataclass(frozen=True)
class TilingParams:
    """How a slide is cut into tiles (all sizes in pixels at ``mpp``)."""

    tile_size: int = 32
    mpp: float = 2.0
    stride: int | None = None
    min_tissue: float = 0.5
    tissue_markers: tuple[str, ...] = NUCLEAR_MARKERS
    tissue_all_channels: bool = True  # average the nuclear signal with all channels' mean
    mask_mpp: float | None = None  # None: tile footprint / 8, at most 4096 px per side
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

    Whole pixels are summed with ``np.add.reduceat`` (one pass, no large temporaries) and the
    fractional pixels at both ends are added with their overlap weights.
    """
    n = a.shape[axis]
    e = np.clip(start + f * np.arange(n_out + 1), 0, n)
    lo = np.ceil(e[:-1] - 1e-9).astype(np.int64)
    hi = np.floor(e[1:] + 1e-9).astype(np.int64)
    bshape = [1] * a.ndim
    bshape[axis] = n_out

    def w(v: np.ndarray) -> np.ndarray:
        return v.reshape(bshape)

    full = hi > lo
    idx = np.stack([np.minimum(lo, n - 1), np.minimum(hi, n - 1)], 1).ravel()
    sums = np.add.reduceat(a, idx, axis=axis, dtype=np.float64)
    sums = np.take(sums, np.arange(0, 2 * n_out, 2), axis=axis)
    # reduceat sums [lo, hi) except when hi == n (then [lo, n-1)): add the last pixel back
    last = full & (hi == n) & (lo < n - 1)
    out = sums * w(full)
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
    return (out / f).astype(np.float32)


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
    f = mpp / slide.level_mpp(lv)
    fy = f  # pyramid levels keep the aspect ratio: one factor for both axes
    ly0, lx0 = y * fy, x * f
    iy0, ix0 = int(math.floor(ly0 + 1e-6)), int(math.floor(lx0 + 1e-6))
    iy1, ix1 = int(math.ceil((y + h) * fy - 1e-6)), int(math.ceil((x + w) * f - 1e-6))
    region = slide.read_region(lv, iy0, ix0, max(iy1 - iy0, 1), max(ix1 - ix0, 1), channels)
    k = round(f)
    if abs(f - k) < 1e-6 and k >= 1 and abs(ly0 - iy0) < 1e-6 and abs(lx0 - ix0) < 1e-6:
        if k == 1:
            return region[:, :h, :w].astype(np.float32)
        c = region.shape[0]
        r = region[:, : h * k, : w * k].astype(np.float32)
        return r.reshape(c, h, k, w, k).mean(axis=(2, 4))
    r = _box_axis(region, h, fy, ly0 - iy0, axis=1)  # (C, h, cols)
    return _box_axis(r, w, f, lx0 - ix0, axis=2)


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
    max_band_bytes: int = 64 << 20,
) -> np.ndarray:
    """The whole slide at ``mpp`` as float32 (C, H, W), built band by band (bounded memory)."""
    lv = choose_level(slide, mpp)
    H, W = shape_at(slide, mpp)
    chans = list(range(len(slide.channels))) if channels is None else list(channels)
    f = mpp / slide.level_mpp(lv)
    row_bytes = max(1, int(W * f * len(chans) * 8))
    band = max(1, int(max_band_bytes // (row_bytes * max(f, 1.0))))
    out = np.zeros((len(chans), H, W), np.float32)
    for y in range(0, H, band):
        h = min(band, H - y)
        out[:, y : y + h] = read_resampled(slide, mpp, y, 0, h, W, chans, level=lv)
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


def mask_resolution(slide: Slide, params: TilingParams, max_side: int = 4096) -> float:
    """µm/px of the tissue mask: 1/8 of a tile footprint, never finer than level 0."""
    mpp = params.mask_mpp or params.tile_size * params.mpp / 8.0
    mpp = max(mpp, slide.level_mpp(0))
    h0, w0 = slide.levels[0]
    longest_um = max(h0, w0) * slide.level_mpp(0)
    return max(mpp, longest_um / max_side)


def detect_tissue(
    img: np.ndarray,
    mpp: float,
    params: TilingParams | None = None,
    nuclear: Sequence[int] | None = None,
) -> np.ndarray:
    """Tissue mask (H, W) bool from a low-res (C, H, W) fluorescence image at ``mpp``.

    Each channel is scaled by its 99.5th percentile; the signal is the mean of the ``nuclear``
    channels (all when None), averaged with the mean of all channels when
    ``params.tissue_all_channels`` (stroma has few nuclei), then smoothed, put on an arcsinh
    scale (so dark backgrounds and dim slides separate well) and split by Otsu, then cleaned
    morphologically. When Otsu finds no real contrast (< 3x between classes) the image is taken
    to be all tissue (a field of view inside tissue) unless it is empty.
    """
    p = params or TilingParams()
    a = np.asarray(img, np.float32)
    if a.ndim == 2:
        a = a[None]
    a = np.where(np.isfinite(a), a, 0.0)
    scaled: dict[int, np.ndarray] = {}
    for i, ch in enumerate(a):
        hi = float(np.percentile(ch, 99.5))
        lo = float(min(np.percentile(ch, 0.5), 0.0)) if ch.min() < 0 else 0.0
        if hi - lo > 0:
            scaled[i] = np.clip((ch - lo) / (hi - lo), 0, None)
    if not scaled:
        return np.zeros(a.shape[1:], bool)
    nuc = [scaled[i] for i in (nuclear if nuclear is not None else scaled) if i in scaled]
    sig = np.mean(nuc, axis=0) if nuc else np.mean(list(scaled.values()), axis=0)
    if nuclear is not None and p.tissue_all_channels:
        sig = 0.5 * sig + 0.5 * np.mean(list(scaled.values()), axis=0)
    sigma = p.smooth_um / mpp
    if sigma > 0.3:
        sig = ndi.gaussian_filter(sig, sigma, mode="nearest")
    top = float(np.percentile(sig, 99.0))
    if top <= 0:
        return np.zeros(sig.shape, bool)
    c = max(0.02 * top, 1e-6)
    v = np.arcsinh(sig / c)
    t, m0, m1 = otsu(v)
    if m1 - m0 < math.log(3.0):
        mask = np.ones(sig.shape, bool) if np.median(sig) > 0.05 * top else v > t
    else:
        mask = v > t
    return clean_mask(mask, mpp, p)


def otsu(v: np.ndarray, bins: int = 256) -> tuple[float, float, float]:
    """Otsu threshold on values clipped to their 0.1-99.9 percentiles, with the class means."""
    lo, hi = np.percentile(v, [0.1, 99.9])
    if hi <= lo:
        return float(hi), float(lo), float(lo)
    hist, edges = np.histogram(np.clip(v, lo, hi), bins=bins, range=(lo, hi))
    centers = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centers)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    i = int(np.argmax(between[:-1])) if bins > 1 else 0
    return float(edges[i + 1]), float(m0[i]), float(m1[i])


def clean_mask(mask: np.ndarray, mpp: float, params: TilingParams) -> np.ndarray:
    """Close small gaps, drop specks smaller than min_object_um2, fill holes < max_hole_um2."""
    px_area = mpp * mpp
    r = max(1, int(round(params.smooth_um / mpp / 2)))
    st = ndi.generate_binary_structure(2, 1)
    m = ndi.binary_closing(mask, structure=st, iterations=r, border_value=0) | mask
    m = ndi.binary_opening(m, structure=st, iterations=1)
    lab, n = ndi.label(m)
    if n:
        sizes = ndi.sum(m, lab, index=np.arange(1, n + 1)) * px_area
        keep = np.concatenate([[False], sizes >= params.min_object_um2])
        m = keep[lab]
    holes = ~m
    lab, n = ndi.label(holes)
    if n:
        sizes = ndi.sum(holes, lab, index=np.arange(1, n + 1)) * px_area
        border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        small = np.concatenate([[False], sizes < params.max_hole_um2])
        small[border] = False
        m = m | small[lab]
    return m


def tissue_image(slide: Slide, params: TilingParams) -> tuple[np.ndarray, float, list[int] | None]:
    """Low-res image for tissue detection, its µm/px, and which of its channels are nuclear.

    Reads the tissue markers only, or every channel when ``tissue_all_channels`` (the nuclear
    indices then point into it; None when the slide has no tissue marker).
    """
    mmpp = mask_resolution(slide, params)
    nuc = resolve_channels(slide, params.tissue_markers)
    if params.tissue_all_channels or not nuc:
        return read_downsampled(slide, mmpp), mmpp, (nuc or None)
    return read_downsampled(slide, mmpp, nuc), mmpp, None


# ---------------------------------------------------------------------- grid
def make_tile_grid(slide: Slide, params: TilingParams) -> TileGrid:
    """Tiles of ``params.tile_size`` at ``params.mpp`` with at least ``min_tissue`` tissue."""
    if slide.mpp is None:
        slide.level_mpp(0)  # raises ResolutionError with the message users need
    H, W = shape_at(slide, params.mpp)
    img, mmpp, nuc = tissue_image(slide, params)
    mask = detect_tissue(img, mmpp, params, nuclear=nuc)
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
    """Tissue fraction of each tile (len(ys), len(xs)) from the mask's integral image."""
    s = mpp / mask_mpp
    ii = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.float64)
    ii[1:, 1:] = np.cumsum(np.cumsum(mask, 0), 1)

    def bounds(v: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        a = np.clip(np.floor(v * s + 0.5), 0, n).astype(np.int64)
        b = np.clip(np.floor((v + T) * s + 0.5), 0, n).astype(np.int64)
        b = np.maximum(b, np.minimum(a + 1, n))
        return a, b

    y0, y1 = bounds(ys, mask.shape[0])
    x0, x1 = bounds(xs, mask.shape[1])
    tot = ii[y1][:, x1] - ii[y0][:, x1] - ii[y1][:, x0] + ii[y0][:, x0]
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


def read_tiles(
    slide: Slide,
    grid: TileGrid,
    channels: Sequence[int] | None = None,
    out: np.ndarray | None = None,
    out_channels: Sequence[int] | None = None,
) -> np.ndarray:
    """Tiles (N, C, T, T) of ``grid`` in the slide dtype, resampled to the grid's µm/px.

    Tiles are read in spatial chunks of about 1024 source pixels, so each file segment is decoded
    about once. ``out`` (e.g. a memory-mapped array) receives the tiles in place; with
    ``out_channels`` the C read channels go to those positions of ``out``'s channel axis.
    """
    chans = list(range(len(slide.channels))) if channels is None else list(channels)
    T = grid.params.tile_size
    n = len(grid)
    if out is None:
        out = np.zeros((n, len(chans), T, T), slide.dtype)
    dest = list(range(len(chans))) if out_channels is None else list(out_channels)
    if n == 0 or not chans:
        return out
    lv = choose_level(slide, grid.mpp)
    f = grid.mpp / slide.level_mpp(lv)
    chunk = max(T, int(1024 / f) // T * T)
    for idx in _chunks(grid, chunk):
        c = grid.coords[idx]
        y0, x0 = int(c[:, 0].min()), int(c[:, 1].min())
        y1, x1 = int(c[:, 0].max()) + T, int(c[:, 1].max()) + T
        block = read_resampled(slide, grid.mpp, y0, x0, y1 - y0, x1 - x0, chans, level=lv)
        block = to_dtype(block, out.dtype)
        for j, (ty, tx) in zip(idx, c, strict=True):
            tile = block[:, ty - y0 : ty - y0 + T, tx - x0 : tx - x0 + T]
            if out_channels is None:
                out[j] = tile
            else:
                out[j, dest] = tile
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
    img: np.ndarray, colours: Sequence[tuple[float, float, float]], mask: np.ndarray | None = None
) -> np.ndarray:
    """Additive pseudo-colour RGB (H, W, 3) in [0, 1]; each channel scaled to its 1-99.7th
    percentile on tissue (whole image without a mask) with a mild gamma."""
    h, w = img.shape[1:]
    rgb = np.zeros((h, w, 3), np.float32)
    sel = mask if mask is not None and mask.shape == (h, w) and mask.any() else None
    for ch, col in zip(img, colours, strict=False):
        vals = ch[sel] if sel is not None else ch
        lo, hi = np.percentile(vals, [1.0, 99.7])
        z = np.clip((ch - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(ch)
        rgb += 0.8 * z[..., None] ** 0.9 * np.asarray(col, np.float32)
    return np.clip(rgb, 0, 1)


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
    img = read_downsampled(slide, tmpp, chans)
    mask_small = None
    if grid.mask is not None:
        zy = img.shape[1] / grid.mask.shape[0]
        zx = img.shape[2] / grid.mask.shape[1]
        mask_small = ndi.zoom(grid.mask.astype(np.uint8), (zy, zx), order=0).astype(bool)
        mask_small = mask_small[: img.shape[1], : img.shape[2]]
        if mask_small.shape != img.shape[1:]:
            mask_small = None
    colours = []
    pal = iter(QC_PALETTE)
    from immunoplex.io.panel import canonical_marker

    for c in chans:
        colours.append(QC_COLOURS.get(canonical_marker(slide.channels[c])) or next(pal))
    rgb = composite(img, colours, mask_small)
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
