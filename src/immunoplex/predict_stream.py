"""Streaming slide embedding for inference: read a batch of tiles, normalise, encode, discard.

``immunoplex-predict`` never holds a slide's tiles: it keeps the tile grid (coordinates), the
per-slide intensity statistics and the tile embeddings (N x D floats), so peak memory is set by the
tile grid and one batch, not by the slide's size. Reading the next batch runs in a background
thread while the model encodes the current one.

The per-slide intensity statistics are fitted on exactly the tiles the cached path would sample
(``IntensityNorm.fit`` draws tile indices, then reads only those through :class:`LazyTiles`), so
streamed and cached predictions are identical.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from immunoplex.data.bags import SlideTiles
from immunoplex.data.transforms import normalise_tiles
from immunoplex.intensity import IntensityNorm
from immunoplex.io.panel import Panel, PanelMatch, match_panel
from immunoplex.io.slide import Slide, open_slide
from immunoplex.tiling import (
    TileGrid,
    TilingParams,
    _chunks,
    choose_level,
    make_tile_grid,
    read_tiles,
)


@dataclass
class OpenedSlide:
    """A slide opened for streaming: its panel match and tile grid (no pixels read yet)."""

    slide_id: str
    path: Path
    slide: Slide
    match: PanelMatch
    grid: TileGrid
    dtype: np.dtype

    @property
    def present(self) -> np.ndarray:
        return np.asarray(self.match.present, dtype=bool)

    @property
    def src(self) -> list[int]:
        """Slide channel index of each present panel marker, in panel order."""
        return [i for i in self.match.indices if i is not None]

    @property
    def dst(self) -> list[int]:
        """Panel position of each present marker."""
        return [j for j, i in enumerate(self.match.indices) if i is not None]

    def close(self) -> None:
        self.slide.close()


def open_for_streaming(
    path: Path,
    slide_id: str,
    panel: Panel,
    params: TilingParams,
    mpp: float | None,
    required: Sequence[str] | None,
) -> OpenedSlide:
    """Open, match the panel by name and build the tile grid (tissue detection) of one slide."""
    slide = open_slide(path, mpp=mpp)
    try:
        match = match_panel(panel, slide.channels, source=path, required=required)
        grid = make_tile_grid(slide, params)
    except BaseException:
        slide.close()
        raise
    dtype = np.dtype(np.float32) if slide.dtype.kind == "f" else slide.dtype
    return OpenedSlide(slide_id, Path(path), slide, match, grid, dtype)


class LazyTiles:
    """An (N, C, T, T) array-like over a slide's tile grid that reads tiles only when indexed.

    Indexing with an array of tile indices returns those tiles in panel order (absent markers are
    zero), exactly as the tile cache would hold them.
    """

    def __init__(self, s: OpenedSlide, n_channels: int) -> None:
        self.s = s
        T = s.grid.params.tile_size
        self.shape = (len(s.grid), n_channels, T, T)
        self.dtype = s.dtype
        self.ndim = 4

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: Any) -> np.ndarray:
        sel = np.arange(self.shape[0])[idx]
        sel = np.atleast_1d(sel)
        return self.read(sel)

    def read(self, sel: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Tiles ``sel`` (in that order) into ``out`` (or a new array)."""
        g = self.s.grid
        sub = TileGrid(g.coords[sel], g.tissue[sel], g.shape, g.params, g.mpp)
        if out is None:
            out = np.zeros((len(sel), *self.shape[1:]), self.dtype)
        else:
            out = out[: len(sel)]
            out.fill(0)
        if self.s.src and len(sel):
            read_tiles(self.s.slide, sub, self.s.src, out=out, out_channels=self.s.dst)
        return out


def fit_slide_norm(
    tiles: Any, present: np.ndarray, low_pct: float, high_pct: float
) -> IntensityNorm:
    """Per-slide intensity statistics on tissue tiles (any (N, C, T, T) array-like)."""
    return IntensityNorm.fit(tiles, present=present, low_pct=low_pct, high_pct=high_pct)


def read_order(s: OpenedSlide) -> np.ndarray:
    """Tile indices in spatial blocks of about 1024 source pixels (each segment decoded once)."""
    g = s.grid
    if len(g) == 0:
        return np.zeros(0, np.int64)
    T = g.params.tile_size
    f = g.mpp / s.slide.level_mpp(choose_level(s.slide, g.mpp))
    chunk = max(T, int(1024 / f) // T * T)
    return np.concatenate(list(_chunks(g, chunk)))


def _batches(order: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for a in range(0, len(order), size):
        yield order[a : a + size]


@torch.no_grad()
def embed_streamed(
    encode: Callable[[torch.Tensor], torch.Tensor],
    s: OpenedSlide,
    n_channels: int,
    norm: IntensityNorm,
    device: torch.device,
    batch_size: int = 512,
    prefetch: bool = True,
) -> torch.Tensor:
    """(N, D) embeddings of every tile of ``s`` in grid order; one batch of pixels in memory.

    ``encode`` maps normalised tiles (M, C, T, T) on ``device`` to (M, D). With ``prefetch`` the
    next batch is read in a background thread while this one is encoded (two buffers in turn).
    """
    lazy = LazyTiles(s, n_channels)
    n = len(lazy)
    order = read_order(s)
    low = torch.tensor(norm.low, dtype=torch.float32, device=device)
    high = torch.tensor(norm.high, dtype=torch.float32, device=device)
    bufs = [np.zeros((min(batch_size, max(n, 1)), *lazy.shape[1:]), lazy.dtype) for _ in range(2)]
    out: torch.Tensor | None = None
    pool = (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="immunoplex-read")
        if prefetch
        else None
    )
    try:
        batches = list(_batches(order, batch_size))

        def submit(k: int) -> Future[np.ndarray] | np.ndarray:
            b = bufs[k % 2]
            if pool is None:
                return lazy.read(batches[k], b)
            return pool.submit(lazy.read, batches[k], b)

        pending = submit(0) if batches else None
        for k, sel in enumerate(batches):
            assert pending is not None
            tiles = pending.result() if isinstance(pending, Future) else pending
            pending = submit(k + 1) if k + 1 < len(batches) else None
            m = len(sel)
            x = torch.from_numpy(tiles).to(device)
            batch = {
                "tiles": x[None],
                "tile_low": low.expand(1, m, -1),
                "tile_high": high.expand(1, m, -1),
            }
            h = encode(normalise_tiles(batch)[0])
            if out is None:
                out = torch.empty((n, h.shape[1]), dtype=h.dtype, device=device)
            out[torch.from_numpy(sel).to(device)] = h
            del x, batch, tiles
        if pending is not None and isinstance(pending, Future):
            pending.result()
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    if out is None:
        return torch.zeros((0, 1), device=device)
    return out


def streamed_slide_tiles(
    s: OpenedSlide, norm: IntensityNorm, embeddings: np.ndarray | None
) -> SlideTiles:
    """The SlideTiles of a streamed slide: coordinates, statistics and embeddings, no pixels."""
    return SlideTiles(
        slide_id=s.slide_id,
        tiles=None,
        coords=np.asarray(s.grid.coords),
        low=np.asarray(norm.low, dtype=np.float32),
        high=np.asarray(norm.high, dtype=np.float32),
        present=s.present,
        embeddings=embeddings,
    )
