"""One slide's cached tiles -> the SlideTiles a patient bag is made of."""

from __future__ import annotations

import numpy as np

from immunoplex.data.bags import SlideTiles
from immunoplex.intensity import IntensityNorm
from immunoplex.tilecache import TileSet


def slide_tiles(ts: TileSet, slide_id: str, low_pct: float, high_pct: float) -> SlideTiles:
    """Per-slide intensity statistics (tissue tiles only) attached to the tile array."""
    norm = IntensityNorm.fit(
        ts.tiles, present=ts.present, low_pct=low_pct, high_pct=high_pct, coords=ts.coords
    )
    return SlideTiles(
        slide_id=slide_id,
        tiles=ts.tiles,
        coords=np.asarray(ts.coords),
        low=np.asarray(norm.low, dtype=np.float32),
        high=np.asarray(norm.high, dtype=np.float32),
        present=np.asarray(ts.present, dtype=bool),
    )
