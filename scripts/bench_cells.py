"""Cell-stage figures: whole-cell F1 on the IMC crop E34 against its published mask, and
segmentation speed / peak RSS on a synthetic disc slide.

    .venv/bin/python scripts/bench_cells.py [--side 4000] [--realdata ../shared/realdata]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from immunoplex.cells import run_slide
from immunoplex.cells.metrics import match_masks
from immunoplex.cells.segment import SegmentParams
from immunoplex.io import open_slide

ROOT = Path(__file__).resolve().parents[1]


def imc_f1(realdata: Path) -> None:
    d = realdata / "images" / "imc_cytomapper"
    if not (d / "E34_imc.tiff").is_file():
        print(f"IMC crop not found under {d}; skipped")
        return
    slide = open_slide(d / "E34_imc.tiff", mpp=1.0)
    slide.channels = ["H3", "CD99", "PIN", "CD8a", "CDH"]
    ref = tifffile.imread(d / "E34_mask.tiff")
    aliases = {"ECadherin": ["CDH"]}
    for name, mm in [("default membrane markers", None), ("all channels", "all")]:
        params = SegmentParams() if mm is None else SegmentParams(membrane_markers=mm)
        with tempfile.TemporaryDirectory() as tmp:
            res = run_slide(slide, "E34", tmp, segment=params, aliases=aliases, outputs=["mask"])
            pred = tifffile.imread(res.files["mask"])
        s = match_masks(pred, ref, 0.5)
        print(
            f"E34 whole cells ({name}): F1@IoU0.5 {s.f1:.3f}  P {s.precision:.3f}  "
            f"R {s.recall:.3f}  ({s.n_predicted} cells vs {s.n_reference})"
        )


def _draw(side: int, step: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(C, side, side) float32 at 1 µm/px: DAPI discs (r 3 µm), a CD45 ring (r 5 µm), PanCK in
    the left half; cell centres jittered on a ``step`` µm grid."""
    rng = np.random.default_rng(seed)
    g = np.arange(8.0, side - 8.0, step)
    xs, ys = np.meshgrid(g, g)
    centres = np.stack([xs.ravel(), ys.ravel()], 1) + rng.uniform(-2, 2, (xs.size, 2))
    img = np.zeros((3, side, side), np.float32)
    r = 6
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    for cx, cy in centres:
        i, j = int(cy), int(cx)
        d = np.hypot(yy + i + 0.5 - cy, xx + j + 0.5 - cx)
        sl = (slice(i - r, i + r + 1), slice(j - r, j + r + 1))
        img[0][sl] = np.maximum(img[0][sl], np.where(d <= 3.0, 100.0, 0.0))
        img[1][sl] = np.maximum(img[1][sl], np.where((d > 4.0) & (d <= 5.0), 60.0, 0.0))
    img[2][:, : side // 2] = 50.0
    img += rng.normal(0, 2.0, img.shape).astype(np.float32).clip(0, None)
    return img, centres


def speed(side: int) -> None:
    sys.path.insert(len(sys.path), str(ROOT / "tests"))
    from cells.conftest import write_slide  # type: ignore[import-not-found]

    with tempfile.TemporaryDirectory() as tmp:
        img, centres = _draw(side, 14.0)
        path = write_slide(Path(tmp) / "bench.ome.tif", img, ["DAPI", "CD45", "PanCK"], 1.0)
        del img
        t0 = time.perf_counter()
        res = run_slide(open_slide(path), "bench", Path(tmp) / "out",
                        outputs=["mask", "nuclei_mask", "h5ad"])  # fmt: skip
        dt = time.perf_counter() - t0
    from immunoplex.cells.metrics import match_points

    f1 = match_points(res.table.obs[["x_um", "y_um"]].to_numpy(), centres, 4.0)[0].f1
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"synthetic {side}x{side} px x 3 ch at 1 µm/px: {len(res.table)} cells "
        f"({len(centres)} drawn, detection F1 within 4 µm {f1:.3f}) in {dt:.1f} s = "
        f"{len(res.table) / dt:.0f} cells/s; peak RSS {rss:.0f} MB (includes the drawn image)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", type=int, default=2000)
    ap.add_argument("--realdata", type=Path, default=ROOT.parent / "shared" / "realdata")
    a = ap.parse_args()
    imc_f1(a.realdata)
    speed(a.side)


if __name__ == "__main__":
    main()
