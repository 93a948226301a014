"""One slide's tile values (attention, score) and the geometry that maps its tiling grid to level-0
pixels; tile values painted on that grid."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from immunoplex.io.base import Slide
from immunoplex.tiles.resample import shape_at


@dataclass
class SlideHeat:
    """One slide's tiles (coords at the tiling µm/px) with attention and scores."""

    slide_id: str
    path: Path
    coords: np.ndarray  # (N, 2) y, x in pixels at tiling_mpp
    tile_size: int
    tiling_mpp: float
    attention: np.ndarray  # (N,)
    score: np.ndarray  # (N,)
    n_patient_tiles: int
    mpp_override: float | None = None
    patient_id: str = ""
    probability: float | None = None
    aliases: dict[str, list[str]] = field(default_factory=dict)
    channel_names: Any = None  # io.names.ChannelNames from outside the file (manifest, names file)

    @property
    def attention_rel(self) -> np.ndarray:
        return self.attention * max(self.n_patient_tiles, 1)


@dataclass(frozen=True)
class Geometry:
    """How tiling pixels map onto the slide's level 0."""

    level0: tuple[int, int]  # (H0, W0)
    slide_mpp: float
    tiling_shape: tuple[int, int]  # (H, W) at the tiling µm/px
    tiling_mpp: float

    @property
    def tile_to_level0(self) -> float:
        """Level-0 pixels per tiling pixel (the scale the tile grid uses)."""
        return self.tiling_mpp / self.slide_mpp

    @property
    def raster_scale(self) -> tuple[float, float]:
        """(sy, sx): level-0 pixels per heatmap pixel so the heatmap covers the slide exactly."""
        return (self.level0[0] / self.tiling_shape[0], self.level0[1] / self.tiling_shape[1])

    @classmethod
    def of(cls, slide: Slide, tiling_mpp: float) -> Geometry:
        mpp = slide.level_mpp(0)
        return cls(tuple(slide.levels[0]), mpp, shape_at(slide, tiling_mpp), tiling_mpp)


def level0_boxes(coords: np.ndarray, tile_size: int, geo: Geometry) -> np.ndarray:
    """Tile boxes (N, 4) x0, y0, x1, y1 in level-0 pixels."""
    s = geo.tile_to_level0
    y0 = coords[:, 0].astype(np.float64) * s
    x0 = coords[:, 1].astype(np.float64) * s
    side = tile_size * s
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1)


# ----------------------------------------------------------------------------- raster
def tile_raster(
    heat: SlideHeat, geo: Geometry, values: np.ndarray, factor: int = 1, fill: float = np.nan
) -> np.ndarray:
    """Values painted on the tiling grid (H, W) (averaged where strided tiles overlap)."""
    H, W = geo.tiling_shape
    h, w = math.ceil(H / factor), math.ceil(W / factor)
    acc = np.zeros((h, w), np.float64)
    cnt = np.zeros((h, w), np.float64)
    T = heat.tile_size
    for (y, x), v in zip(heat.coords.tolist(), values.tolist(), strict=True):
        if not math.isfinite(v):
            continue
        y0, x0 = y // factor, x // factor
        y1, x1 = min(h, math.ceil((y + T) / factor)), min(w, math.ceil((x + T) / factor))
        acc[y0:y1, x0:x1] += v
        cnt[y0:y1, x0:x1] += 1
    out = np.full((h, w), fill, np.float64)
    np.divide(acc, cnt, out=out, where=cnt > 0)
    return out.astype(np.float32)
