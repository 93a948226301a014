"""Reader throughput against the raw decode limit, and peak memory on a huge slide.

    python scripts/bench_reader.py [--size 4096] [--reps 5] [--big] [--big-size 40000]

Throughput: 256x256 tiles at shuffled positions, 8 channels, uint16, uncompressed and zstd.
The raw limit reads the same tile segments' bytes (``os.pread``) and decodes them with
imagecodecs (``zstd_decode``), nothing else; the reader is ``Slide.read_region`` of the same
windows. Both run single-threaded and with a thread pool of all cores (the same pool for both;
the slide itself reads serially inside each call). Repetitions are interleaved (raw, reader,
then reader, raw...) after a warm-up of each, and medians compared. Optionally tifffile's zarr
slicing as the generic baseline. ``--big`` writes a big x big x 8 slide tile by tile from a
generator (zstd, SubIFD pyramid) and tiles + reads it in a subprocess, reporting peak RSS.
OME-Zarr: the zstd slide's level 0 written by ``ome-zarr`` (zstd, one 256-px chunk per tile and
channel), read by the OME-Zarr reader vs tifffile's own windowed read of the TIFF
(``ngff_vs_tifffile_1t``; ``--ngff-only`` runs just that).
Last line: ``RATIO uncompressed_1t=.. target>=0.8 PASS|MISS uncompressed_<N>t=.. zstd_1t=..
zstd_<N>t=.. ngff_vs_tifffile_1t=..`` (reader / raw limit, tiles/s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

import benchlib

TILE = 256
C = 8


def tile_pool(seed: int = 0, n: int = 16) -> list[np.ndarray]:
    """A few realistic-ish tiles (Poisson background + blobs) reused across the image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:TILE, :TILE]
    out = []
    for _ in range(n):
        t = rng.poisson(20, (TILE, TILE)).astype(np.float64)
        for _ in range(30):
            cy, cx = rng.integers(0, TILE, 2)
            t += 800 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 40.0)
        out.append(np.clip(t, 0, 65535).astype(np.uint16))
    return out


def tiles_gen(h: int, w: int, pool: list[np.ndarray], channels: int = C):
    """Tiles in TIFF order (channel, row, col) for tifffile's generator writer."""
    k = 0
    for _ in range(channels):
        for _ in range(-(-h // TILE)):
            for _ in range(-(-w // TILE)):
                yield pool[k % len(pool)]
                k += 1


def write_slide(path: Path, size: int, compression: str | None, levels: int = 1) -> Path:
    pool = tile_pool()
    meta = {
        "axes": "CYX",
        "Channel": {"Name": [f"M{i}" for i in range(C)]},
        "PhysicalSizeX": 0.5,
        "PhysicalSizeY": 0.5,
    }
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(
            tiles_gen(size, size, pool),
            shape=(C, size, size),
            dtype=np.uint16,
            tile=(TILE, TILE),
            compression=compression,
            subifds=levels - 1,
            metadata=meta,
        )
        s = size
        for _ in range(levels - 1):
            s //= 2
            tw.write(
                tiles_gen(s, s, pool),
                shape=(C, s, s),
                dtype=np.uint16,
                tile=(TILE, TILE),
                compression=compression,
                subfiletype=1,
            )
    return path


def raw_limit(path: Path, positions: list[tuple[int, int]], threads: int) -> float:
    """Tiles/s reading the tile segments with os.pread and decoding with imagecodecs only (each
    tile's data dropped once read)."""
    with tifffile.TiffFile(path) as tif:
        pages = list(tif.series[0].levels[0].pages)
        offs = [np.asarray(p.dataoffsets) for p in pages]
        cnts = [np.asarray(p.databytecounts) for p in pages]
        comp = pages[0].keyframe.compression
        cols = -(-pages[0].keyframe.imagewidth // TILE)
    fd = os.open(path, os.O_RDONLY)
    dec = imagecodecs.zstd_decode if comp == 50000 else None

    def one(pos: tuple[int, int]) -> int:
        i = (pos[0] // TILE) * cols + pos[1] // TILE
        n = 0
        for c in range(C):
            b = os.pread(fd, int(cnts[c][i]), int(offs[c][i]))
            a = np.frombuffer(dec(b) if dec else b, np.uint16)
            n += a.size
        return n

    t = time.perf_counter()
    if threads == 1:
        for p in positions:
            one(p)
    else:
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(one, positions))
    dt = time.perf_counter() - t
    os.close(fd)
    return len(positions) / dt


def reader(path: Path, positions: list[tuple[int, int]], threads: int) -> float:
    """Tiles/s of ``Slide.read_region`` on the same windows (the slide reads serially; threads
    come from the same kind of pool as :func:`raw_limit`'s). Like the raw limit, each tile is
    dropped once read: keeping all of them would measure page faults, not reading."""
    from immunoplex.io import open_slide

    with open_slide(path, threads=1) as s:

        def one(pos: tuple[int, int]) -> int:
            return s.read_region(0, pos[0], pos[1], TILE, TILE).size

        t = time.perf_counter()
        if threads == 1:
            for p in positions:
                one(p)
        else:
            with ThreadPoolExecutor(threads) as ex:
                list(ex.map(one, positions))
        dt = time.perf_counter() - t
    return len(positions) / dt


def zarr_baseline(path: Path, positions: list[tuple[int, int]]) -> float | None:
    try:
        import zarr
    except ImportError:
        return None
    with tifffile.TiffFile(path) as tif:
        z = zarr.open(tif.series[0].aszarr(level=0), mode="r")
        t = time.perf_counter()
        for y, x in positions:
            np.asarray(z[:, y : y + TILE, x : x + TILE])
        return len(positions) / (time.perf_counter() - t)


def interleaved(
    path: Path, positions: list[tuple[int, int]], threads: int, reps: int
) -> tuple[list[float], list[float]]:
    """Raw limit and reader tiles/s: one warm-up each, then ``reps`` rounds alternating order."""
    sides = [raw_limit, reader]
    for fn in sides:
        fn(path, positions, threads)
    got: dict[object, list[float]] = {fn: [] for fn in sides}
    for r in range(reps):
        for fn in sides if r % 2 == 0 else sides[::-1]:
            got[fn].append(fn(path, positions, threads))
    return got[raw_limit], got[reader]


def throughput(size: int, workdir: Path, reps: int) -> list[str]:
    """Print raw limit and reader tiles/s per file and thread count; the ratio-line parts."""
    cores = os.cpu_count() or 1
    rng = np.random.default_rng(0)
    n = size // TILE
    positions = [
        (int(y) * TILE, int(x) * TILE)
        for y, x in zip(*np.unravel_index(rng.permutation(n * n), (n, n)), strict=True)
    ]
    ratios = []
    for comp in (None, "zstd"):
        p = write_slide(workdir / f"bench_{comp or 'raw'}.ome.tif", size, comp)
        name = comp or "uncompressed"
        for th in sorted({1, cores}):
            lims, gots = interleaved(p, positions, th, reps)
            lim, got = benchlib.median(lims), benchlib.median(gots)
            ratios.append(benchlib.ratio_line(f"{name}_{th}t", got / lim, 0.8, ">="))
            print(
                f"{name:12s} threads={th:2d}  raw limit {lim:8.1f} tiles/s "
                f"(min {min(lims):.0f}, max {max(lims):.0f})  reader {got:8.1f} tiles/s "
                f"(min {min(gots):.0f}, max {max(gots):.0f})  ratio {got / lim:.2f}",
                flush=True,
            )
        zb = zarr_baseline(p, positions)
        if zb is not None:
            lim1 = raw_limit(p, positions, 1)
            print(f"{name:12s} zarr slicing (1 thread) {zb:8.1f} tiles/s  ratio {zb / lim1:.2f}")
    return ratios


def write_ngff(tif_path: Path, out: Path) -> Path:
    """The TIFF's level 0 as an OME-Zarr (ome-zarr writer), zstd chunks of one tile x channel."""
    import warnings

    import zarr
    from ome_zarr.writer import write_image

    data = tifffile.imread(tif_path)
    root = zarr.open_group(str(out), mode="w")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_image(
            data,
            group=root,
            axes="cyx",
            scale_factors=(),
            storage_options={
                "chunks": (1, TILE, TILE),
                "compressors": zarr.codecs.ZstdCodec(level=1),
            },
        )
    return out


def tifffile_tiles(path: Path, positions: list[tuple[int, int]]) -> float:
    """Tiles/s of tifffile's own windowed read (its zarr store over the TIFF tiles)."""
    import zarr

    with tifffile.TiffFile(path) as tif:
        z = zarr.open(tif.series[0].aszarr(level=0), mode="r")
        t = time.perf_counter()
        for y, x in positions:
            np.asarray(z[:, y : y + TILE, x : x + TILE])
        return len(positions) / (time.perf_counter() - t)


def ngff_tiles(path: Path, positions: list[tuple[int, int]]) -> float:
    from immunoplex.io import open_slide

    with open_slide(path) as s:
        t = time.perf_counter()
        for y, x in positions:
            s.read_region(0, y, x, TILE, TILE)
        return len(positions) / (time.perf_counter() - t)


def ngff_ratio(size: int, workdir: Path, reps: int) -> str:
    """OME-Zarr reader vs tifffile on the same data (zstd, 256-px chunks/tiles, 1 thread)."""
    rng = np.random.default_rng(1)
    n = size // TILE
    positions = [
        (int(y) * TILE, int(x) * TILE)
        for y, x in zip(*np.unravel_index(rng.permutation(n * n), (n, n)), strict=True)
    ]
    tif = write_slide(workdir / "bench_ngff.ome.tif", size, "zstd")
    z = write_ngff(tif, workdir / "bench.ome.zarr")
    sides = [tifffile_tiles, ngff_tiles]
    paths = {tifffile_tiles: tif, ngff_tiles: z}
    for fn in sides:
        fn(paths[fn], positions)
    got: dict[object, list[float]] = {fn: [] for fn in sides}
    for r in range(reps):
        for fn in sides if r % 2 == 0 else sides[::-1]:
            got[fn].append(fn(paths[fn], positions))
    tf, ng = benchlib.median(got[tifffile_tiles]), benchlib.median(got[ngff_tiles])
    print(f"ome-zarr     threads= 1  tifffile {tf:8.1f} tiles/s  ome-zarr reader {ng:8.1f} tiles/s")
    return benchlib.ratio_line("ngff_vs_tifffile_1t", ng / tf, 0.8, ">=")


BIG_CHILD = r"""
import json, resource, sys, time
from immunoplex.io import open_slide
from immunoplex.tiles.params import TilingParams
from immunoplex.tiles.grid import make_tile_grid, iter_tile_batches
t = time.perf_counter()
with open_slide(sys.argv[1]) as s:
    grid = make_tile_grid(s, TilingParams(tile_size=32, mpp=2.0, min_tissue=0.0))
    n = 0
    for idx, tiles in iter_tile_batches(s, grid, batch=4096):
        n += len(idx)
print(json.dumps({"tiles": n, "seconds": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def big(size: int, workdir: Path) -> dict:
    p = workdir / f"big_{size}.ome.tif"
    t = time.perf_counter()
    write_slide(p, size, "zstd", levels=4)
    wt = time.perf_counter() - t
    out = subprocess.run(
        [sys.executable, "-c", BIG_CHILD, str(p)], capture_output=True, text=True, check=True
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res.update(size=size, write_seconds=wt, file_mb=p.stat().st_size / 1e6)
    print(
        f"big slide {size}x{size}x{C}: wrote {res['file_mb']:.0f} MB in {wt:.0f}s; tiled+read "
        f"{res['tiles']} tiles in {res['seconds']:.1f}s, peak RSS {res['peak_rss_mb']:.0f} MB",
        flush=True,
    )
    p.unlink()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=4096, help="throughput slide side (px)")
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions per side")
    ap.add_argument("--big", action="store_true", help="also run the huge-slide memory test")
    ap.add_argument("--big-size", type=int, nargs="+", default=[10000, 40000])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--ngff-only", action="store_true", help="only the OME-Zarr vs tifffile ratio")
    args = ap.parse_args()
    benchlib.print_machine()
    with tempfile.TemporaryDirectory(dir=args.workdir) as d:
        work = Path(d)
        ratios = throughput(args.size, work, args.reps) if not args.ngff_only else []
        ratios.append(ngff_ratio(min(args.size, 2048), work, args.reps))
        if args.big:
            for s in args.big_size:
                big(s, work)
    print(" ".join([ratios[0], *(r.removeprefix("RATIO ") for r in ratios[1:])]))


if __name__ == "__main__":
    main()
