"""Peak memory of tissue detection + tile grid + reading every tile of one large slide.

    python scripts/mem_tiling.py [--slide /tmp/immunoplex_mem/big.ome.tif] [--batch 4096]

The slide is the 40,000 x 40,000 x 8 uint16 zstd OME-TIFF without a pyramid that
``scripts/mem_predict.py`` writes (the worst case: the tissue mask is built from level 0).
Tiles of 32 px at 2 µm/px (the default model's tiling) are read in batches and dropped; the
peak resident set (ru_maxrss) is printed after the grid and after reading.
"""

from __future__ import annotations

import argparse
import resource
import time


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slide", default="/tmp/immunoplex_mem/big.ome.tif")
    ap.add_argument("--batch", type=int, default=4096)
    args = ap.parse_args()
    from immunoplex.io import open_slide
    from immunoplex.tiles.grid import iter_tile_batches, make_tile_grid
    from immunoplex.tiles.params import TilingParams

    t0 = time.time()
    with open_slide(args.slide) as slide:
        grid = make_tile_grid(slide, TilingParams(tile_size=32, mpp=2.0, min_tissue=0.5))
        print(f"{len(grid)} tiles; grid peak RSS {peak_mb():.0f} MB ({time.time() - t0:.0f} s)")
        n = sum(len(idx) for idx, _ in iter_tile_batches(slide, grid, None, batch=args.batch))
    print(f"read {n} tiles; peak RSS {peak_mb():.0f} MB ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
