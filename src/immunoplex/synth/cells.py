"""Cell placement: where each cell type sits, given the layout and the patient's latents."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
import pandas as pd

from immunoplex.synth.tissue import TissueLayout


class CellType(IntEnum):
    TUMOUR = 0
    STROMAL = 1
    CD8 = 2
    MACROPHAGE = 3
    NEUTROPHIL = 4
    ENDOTHELIAL = 5
    RBC = 6  # autofluorescent red blood cell (no nucleus)


@dataclass
class Cells:
    """Cell centres in base pixels with their type and per-cell attributes."""

    y: np.ndarray  # int32
    x: np.ndarray  # int32
    kind: np.ndarray  # int8 CellType
    clever1: np.ndarray  # bool: STAB1+ (Clever-1+) macrophage
    intratumoural: np.ndarray  # bool: centre inside a tumour nest

    def count(self, kind: CellType, mask: np.ndarray | None = None) -> int:
        sel = self.kind == kind
        return int(np.count_nonzero(sel if mask is None else sel & mask))

    def truth_frame(self, mpp: float) -> pd.DataFrame:
        """One row per drawn cell: the cell-truth table written beside the slide.

        Centres are in µm with pixel (i, j) at ((j + 0.5) mpp, (i + 0.5) mpp), the convention of
        the cell stage; ``type`` uses the names of the default phenotype rules
        (``configs/cells/phenotypes/default.yaml``); ``nucleus`` is False for red blood cells.
        """
        names = np.asarray(TRUTH_TYPES, dtype=object)[self.kind]
        names[(self.kind == CellType.MACROPHAGE) & self.clever1] = "clever1_macrophage"
        immune = np.isin(self.kind, [CellType.CD8, CellType.MACROPHAGE, CellType.NEUTROPHIL])
        return pd.DataFrame(
            {
                "cell": np.arange(1, len(self.y) + 1, dtype=np.int32),
                "x_um": ((self.x + 0.5) * mpp).astype(np.float32),
                "y_um": ((self.y + 0.5) * mpp).astype(np.float32),
                "type": names.astype(str),
                "nucleus": self.kind != CellType.RBC,
                "immune": immune,
                "intratumoural": self.intratumoural.astype(bool),
            }
        )


#: Truth ``type`` name per :class:`CellType` (Clever-1+ macrophages are ``clever1_macrophage``).
TRUTH_TYPES = ("tumour", "stromal", "cd8_t", "macrophage", "neutrophil", "endothelial", "rbc")


def _sample_in(
    rng: np.random.Generator,
    weight: np.ndarray,
    n: int,
    step: int,
    accept: np.ndarray | None,
    shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points with density proportional to the coarse ``weight`` map.

    A point is drawn uniformly inside its coarse pixel; with ``accept`` (a full-resolution bool
    mask) points falling outside it are redrawn (a few rounds, then dropped).
    """
    H, W = shape
    w = np.clip(weight, 0, None).ravel().astype(np.float64)
    total = w.sum()
    if n <= 0 or total <= 0:
        return np.empty(0, np.int32), np.empty(0, np.int32)
    p = w / total
    ys, xs = [], []
    need = n
    for _ in range(4):
        m = int(need * 1.3) + 4
        idx = rng.choice(w.size, size=m, p=p)
        y = (idx // weight.shape[1]) * step + rng.integers(0, step, m)
        x = (idx % weight.shape[1]) * step + rng.integers(0, step, m)
        ok = (y < H) & (x < W)
        y, x = y[ok], x[ok]
        if accept is not None:
            good = accept[y, x]
            y, x = y[good], x[good]
        ys.append(y[:need])
        xs.append(x[:need])
        need -= len(ys[-1])
        if need <= 0:
            break
    return np.concatenate(ys).astype(np.int32), np.concatenate(xs).astype(np.int32)


def _sample_pixels(
    rng: np.random.Generator, mask: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    flat = np.flatnonzero(mask)
    if n <= 0 or flat.size == 0:
        return np.empty(0, np.int32), np.empty(0, np.int32)
    pick = flat[rng.integers(0, flat.size, n)]
    return (pick // mask.shape[1]).astype(np.int32), (pick % mask.shape[1]).astype(np.int32)


def place_cells(
    rng: np.random.Generator, layout: TissueLayout, patient: dict[str, Any], cfg: dict[str, Any]
) -> Cells:
    """Place every cell of one slide (``cfg`` is the ``cells`` settings group).

    ``patient`` holds the latents: phenotype, cd8_density, cd8_intratumoural_fraction,
    macrophage_density, clever1_fraction, neutrophil_density (densities per mm^2 tissue).
    """
    H, W = layout.shape
    mpp, step = layout.mpp, layout.step
    area_px_mm2 = (mpp * 1e-3) ** 2
    tissue_mm2 = float(layout.coarse_tissue.sum()) * step * step * area_px_mm2
    stroma_mm2 = float(layout.coarse_stroma.sum()) * step * step * area_px_mm2
    jitter = cfg["slide_density_sdlog"]

    def n_cells(density: float, area: float) -> int:
        return int(rng.poisson(max(density, 0.0) * area * np.exp(jitter * rng.standard_normal())))

    stroma_full = layout.tissue & ~layout.tumour
    parts: list[tuple[np.ndarray, np.ndarray, CellType]] = []

    # Tumour cells: a jittered hexagonal grid inside the nests.
    s = cfg["tumour_spacing_um"] / mpp
    gy = np.arange(s / 2, H, s * 0.866)
    gx = np.arange(s / 2, W, s)
    yy, xx = np.meshgrid(gy, gx, indexing="ij")
    xx = xx + (np.arange(len(gy)) % 2)[:, None] * (s / 2)
    yy = yy + rng.uniform(-0.3 * s, 0.3 * s, yy.shape)
    xx = xx + rng.uniform(-0.3 * s, 0.3 * s, xx.shape)
    ty = np.clip(np.rint(yy), 0, H - 1).astype(np.int32).ravel()
    tx = np.clip(np.rint(xx), 0, W - 1).astype(np.int32).ravel()
    keep = layout.tumour[ty, tx]
    parts.append((ty[keep], tx[keep], CellType.TUMOUR))

    # DAPI-only stromal / other cells.
    st = _sample_in(
        rng,
        layout.coarse_stroma,
        n_cells(cfg["stromal_density"], stroma_mm2),
        step,
        stroma_full,
        (H, W),
    )
    parts.append((*st, CellType.STROMAL))

    # CD8 T cells: a fraction inside nests, the rest in stroma (near borders when excluded).
    n_cd8 = n_cells(patient["cd8_density"], tissue_mm2)
    itf = float(patient["cd8_intratumoural_fraction"])
    conc = cfg["itf_concentration"]
    itf_slide = rng.beta(max(itf * conc, 1e-3), max((1 - itf) * conc, 1e-3))
    n_in = int(rng.binomial(n_cd8, itf_slide)) if layout.tumour.any() else 0
    cin = _sample_in(rng, layout.coarse_tumour, n_in, step, layout.tumour, (H, W))
    bw = cfg["cd8_border_weight"][patient["phenotype"]]
    near = np.exp(-layout.dist_to_tumour_um / cfg["cd8_border_um"])
    w_out = layout.coarse_stroma * ((1 - bw) + bw * near / max(float(near.mean()), 1e-6))
    cout = _sample_in(rng, w_out, n_cd8 - n_in, step, stroma_full, (H, W))
    parts.append(
        (np.concatenate([cin[0], cout[0]]), np.concatenate([cin[1], cout[1]]), CellType.CD8)
    )

    # Macrophages: mostly stroma; a Clever-1+ (STAB1+) fraction.
    n_mac = n_cells(patient["macrophage_density"], tissue_mm2)
    f_t = cfg["macrophage_in_tumour"]
    w_mac = (1 - f_t) * layout.coarse_stroma / max(layout.coarse_stroma.sum(), 1e-6)
    w_mac = w_mac + f_t * layout.coarse_tumour / max(layout.coarse_tumour.sum(), 1e-6)
    mac = _sample_in(rng, w_mac, n_mac, step, layout.tissue, (H, W))
    parts.append((*mac, CellType.MACROPHAGE))
    clever_mac = rng.random(len(mac[0])) < float(patient["clever1_fraction"])

    # Immature neutrophils: clustered infiltrates near nest borders plus scattered cells.
    n_neu = n_cells(patient["neutrophil_density"], tissue_mm2)
    n_clu = int(rng.binomial(n_neu, cfg["neutrophil_cluster_fraction"]))
    scattered = _sample_in(rng, layout.coarse_tissue, n_neu - n_clu, step, layout.tissue, (H, W))
    k = max(1, int(rng.poisson(n_clu / cfg["neutrophil_cluster_size"])))
    near_b = (
        layout.coarse_stroma * np.exp(-layout.dist_to_tumour_um / 50.0)
        + 1e-3 * layout.coarse_tissue
    )
    cy, cx = _sample_in(rng, near_b, k, step, layout.tissue, (H, W))
    if len(cy) and n_clu:
        which = rng.integers(0, len(cy), n_clu)
        sd = cfg["neutrophil_cluster_um"] / mpp
        ny = np.rint(cy[which] + sd * rng.standard_normal(n_clu)).astype(np.int64)
        nx = np.rint(cx[which] + sd * rng.standard_normal(n_clu)).astype(np.int64)
        ok = (ny >= 0) & (ny < H) & (nx >= 0) & (nx < W)
        ny, nx = ny[ok], nx[ok]
        ok = layout.tissue[ny, nx]
        clustered = (ny[ok].astype(np.int32), nx[ok].astype(np.int32))
    else:
        clustered = (np.empty(0, np.int32), np.empty(0, np.int32))
    parts.append(
        (
            np.concatenate([scattered[0], clustered[0]]),
            np.concatenate([scattered[1], clustered[1]]),
            CellType.NEUTROPHIL,
        )
    )

    # Endothelial nuclei on vessel walls, red blood cells in lumens (per mm of vessel).
    length = layout.vessel_length_mm
    n_endo = int(rng.poisson(cfg["endothelial_per_mm"] * length))
    parts.append((*_sample_pixels(rng, layout.vessel_wall > 0.5, n_endo), CellType.ENDOTHELIAL))
    n_rbc = int(rng.poisson(cfg["rbc_per_mm"] * length))
    parts.append((*_sample_pixels(rng, layout.vessel_lumen > 0.6, n_rbc), CellType.RBC))

    y = np.concatenate([p[0] for p in parts]).astype(np.int32)
    x = np.concatenate([p[1] for p in parts]).astype(np.int32)
    kind = np.concatenate([np.full(len(p[0]), int(p[2]), np.int8) for p in parts])
    clever1 = np.zeros(len(y), bool)
    clever1[kind == CellType.MACROPHAGE] = clever_mac
    return Cells(y=y, x=x, kind=kind, clever1=clever1, intratumoural=layout.tumour[y, x])
