"""Tiled cell segmentation of a slide in bounded memory.

The slide is cut into core tiles of ``tile_um`` on the working grid (``mpp`` µm/px); each is read
with a ``halo_um`` margin, segmented by a :class:`~immunoplex.cells.backends.SegmentationBackend`,
and a cell is kept only by the tile whose core holds its centroid, so cells on seams are counted
once. Kept cells get labels unique over the slide (1, 2, ... in tile order). Intensities are
normalised and thresholds fixed once per slide from a sample of tiles, so the tile size does not
change the result. :func:`iter_tiles` yields one :class:`TileCells` per tile; callers measure
cells and stream the label strips (:class:`LabelStrips`) while the tile is in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from immunoplex.cells.backends import SegmentationBackend, calibrate, make_backend
from immunoplex.cells.window import channel_indices, nuclear_indices, read_window, working_shape
from immunoplex.errors import ConfigError
from immunoplex.io import Slide

DEFAULT_MEMBRANE = (
    "PanCK", "ECadherin", "EPCAM", "CD45", "CD3", "CD4", "CD8", "CD20", "CD68", "CD163",
    "CD11c", "HLADR", "HLA1", "CD66b", "CD31", "Vimentin", "SMA", "CD99",
)  # fmt: skip


@dataclass(frozen=True)
class SegmentParams:
    """Physical segmentation settings (µm, µm²); ``mpp=None`` works at the slide's own µm/px."""

    mpp: float | None = None
    nuclear_markers: tuple[str, ...] = ("DAPI",)
    membrane_markers: tuple[str, ...] | str = DEFAULT_MEMBRANE  # or "none"
    tile_um: float = 512.0
    halo_um: float = 24.0
    norm_percentile: float = 99.5
    calibration_um: float = 256.0
    calibration_tiles: int = 8
    backend: str = "classical"
    backend_params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> SegmentParams:
        d = dict(d or {})
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown segmentation setting(s) {unknown}")
        for k in ("nuclear_markers", "membrane_markers"):
            if k in d and not isinstance(d[k], str):
                d[k] = tuple(str(m) for m in d[k])
        if "backend_params" in d:
            d["backend_params"] = dict(d["backend_params"] or {})
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for k in ("nuclear_markers", "membrane_markers"):
            if not isinstance(out[k], str):
                out[k] = list(out[k])
        out["backend_params"] = dict(self.backend_params)
        return out


@dataclass
class TileGeometry:
    """Core tiles of ``tile`` px on an (height, width) grid, read with a ``halo`` px margin."""

    height: int
    width: int
    tile: int
    halo: int

    @property
    def rows(self) -> int:
        return math.ceil(self.height / self.tile)

    @property
    def cols(self) -> int:
        return math.ceil(self.width / self.tile)

    def core(self, r: int, c: int) -> tuple[int, int, int, int]:
        y0, x0 = r * self.tile, c * self.tile
        return y0, x0, min(self.height, y0 + self.tile), min(self.width, x0 + self.tile)

    def padded(self, r: int, c: int) -> tuple[int, int, int, int]:
        y0, x0, y1, x1 = self.core(r, c)
        h = self.halo
        return max(0, y0 - h), max(0, x0 - h), min(self.height, y1 + h), min(self.width, x1 + h)


@dataclass
class TileCells:
    """The cells one tile keeps, with the padded window they were found in.

    ``image`` holds every slide channel (raw intensities on the working grid); ``cells`` and
    ``nuclei`` are labels of the kept cells only (slide-unique ids, 0 elsewhere); ``ids`` are
    those ids in increasing order.
    """

    y0: int
    x0: int
    image: np.ndarray
    cells: np.ndarray
    nuclei: np.ndarray
    ids: np.ndarray


@dataclass
class SlideSegmenter:
    """Everything fixed per slide: grid, channels, normalisation and the calibrated backend."""

    slide: Slide
    mpp: float
    geometry: TileGeometry
    nuclear: list[int]
    membrane: list[int]
    scale: np.ndarray  # per channel: intensity that maps to 1.0
    backend: SegmentationBackend

    def window(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        n = len(self.slide.channels)
        return read_window(self.slide, range(n), y0, x0, y1 - y0, x1 - x0, self.mpp)

    def inputs(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(nuclear, membrane) images normalised by the slide-level scales."""
        s = self.scale[:, None, None]
        nuc = (image[self.nuclear] / s[self.nuclear]).mean(axis=0)
        mem = (image[self.membrane] / s[self.membrane]).mean(axis=0) if self.membrane else None
        return nuc.astype(np.float32), None if mem is None else mem.astype(np.float32)


def make_segmenter(
    slide: Slide,
    params: SegmentParams,
    aliases: Mapping[str, Sequence[str]] | None = None,
    backend: SegmentationBackend | None = None,
) -> SlideSegmenter:
    """Resolve channels by alias, size the tiles and calibrate the backend on a tile sample."""
    mpp = float(params.mpp) if params.mpp else slide.level_mpp(0)
    h, w = working_shape(slide, mpp)
    tile = max(16, int(round(params.tile_um / mpp / 16)) * 16)  # TIFF tiles are multiples of 16
    halo = int(math.ceil(params.halo_um / mpp))
    if halo > tile:
        raise ConfigError(f"halo_um {params.halo_um} exceeds tile_um {params.tile_um}")
    geom = TileGeometry(h, w, tile, halo)
    nuclear = nuclear_indices(slide.channels, params.nuclear_markers, aliases, str(slide.path))
    mm = params.membrane_markers
    if mm == "none":
        membrane: list[int] = []
    elif mm == "all":
        skip = set(nuclear) | set(channel_indices(slide.channels, ["Autofluorescence"], aliases))
        membrane = [i for i in range(len(slide.channels)) if i not in skip]
    else:
        membrane = [i for i in channel_indices(slide.channels, mm, aliases) if i not in nuclear]
    if backend is None:
        backend = make_backend(params.backend, **dict(params.backend_params))
    seg = SlideSegmenter(slide, mpp, geom, nuclear, membrane, np.ones(len(slide.channels)), backend)
    # the calibration sample: evenly spaced windows of their own grid (independent of the tile
    # size, so any tiling of a slide sees the same thresholds); the whole of a small slide
    cal = max(16, int(round(params.calibration_um / mpp)))
    ch, cw = min(cal, h), min(cal, w)  # equal windows, inside the slide: no padding
    spots = [
        (min(r * ch, h - ch), min(c * cw, w - cw))
        for r in range(math.ceil(h / ch))
        for c in range(math.ceil(w / cw))
    ]
    k = min(len(spots), max(1, params.calibration_tiles))
    pick = [spots[i] for i in np.unique(np.linspace(0, len(spots) - 1, k).round().astype(int))]
    used = sorted(set(nuclear) | set(membrane))
    tiles = [read_window(slide, used, y, x, ch, cw, mpp) for y, x in pick]
    flat = np.concatenate([t.reshape(t.shape[0], -1) for t in tiles], axis=1)
    pct = np.percentile(flat, params.norm_percentile, axis=1).astype(np.float64)
    top = flat.max(axis=1)
    scale = np.ones(len(slide.channels))
    scale[used] = np.where(pct > 0, pct, np.where(top > 0, top, 1.0))
    seg.scale = scale
    mosaic = np.zeros((len(slide.channels), ch, cw * len(tiles)), np.float32)
    mosaic[used] = np.concatenate(tiles, axis=2)
    nuc, mem = seg.inputs(mosaic)
    seg.backend = calibrate(backend, nuc, mem, mpp)
    return seg


def _centroids(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, mean row, mean column) per label 0..n."""
    yy, xx = np.indices(labels.shape)
    flat = labels.ravel()
    cnt = np.bincount(flat, minlength=n + 1).astype(np.float64)
    sy = np.bincount(flat, weights=yy.ravel(), minlength=n + 1)
    sx = np.bincount(flat, weights=xx.ravel(), minlength=n + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return cnt, sy / cnt, sx / cnt


def _harmonise(nuclei: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Cells renumbered 1..n; a nucleus pixel takes the label of the cell it lies in."""
    ids, inv = np.unique(cells, return_inverse=True)
    inv = inv.reshape(cells.shape).astype(np.int32)
    if ids[0] != 0:
        inv += 1
    n = int(inv.max())
    return np.where((nuclei > 0) & (inv > 0), inv, 0).astype(np.int32), inv, n


def segment_tile(seg: SlideSegmenter, r: int, c: int, next_id: int) -> TileCells:
    """Segment tile (r, c) with its halo and keep the cells whose centroid lies in its core."""
    g = seg.geometry
    y0, x0, y1, x1 = g.core(r, c)
    py0, px0, py1, px1 = g.padded(r, c)
    image = seg.window(py0, px0, py1, px1)
    nuc, mem = seg.inputs(image)
    nuclei, cells = seg.backend.segment(nuc, mem, seg.mpp)
    if nuclei.shape != nuc.shape or cells.shape != nuc.shape:
        raise ConfigError(f"segmentation backend returned {cells.shape}, expected {nuc.shape}")
    nuclei, cells, n = _harmonise(np.asarray(nuclei), np.asarray(cells))
    _, cy, cx = _centroids(cells, n)
    gy, gx = np.floor(cy[1:] + py0), np.floor(cx[1:] + px0)
    keep = (gy >= y0) & (gy < y1) & (gx >= x0) & (gx < x1)
    lut = np.zeros(n + 1, np.int64)
    kept = np.flatnonzero(keep) + 1
    ids = np.arange(next_id, next_id + len(kept), dtype=np.int64)
    lut[kept] = ids
    return TileCells(
        py0, px0, image, lut[cells].astype(np.uint32), lut[nuclei].astype(np.uint32), ids
    )


def iter_tiles(seg: SlideSegmenter, first_id: int = 1) -> Iterator[TileCells]:
    """Tiles in row-major order; ids continue from tile to tile (unique over the slide)."""
    next_id = first_id
    for r in range(seg.geometry.rows):
        for c in range(seg.geometry.cols):
            t = segment_tile(seg, r, c, next_id)
            next_id += len(t.ids)
            yield t


StripSink = Callable[[int, np.ndarray], None]


class LabelStrips:
    """Assembles kept-cell labels into full-width strips of ``tile`` rows, emitted in order.

    A tile row's cells reach at most ``halo`` rows beyond its core, so once row r is pasted,
    strip r-1 is final. Memory: about three strips, whatever the slide height. Where two tiles
    claim one pixel, the first keeps it.
    """

    def __init__(self, geometry: TileGeometry, sinks: Sequence[StripSink]) -> None:
        self.g = geometry
        self.sinks = list(sinks)
        self.strips: dict[int, np.ndarray] = {}
        self.emitted = 0

    def _strip(self, s: int) -> np.ndarray:
        if s not in self.strips:
            h = min(self.g.tile, self.g.height - s * self.g.tile)
            self.strips[s] = np.zeros((h, self.g.width), np.uint32)
        return self.strips[s]

    def paste(self, y0: int, x0: int, labels: np.ndarray) -> None:
        t = self.g.tile
        h, w = labels.shape
        for s in range(y0 // t, (y0 + h - 1) // t + 1):
            strip = self._strip(s)
            a, b = max(y0, s * t), min(y0 + h, s * t + strip.shape[0])
            dst = strip[a - s * t : b - s * t, x0 : x0 + w]
            src = labels[a - y0 : b - y0]
            np.copyto(dst, src, where=(dst == 0) & (src > 0))

    def row_done(self, r: int) -> None:
        """Tile row ``r`` is pasted: emit every strip no later row can touch."""
        self._emit_until(r)  # strips < r are final

    def _emit_until(self, stop: int) -> None:
        while self.emitted < stop and self.emitted * self.g.tile < self.g.height:
            s = self.emitted
            strip = self.strips.pop(s, None)
            if strip is None:
                strip = self._strip(s)
                self.strips.pop(s)
            for sink in self.sinks:
                sink(s * self.g.tile, strip)
            self.emitted += 1

    def finish(self) -> None:
        self._emit_until(self.g.rows)


def segment_slide(
    slide: Slide,
    params: SegmentParams | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
    backend: SegmentationBackend | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Whole-slide (cells, nuclei) label images in memory, and the working µm/px.

    For small slides and tests; the CLI streams tiles instead (see :mod:`immunoplex.cells.run`).
    """
    seg = make_segmenter(slide, params or SegmentParams(), aliases, backend)
    g = seg.geometry
    full = {k: np.zeros((g.height, g.width), np.uint32) for k in ("cells", "nuclei")}

    def sink(key: str) -> StripSink:
        def put(y: int, strip: np.ndarray) -> None:
            full[key][y : y + strip.shape[0]] = strip

        return put

    strips = {k: LabelStrips(g, [sink(k)]) for k in full}
    r_prev = 0
    for i, t in enumerate(iter_tiles(seg)):
        r = i // g.cols
        if r != r_prev:
            for s in strips.values():
                s.row_done(r_prev)
            r_prev = r
        strips["cells"].paste(t.y0, t.x0, t.cells)
        strips["nuclei"].paste(t.y0, t.x0, t.nuclei)
    for s in strips.values():
        s.finish()
    return full["cells"], full["nuclei"], seg.mpp
