"""Peak memory of ``immunoplex-predict`` on one 40,000 x 40,000 x 8-channel slide.

    python scripts/mem_predict.py --ckpt RUN/model.ckpt [--slide /tmp/big.ome.tif] [--size 40000]

The slide is written tile by tile from a generator (the writer never holds the image), zstd
compressed, outside the repository. Prediction runs in a child process; its peak resident set
(VmHWM, which includes touched pages of memory-mapped tile caches) is reported.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

MARKERS = ["DAPI", "PanCK", "CD8", "CD68", "STAB1", "CD31", "CD66b", "FOXP3"]
TILE = 1024


def tiles(size: int, channels: int) -> Iterator[np.ndarray]:
    """(TILE, TILE) uint16 tiles, plane by plane, row-major: a textured disk of tissue."""
    yy, xx = np.mgrid[:TILE, :TILE]
    texture = (((yy // 6) * 7 + (xx // 6) * 3) % 13 * 30).astype(np.uint16)  # cheap to compress
    r = size * 0.3
    for c in range(channels):
        for ty in range(0, size, TILE):
            for tx in range(0, size, TILE):
                inside = np.hypot(yy + ty - size / 2, xx + tx - size / 2) < r
                yield (inside * (texture + 300 + 150 * c)).astype(np.uint16)


def write_slide(path: Path, size: int, mpp: float = 0.5) -> None:
    import tifffile

    meta = {"axes": "CYX", "Channel": {"Name": MARKERS}, "PhysicalSizeX": mpp, "PhysicalSizeY": mpp}
    tmp = path.with_name(f".{path.name}.tmp")
    with tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tw:
        tw.write(
            tiles(size, len(MARKERS)),
            shape=(len(MARKERS), size, size),
            dtype=np.uint16,
            tile=(TILE, TILE),
            compression="zstd",
            compressionargs={"level": 1},
            photometric="minisblack",
            metadata=meta,
        )
    tmp.replace(path)


def child(ckpt: str, slide: str, out: str) -> None:
    from immunoplex.inference.run import predict

    t0 = time.time()
    df = predict(
        {
            "ckpt": ckpt,
            "input": slide,
            "out_dir": out,
            "heatmaps": False,
            "explain": False,
            "progress": False,
            "device": "cpu",
            "chunk_size": 512,
        }
    )
    hwm = next(
        ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM")
    )
    print(
        json.dumps(
            {
                "patients": len(df),
                "seconds": round(time.time() - t0, 1),
                "VmHWM_kB": int(hwm.split()[1]),
                "ru_maxrss_kB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--slide", default="/tmp/immunoplex_mem/big.ome.tif")
    ap.add_argument("--size", type=int, default=40_000)
    ap.add_argument("--out", default="/tmp/immunoplex_mem/pred")
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    if args.child:
        child(args.ckpt, args.slide, args.out)
        return
    slide = Path(args.slide)
    slide.parent.mkdir(parents=True, exist_ok=True)
    if not slide.exists():
        t0 = time.time()
        write_slide(slide, args.size)
        print(f"wrote {slide} ({slide.stat().st_size / 2**20:.0f} MiB) in {time.time() - t0:.0f} s")
    shutil.rmtree(args.out, ignore_errors=True)  # a finished earlier run would be skipped
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            "--ckpt",
            args.ckpt,
            "--slide",
            str(slide),
            "--out",
            args.out,
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"predict on {args.size}x{args.size}x{len(MARKERS)}: peak RSS "
        f"{result['VmHWM_kB'] / 2**20:.2f} GiB in {result['seconds']} s ({result})"
    )


if __name__ == "__main__":
    main()
