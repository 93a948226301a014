"""Tiny synthetic multiplex images with known cells (discs), written as OME-TIFF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile


def disc_image(
    centres_um: np.ndarray,
    shape_um: tuple[float, float],
    mpp: float,
    radius_um: float = 3.0,
    cell_radius_um: float = 5.0,
    markers: dict[str, np.ndarray] | None = None,
    tumour_box_um: tuple[float, float, float, float] | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, list[str]]:
    """(C, H, W) float32: DAPI discs of ``radius_um`` at ``centres_um`` (x, y), a membrane ring
    marker (CD45) at ``cell_radius_um``, per-cell markers (name -> bool per cell, value inside
    the cell) and PanCK filling ``tumour_box_um`` (x0, y0, x1, y1)."""
    h, w = int(round(shape_um[0] / mpp)), int(round(shape_um[1] / mpp))
    yy, xx = (np.indices((h, w)) + 0.5) * mpp
    names = ["DAPI", "CD45"] + list(markers or {}) + ["PanCK"]
    img = np.zeros((len(names), h, w), np.float32)
    for i, (cx, cy) in enumerate(centres_um):
        d = np.hypot(xx - cx, yy - cy)
        img[0][d <= radius_um] = 100.0
        ring = (d > cell_radius_um - 1.0) & (d <= cell_radius_um)
        img[1][ring] = np.maximum(img[1][ring], 60.0)
        for j, pos in enumerate((markers or {}).values()):
            if pos[i]:
                img[2 + j][d <= cell_radius_um] = 80.0
    if tumour_box_um is not None:
        x0, y0, x1, y1 = tumour_box_um
        img[-1][(xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)] = 50.0
    rng = np.random.default_rng(seed)
    img += rng.normal(0, 2.0, img.shape).astype(np.float32).clip(0, None)
    return img, names


def grid_centres(nx: int, ny: int, step_um: float, offset_um: float = 10.0) -> np.ndarray:
    xs, ys = np.meshgrid(offset_um + step_um * np.arange(nx), offset_um + step_um * np.arange(ny))
    return np.stack([xs.ravel(), ys.ravel()], 1).astype(float)


def write_slide(path: Path, img: np.ndarray, names: list[str], mpp: float) -> Path:
    tifffile.imwrite(
        path,
        img,
        ome=True,
        photometric="minisblack",
        metadata={
            "axes": "CYX",
            "Channel": {"Name": names},
            "PhysicalSizeX": mpp,
            "PhysicalSizeY": mpp,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeYUnit": "µm",
        },
    )
    return path


@pytest.fixture()
def disc_slide(tmp_path: Path):
    """A 120 x 100 µm slide at 1 µm/px with a 6 x 5 grid of cells (step 18 µm)."""
    centres = grid_centres(6, 5, 18.0)
    img, names = disc_image(centres, (100.0, 120.0), 1.0)
    return write_slide(tmp_path / "discs.ome.tif", img, names, 1.0), centres
