"""Streaming slide embedding for inference: read a batch of tiles, normalise, encode, discard.

``immunoplex-predict`` never holds a slide's tiles: it keeps the tile grid (coordinates), the
per-slide intensity statistics and the tile embeddings (N x D floats), so peak memory is set by the
tile grid and one batch, not by the slide's size. Reading the next batch runs in a background
thread while the model encodes the current one (predict's ``prefetch`` option; off: in turn).

The per-slide intensity statistics are fitted on exactly the tiles the cached path would sample
(``data.slides.fit_slide_norm`` draws tile indices, then reads only those through :class:`LazyTiles`), so
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
from immunoplex.data.transforms import encode_tile_batches, tile_normaliser
from immunoplex.io import Slide, open_slide
from immunoplex.io.names import ChannelNames
from immunoplex.io.panel import Panel, PanelMatch, match_panel
from immunoplex.tiles.grid import make_tile_grid, read_order, read_tiles
from immunoplex.tiles.intensity import IntensityNorm
from immunoplex.tiles.params import TileGrid, TilingParams


@dataclass
class OpenedSlide:
    """A slide opened for streaming: its panel match and tile grid (no pixels read yet)."""

    slide_id: str
    path: Path
    slide: Slide
    match: PanelMatch
    grid: TileGrid
    # Set when prepared ahead (inference.prefetch): the tile reader and the fitted statistics.
    lazy: LazyTiles | None = None
    norm: IntensityNorm | None = None

    @property
    def dtype(self) -> np.dtype:
        """dtype of the tiles (float slides: float32, as the tile cache stores them)."""
        return np.dtype(np.float32) if self.slide.dtype.kind == "f" else np.dtype(self.slide.dtype)

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
    channel_names: ChannelNames | None = None,
) -> OpenedSlide:
    """Open, match the panel by name and build the tile grid (tissue detection) of one slide."""
    slide = open_slide(path, mpp=mpp, channel_names=channel_names)
    try:
        match = match_panel(panel, slide.channels, source=path, required=required)
        grid = make_tile_grid(slide, params, panel.aliases)
    except BaseException:
        slide.close()
        raise
    return OpenedSlide(slide_id, Path(path), slide, match, grid)


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
        self.all_tiles: np.ndarray | None = None  # every tile, when one read returned them all
        # (indices, tiles) of the statistics sample: encoded first, so they are not read twice
        self.sample: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx: Any) -> np.ndarray:
        sel = np.atleast_1d(np.arange(self.shape[0])[idx])
        tiles = self.read(sel)
        if len(sel) == self.shape[0] and np.array_equal(sel, np.arange(self.shape[0])):
            # the statistics sample is the whole slide (small slides): keep it for encoding
            # (bounded by IntensityNorm's pixel budget) instead of reading the slide twice
            self.all_tiles = tiles
        elif self.all_tiles is None:
            self.sample = (sel, tiles)
        return tiles

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


@torch.no_grad()
def embed_streamed(
    encode: Callable[[torch.Tensor], torch.Tensor],
    lazy: LazyTiles,
    norm: IntensityNorm,
    device: torch.device,
    batch_size: int = 512,
    prefetch: bool = True,
) -> torch.Tensor:
    """(N, D) embeddings of every tile of a slide in grid order; one batch of pixels in memory.

    ``encode`` maps normalised tiles (M, C, T, T) on ``device`` to (M, D). With ``prefetch`` the
    next batch is read in a background thread while this one is encoded (two buffers in turn).
    Tiles already held by ``lazy`` are not re-read: a small slide read whole for its statistics,
    or a large slide's statistics sample, whose batches are encoded first (the reader thread reads
    the first batches of the rest meanwhile).
    """
    n = len(lazy)
    normalise = tile_normaliser(lazy.dtype, norm, device, n * lazy.shape[2] * lazy.shape[3])
    held = lazy.all_tiles
    order = np.arange(n) if held is not None else read_order(lazy.s.slide, lazy.s.grid, lazy.s.src)
    batches = [order[a : a + batch_size] for a in range(0, n, batch_size)]
    sample_batches: list[tuple[np.ndarray, np.ndarray]] = []
    if held is None and lazy.sample is not None and len(lazy.sample[0]) < n:
        sel, tiles_s = lazy.sample
        lazy.sample = None  # held only until encoded
        sample_batches = [
            (sel[a : a + batch_size], tiles_s[a : a + batch_size])
            for a in range(0, len(sel), batch_size)
        ]
        rest = order[~np.isin(order, sel)]
        batches = [rest[a : a + batch_size] for a in range(0, len(rest), batch_size)]
    rows = min(batch_size, max(n, 1))
    # two read buffers in turn (none when the tiles are already held)
    bufs = [
        np.zeros((rows, *lazy.shape[1:]), lazy.dtype) for _ in range(0 if held is not None else 2)
    ]
    use_pool = prefetch and held is None and (len(batches) > 1 or bool(sample_batches))
    pool = ThreadPoolExecutor(1, thread_name_prefix="immunoplex-read") if use_pool else None

    def fetch(k: int) -> Future[np.ndarray] | np.ndarray:
        if held is not None:
            return held[batches[k]]
        if pool is None:
            return lazy.read(batches[k], bufs[k % 2])
        return pool.submit(lazy.read, batches[k], bufs[k % 2])

    def normalised() -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        pending = fetch(0) if batches else None
        for sel, tiles in sample_batches:
            yield sel, normalise(tiles)
        for k, sel in enumerate(batches):
            assert pending is not None
            tiles = pending.result() if isinstance(pending, Future) else pending
            # the buffer being filled next is the other one: ``tiles`` stays valid until encoded
            pending = fetch(k + 1) if k + 1 < len(batches) else None
            yield sel, normalise(tiles)

    try:
        out = encode_tile_batches(encode, normalised(), n, device)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
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
