"""Peak memory of the cell stage on a big slide: a side x side x 8 synthetic OME-TIFF, written
with ``immunoplex.io.write.write_ome_tiff`` (tiled 512 px, zlib, no pyramid), then segmented with
every output (both masks, Parquet, h5ad, GeoJSON, QC PNG) in a fresh process whose peak RSS is
reported.

    .venv/bin/python scripts/mem_cells.py --side 20000 [--side 5000] [--keep /tmp/big]

The slide is 1 µm/px glass with tissue blocks (one in four 2,000 µm blocks) of cells on a
jittered 50 µm grid (DAPI disc r 3 µm, a CD45 ring, PanCK in half the blocks, CD8 on every
fifth cell); the other channels carry noise only. The image is built block by block into a
disk-backed array (np.memmap), so writing does not need the slide in memory either (its
pyramid would be, so none is written: the harder case for the reader).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHANNELS = ["DAPI", "PanCK", "CD8", "CD45", "CD68", "STAB1", "CD31", "CD66b"]
BLOCK = 2000  # µm = px at 1 µm/px
SPACING = 50.0


def _disc_kernels() -> tuple[np.ndarray, np.ndarray]:
    r = 6
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    d = np.hypot(yy, xx)
    return (d <= 3.0).astype(np.uint16), ((d > 4.0) & (d <= 5.0)).astype(np.uint16)


def build(path: Path, side: int, seed: int = 0) -> dict:
    """Write the slide; return its cell count and the seconds taken."""
    from immunoplex.io.write import write_ome_tiff

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    raw = np.lib.format.open_memmap(
        path.with_suffix(".npy"), mode="w+", dtype=np.uint16, shape=(len(CHANNELS), side, side)
    )
    nuc, ring = _disc_kernels()
    r = nuc.shape[0] // 2
    n_cells = 0
    nb = -(-side // BLOCK)
    for by in range(nb):
        y0, y1 = by * BLOCK, min(side, (by + 1) * BLOCK)
        band = np.zeros((len(CHANNELS), y1 - y0, side), np.uint16)
        band += rng.integers(8, 14, band.shape, dtype=np.uint16)  # camera offset + read noise
        for bx in range(nb):
            if (by + bx) % 2 or by % 2:  # one block in four holds tissue
                continue
            x0, x1 = bx * BLOCK, min(side, (bx + 1) * BLOCK)
            g = np.arange(12.0, min(BLOCK, x1 - x0) - 12.0, SPACING)
            gy = np.arange(12.0, min(BLOCK, y1 - y0) - 12.0, SPACING)
            cy, cx = np.meshgrid(gy, g, indexing="ij")
            cy = (cy.ravel() + rng.uniform(-6, 6, cy.size)).astype(int)
            cx = (cx.ravel() + rng.uniform(-6, 6, cx.size)).astype(int) + x0
            band[0, :, x0:x1] += 30  # tissue background
            if bx % 4 == 0:
                band[1, :, x0:x1] += 400  # PanCK region
            for k, (i, j) in enumerate(zip(cy, cx)):
                sl = (slice(i - r, i + r + 1), slice(j - r, j + r + 1))
                band[0][sl] += nuc * 900
                band[3][sl] += ring * 500
                if k % 5 == 0:
                    band[2][sl] += ring * 600
            n_cells += len(cy)
        raw[:, y0:y1] = band
    raw.flush()
    # levels=1: write_ome_tiff builds a pyramid in memory (the base summed in uint32), which
    # this writer cannot afford at 20,000 px; the cell stage reads a slide without one in strips
    write_ome_tiff(path, raw, CHANNELS, 1.0, tile=512, levels=1, compression_level=1, name="big")
    del raw
    path.with_suffix(".npy").unlink()
    return {"n_cells_drawn": n_cells, "write_s": round(time.perf_counter() - t0, 1)}


def _rss_mb(key: str = "VmRSS") -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return float("nan")


class RssTrace:
    """Samples this process's RSS every ``every`` s in a thread (to tell a leak, which keeps
    growing, from caches and buffers that fill once and stay flat)."""

    def __init__(self, every: float = 5.0) -> None:
        import threading

        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._t0 = time.perf_counter()
        self._every = every
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.samples.append((time.perf_counter() - self._t0, _rss_mb()))

    def stop(self) -> list[list[float]]:
        """RSS (MB) at each tenth of the run: flat after the start means no leak."""
        self._stop.set()
        self._thread.join()
        if not self.samples:
            return []
        t_end = self.samples[-1][0]
        out = []
        for k in range(1, 11):
            t, r = min(self.samples, key=lambda s: abs(s[0] - t_end * k / 10))
            out.append([round(t), round(r)])
        return out


def segment(path: Path, out: Path) -> dict:
    """Run in the child: the cell stage on the slide, every output; peak RSS of this process
    and its RSS over the run (``rss_trace_mb``: [seconds, MB] at each tenth)."""

    from immunoplex.cells import run_slide
    from immunoplex.cells.phenotype import PhenotypeScheme
    from immunoplex.io import open_slide
    from immunoplex.paths import config_dir

    scheme = PhenotypeScheme.load(config_dir() / "cells" / "phenotypes" / "default.yaml")
    t0 = time.perf_counter()
    trace = RssTrace()
    with open_slide(path) as slide:
        res = run_slide(slide, "big", out, scheme=scheme)
    dt = time.perf_counter() - t0
    rss_trace = trace.stop()
    # VmHWM, the high-water mark of this process's own memory: ru_maxrss survives exec on Linux,
    # so in this child it reported the parent's peak at fork (6.8 GB after writing a
    # 20,000-px slide through a memmap), not the cell stage's
    rss = _rss_mb("VmHWM")
    sizes = {k: round(p.stat().st_size / 2**20, 1) for k, p in res.files.items()}
    return {"n_cells": len(res.table), "seconds": round(dt, 1),
            "cells_per_s": round(len(res.table) / dt, 1), "peak_rss_mb": round(rss),
            "rss_trace_mb": rss_trace, "files_mb": sizes}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--side", type=int, action="append", help="px (1 µm/px); repeatable")
    ap.add_argument("--keep", type=Path, help="write under this folder and keep the files")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(segment(Path(a.child[0]), Path(a.child[1]))))
        return
    rows = []
    for side in a.side or [5000, 20000]:
        with contextlib.ExitStack() as stack:
            if a.keep is None:
                d = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            else:
                d = a.keep / f"side{side}"
                d.mkdir(parents=True, exist_ok=True)
            path = d / f"big{side}.ome.tif"
            info = build(path, side) if not path.is_file() else {}
            cmd = [sys.executable, __file__, "--child", str(path), str(d / "out")]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(proc.stderr[-2000:])
            child = json.loads(proc.stdout.splitlines()[-1])
            row = {"side": side, "channels": len(CHANNELS), **info, **child}
            print(json.dumps(row), flush=True)
            rows.append(row)


if __name__ == "__main__":
    main()
