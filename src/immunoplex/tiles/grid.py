"""The tile grid on tissue, tile reading in bounded-memory chunks, and grid files (Parquet)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from immunoplex.errors import ResolutionError
from immunoplex.io.base import Slide
from immunoplex.tiles.params import CHUNK_BYTES, TileGrid, TilingParams
from immunoplex.tiles.resample import (
    _aligned_copy,
    _resample,
    _source_window,
    choose_level,
    shape_at,
    to_dtype,
)
from immunoplex.tiles.tissue import slide_tissue
from immunoplex.utils.atomic import atomic_path


# ---------------------------------------------------------------------- grid
def make_tile_grid(
    slide: Slide, params: TilingParams, aliases: Mapping[str, Sequence[str]] | None = None
) -> TileGrid:
    """Tiles of ``params.tile_size`` at ``params.mpp`` with at least ``min_tissue`` tissue."""
    if slide.mpp is None:
        slide.level_mpp(0)  # raises ResolutionError with the message users need
    H, W = shape_at(slide, params.mpp)
    mask, mmpp = slide_tissue(slide, params, aliases)  # tissue markers by the user's aliases too
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
    """Tissue fraction of each tile (len(ys), len(xs)): mask pixels under each tile's footprint,
    counted one row of tiles at a time (cumulative column sums of the row's band)."""
    s = mpp / mask_mpp

    def bounds(v: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        a = np.clip(np.floor(v * s + 0.5), 0, n).astype(np.int64)
        b = np.clip(np.floor((v + T) * s + 0.5), 0, n).astype(np.int64)
        b = np.maximum(b, np.minimum(a + 1, n))
        return a, b

    y0, y1 = bounds(ys, mask.shape[0])
    x0, x1 = bounds(xs, mask.shape[1])
    tot = np.empty((len(ys), len(xs)), np.int64)
    col = np.zeros(mask.shape[1] + 1, np.int64)
    for i, (a, b) in enumerate(zip(y0, y1, strict=True)):
        np.cumsum(mask[a:b].sum(axis=0), out=col[1:])
        tot[i] = col[x1] - col[x0]
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


def chunk_side(slide: Slide, level: int, channels: Sequence[int], max_bytes: int) -> int:
    """Side (source pixels at ``level``) of the square chunks tiles are read in: at most about
    ``max_bytes`` of source pixels, in whole segment rows (so chunk edges fall on segment edges
    for square tiles and each segment is decoded once)."""
    side = max(1, math.isqrt(max_bytes // max(1, len(channels) * slide.dtype.itemsize)))
    period = slide.segment_rows(level, channels)
    return max(period, side // period * period) if period <= side else side


def _chunk_px(
    slide: Slide, grid: TileGrid, channels: Sequence[int], max_chunk_bytes: int | None
) -> int:
    """Side of a read chunk in pixels at the grid's µm/px (a multiple of the tile size)."""
    T = grid.params.tile_size
    lv = choose_level(slide, grid.mpp)
    f = grid.mpp / slide.level_mpp(lv)
    budget = CHUNK_BYTES if max_chunk_bytes is None else max_chunk_bytes
    return max(T, int(chunk_side(slide, lv, channels, budget) / f) // T * T)


def read_order(slide: Slide, grid: TileGrid, channels: Sequence[int] | None = None) -> np.ndarray:
    """Tile indices in the order :func:`iter_tile_chunks` reads them (chunk by chunk): batches
    cut from this order touch each file segment about once."""
    chans = list(range(len(slide.channels))) if channels is None else list(channels)
    if len(grid) == 0 or not chans:
        return np.arange(len(grid))
    return np.concatenate(list(_chunks(grid, _chunk_px(slide, grid, chans, None))))


def iter_tile_chunks(
    slide: Slide,
    grid: TileGrid,
    channels: Sequence[int] | None = None,
    dtype: np.dtype | None = None,
    max_chunk_bytes: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(indices, tiles (n, C, T, T)) of ``grid`` per spatial chunk, resampled to the grid's µm/px.

    Each chunk is one source window of about ``max_chunk_bytes`` (default :data:`CHUNK_BYTES`;
    :func:`chunk_side`), read once for all channels and resampled one channel at a time, so
    memory stays bounded whatever the slide size. Indices ascend within a chunk. Tiles are in
    ``dtype`` (default: the slide's).
    """
    chans = list(range(len(slide.channels))) if channels is None else list(channels)
    if len(grid) == 0 or not chans:
        return
    dt = np.dtype(slide.dtype if dtype is None else dtype)
    T = grid.params.tile_size
    lv = choose_level(slide, grid.mpp)
    f = grid.mpp / slide.level_mpp(lv)
    for idx in _chunks(grid, _chunk_px(slide, grid, chans, max_chunk_bytes)):
        c = grid.coords[idx]
        y0, x0 = int(c[:, 0].min()), int(c[:, 1].min())
        h, w = int(c[:, 0].max()) + T - y0, int(c[:, 1].max()) + T - x0
        iy0, ix0, iy1, ix1 = _source_window(f, y0, x0, h, w)
        region = slide.read_region(lv, iy0, ix0, iy1 - iy0, ix1 - ix0, chans)
        oy, ox = y0 * f - iy0, x0 * f - ix0
        if _aligned_copy(f, oy, ox) and region.dtype == dt:
            block = region
        else:
            block = np.empty((len(chans), h, w), dt)
            for i in range(len(chans)):
                block[i] = to_dtype(_resample(region[i : i + 1], f, oy, ox, h, w)[0], dt)
        tiles = np.empty((len(idx), len(chans), T, T), dt)
        for j, (ty, tx) in enumerate(c - (y0, x0)):
            tiles[j] = block[:, ty : ty + T, tx : tx + T]
        del region, block  # not kept alive while the caller holds this chunk
        yield idx, tiles


def read_tiles(
    slide: Slide,
    grid: TileGrid,
    channels: Sequence[int] | None = None,
    out: np.ndarray | None = None,
    out_channels: Sequence[int] | None = None,
) -> np.ndarray:
    """Tiles (N, C, T, T) of ``grid`` in the slide dtype, resampled to the grid's µm/px.

    Reads in bounded spatial chunks (:func:`iter_tile_chunks`). ``out`` receives the tiles in
    place (in its dtype); with ``out_channels`` the C read channels go to those positions of
    ``out``'s channel axis.
    """
    chans = list(range(len(slide.channels))) if channels is None else list(channels)
    T = grid.params.tile_size
    if out is None:
        out = np.zeros((len(grid), len(chans), T, T), slide.dtype)
    for idx, tiles in iter_tile_chunks(slide, grid, chans, out.dtype):
        if out_channels is None:
            out[idx] = tiles
        else:
            for i, d in enumerate(out_channels):
                out[idx, d] = tiles[:, i]
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
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
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
