"""Small slide and cohort writers for the reliability tests (everything in tmp_path)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

MARKERS = ("DAPI", "PanCK", "CD8")


def tissue_image(
    channels: int = 3, size: int = 96, dtype: str = "uint16", seed: int = 0
) -> np.ndarray:
    """(C, H, W): a bright textured disk ("tissue") on a dark background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disk = np.hypot(yy - size / 2, xx - size / 2) < size * 0.4
    img = rng.poisson(3, (channels, size, size)).astype(np.float64)
    img += disk * (300 + 200 * rng.random((channels, size, size)))
    return img.astype(dtype)


def write_ome(
    path: Path,
    data: np.ndarray,
    channels: Sequence[str] = MARKERS,
    mpp: float = 1.0,
    compression: str | None = "zlib",
    tile: int | None = 32,
) -> Path:
    """A one-level OME-TIFF with channel names and µm/px."""
    meta = {
        "axes": "CYX",
        "Channel": {"Name": list(channels)},
        "PhysicalSizeX": mpp,
        "PhysicalSizeY": mpp,
    }
    kw: dict[str, object] = {"compression": compression, "photometric": "minisblack"}
    if tile:
        kw["tile"] = (tile, tile)
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(data, metadata=meta, **kw)
    return path


def corrupt_tile_data(src: Path, dst: Path) -> Path:
    """Copy ``src`` with the compressed bytes of its first tile replaced by garbage."""
    with tifffile.TiffFile(src) as tif:
        page = tif.pages[0]
        off, n = int(page.dataoffsets[0]), int(page.databytecounts[0])
    raw = bytearray(src.read_bytes())
    raw[off : off + n] = bytes((i * 37 + 11) % 256 for i in range(n))
    dst.write_bytes(bytes(raw))
    return dst


def write_cohort(
    root: Path,
    n_per_class: int = 4,
    extra_rows: Sequence[dict[str, object]] = (),
    size: int = 96,
) -> Path:
    """Manifest + expression for 2*n_per_class patients (one good slide each) + ``extra_rows``.

    Patients alternate labels; the first two of each class are test/val, the rest train.
    """
    (root / "slides").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    for i in range(2 * n_per_class):
        label = i % 2
        rank = i // 2
        split = "test" if rank == 0 else "val" if rank == 1 else "train"
        image = f"slides/s{i}.ome.tif"
        write_ome(root / image, tissue_image(seed=i, size=size))
        rows.append(
            {
                "slide_id": f"s{i}",
                "patient_id": f"p{i}",
                "image": image,
                "label": label,
                "cohort": "c1",
                "treatment": "anti-PD-1",
                "split": split,
            }
        )
    rows += [dict(r) for r in extra_rows]
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    rng = np.random.default_rng(0)
    patients = sorted({str(r["patient_id"]) for r in rows})
    expr = pd.DataFrame(
        rng.gamma(2.0, 2.0, (len(patients), 4)), columns=["CD8A", "GZMA", "CXCL9", "STAB1"]
    )
    expr.insert(0, "patient_id", patients)
    expr.to_csv(root / "expression.csv", index=False)
    return root / "manifest.csv"
