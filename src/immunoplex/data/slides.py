"""One slide's cached tiles -> the SlideTiles a patient bag is made of."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from immunoplex.data.bags import SlideTiles
from immunoplex.tiles.cache import TileSet
from immunoplex.tiles.intensity import IntensityNorm


def fit_slide_norm(
    tiles: Any, present: Sequence[bool], coords: np.ndarray, low_pct: float, high_pct: float
) -> IntensityNorm:
    """A slide's intensity statistics on its tissue tiles ((N, C, T, T), an array or anything
    indexable like one, e.g. ``predict_stream.LazyTiles``), sampled in whole blocks of tiles by
    grid position. The tile cache and streaming inference both call this, so they agree."""
    return IntensityNorm.fit(
        tiles, present=present, low_pct=low_pct, high_pct=high_pct, coords=coords
    )


def slide_tiles(ts: TileSet, slide_id: str, low_pct: float, high_pct: float) -> SlideTiles:
    """Per-slide intensity statistics (tissue tiles only) attached to the tile array."""
    norm = fit_slide_norm(ts.tiles, ts.present, ts.coords, low_pct, high_pct)
    return SlideTiles(
        slide_id=slide_id,
        tiles=ts.tiles,
        coords=np.asarray(ts.coords),
        low=np.asarray(norm.low, dtype=np.float32),
        high=np.asarray(norm.high, dtype=np.float32),
        present=np.asarray(ts.present, dtype=bool),
    )
