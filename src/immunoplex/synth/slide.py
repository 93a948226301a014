"""One slide, end to end: layout -> cells -> pixels -> OME-TIFF + signal mask + cell truth +
stats.

``generate_slide`` is the process-pool task. It is seeded from (cohort seed, slide index) only,
so the cohort is identical for any number of workers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from immunoplex.io.write import is_complete_ome_tiff, n_levels, write_ome_tiff
from immunoplex.synth.cells import CellType, place_cells
from immunoplex.synth.render import render_channels
from immunoplex.synth.signal import signal_mask
from immunoplex.synth.tissue import build_layout
from immunoplex.utils import atomic

#: Bump when the rendering changes in a way that makes old slides stale.
RENDER_VERSION = 1
#: The settings groups a slide depends on (its fingerprint covers exactly these).
SLIDE_SETTING_KEYS = ("image", "tissue", "cells", "render", "slide_px")
_SLIDE_STREAM = 2


@dataclass(frozen=True)
class SlideJob:
    """Everything a worker needs to produce one slide (picklable, plain values)."""

    index: int
    slide_id: str
    patient_id: str
    seed: int
    patient: dict[str, Any]
    site: str
    site_gain: tuple[float, ...]
    out_dir: str
    settings: dict[str, Any] = field(repr=False)
    skip_existing: bool = True
    maxworkers: int = 1

    @property
    def image_rel(self) -> str:
        return f"slides/{self.slide_id}.ome.tif"

    @property
    def signal_rel(self) -> str:
        return f"signal/{self.slide_id}.npy"

    @property
    def cells_rel(self) -> str:
        return f"cells/{self.slide_id}.parquet"

    @property
    def stats_path(self) -> Path:
        return Path(self.out_dir) / "signal" / f"{self.slide_id}.json"

    def fingerprint(self) -> str:
        payload = {
            "v": RENDER_VERSION,
            "index": self.index,
            "seed": self.seed,
            "patient": self.patient,
            "site_gain": list(self.site_gain),
            "settings": {k: self.settings[k] for k in SLIDE_SETTING_KEYS},
        }
        blob = json.dumps(payload, sort_keys=True, default=float).encode()
        return hashlib.sha256(blob).hexdigest()[:20]


def slide_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SLIDE_STREAM, int(index)]))


def _existing_stats(job: SlideJob, fingerprint: str) -> dict[str, Any] | None:
    """The stored stats when the slide's three files are present, complete and current."""
    try:
        stats = json.loads(job.stats_path.read_text())
    except (OSError, ValueError):
        return None
    if stats.get("fingerprint") != fingerprint:
        return None
    out = Path(job.out_dir)
    shape = (len(job.settings["image"]["panel"]), stats["height"], stats["width"])
    if not is_complete_ome_tiff(out / job.image_rel, shape, stats["n_levels"]):
        return None
    try:
        mask = np.load(out / job.signal_rel, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if mask.shape != (stats["signal_height"], stats["signal_width"]):
        return None
    try:
        n = pq.ParquetFile(out / job.cells_rel).metadata.num_rows
    except (OSError, ValueError, pa.ArrowException):
        return None
    if n != stats.get("n_cells"):
        return None
    return stats


def generate_slide(job: SlideJob) -> dict[str, Any]:
    """Render and write one slide (or reuse it); return its per-slide truth statistics."""
    fp = job.fingerprint()
    if job.skip_existing:
        stats = _existing_stats(job, fp)
        if stats is not None:
            return {**stats, "reused": True}
    s = job.settings
    img_cfg, rcfg = s["image"], s["render"]
    panel = list(img_cfg["panel"])
    mpp = float(img_cfg["mpp"])
    rng = slide_rng(job.seed, job.index)

    H = int(s["slide_px"])
    j = float(img_cfg["aspect_jitter"])
    W = max(64, int(round(H * rng.uniform(1 - j, 1 + j) / 16.0)) * 16)
    dim = bool(rng.random() < rcfg["dim_fraction"])
    slide_gain = np.exp(rcfg["slide_gain_sdlog"] * rng.standard_normal(len(panel)))
    gains = np.asarray(job.site_gain) * slide_gain * (rcfg["dim_gain"] if dim else 1.0)

    p = job.patient
    layout = build_layout(
        rng,
        (H, W),
        mpp,
        float(img_cfg["signal_mpp"]),
        p["tumour_burden"],
        p["vessel_z"],
        s["tissue"],
    )
    cells = place_cells(rng, layout, p, s["cells"])
    image = render_channels(rng, layout, cells, panel, gains, rcfg)

    out = Path(job.out_dir)
    write_ome_tiff(
        out / job.image_rel,
        image,
        panel,
        mpp,
        tile=int(img_cfg["tile"]),
        min_level_side=int(img_cfg["min_level_side"]),
        compression=str(img_cfg["compression"]),
        compression_level=img_cfg.get("compression_level"),
        name=job.slide_id,
        maxworkers=job.maxworkers,
    )
    mask = signal_mask(layout, cells, float(s["tissue"]["border_um"]))
    atomic.save_npy(out / job.signal_rel, mask)
    atomic.write_parquet(out / job.cells_rel, cells.truth_frame(mpp))

    area_mm2 = (mpp * 1e-3) ** 2 * layout.step**2
    tissue_mm2 = float(layout.coarse_tissue.sum()) * area_mm2
    tumour_mm2 = float(layout.coarse_tumour.sum()) * area_mm2
    cd8 = cells.kind == CellType.CD8
    stats: dict[str, Any] = {
        "slide_id": job.slide_id,
        "patient_id": job.patient_id,
        "image": job.image_rel,
        "signal": job.signal_rel,
        "cells": job.cells_rel,
        "signal_mpp": float(img_cfg["signal_mpp"]),
        "mpp": mpp,
        "height": H,
        "width": W,
        "n_levels": n_levels((H, W), int(img_cfg["min_level_side"])),
        "signal_height": int(mask.shape[0]),
        "signal_width": int(mask.shape[1]),
        "phenotype": p["phenotype"],
        "site": job.site,
        "dim": dim,
        "gains": [round(float(g), 4) for g in gains],
        "tissue_mm2": round(tissue_mm2, 6),
        "tumour_fraction": round(tumour_mm2 / tissue_mm2, 4) if tissue_mm2 > 0 else 0.0,
        "vessel_length_mm": round(layout.vessel_length_mm, 4),
        "n_cells": int(len(cells.y)),
        "n_tumour": cells.count(CellType.TUMOUR),
        "n_stromal": cells.count(CellType.STROMAL),
        "n_cd8": int(np.count_nonzero(cd8)),
        "n_cd8_intratumoural": int(np.count_nonzero(cd8 & cells.intratumoural)),
        "n_macrophage": cells.count(CellType.MACROPHAGE),
        "n_clever1_macrophage": int(
            np.count_nonzero((cells.kind == CellType.MACROPHAGE) & cells.clever1)
        ),
        "n_neutrophil": cells.count(CellType.NEUTROPHIL),
        "n_endothelial": cells.count(CellType.ENDOTHELIAL),
        "n_rbc": cells.count(CellType.RBC),
        "fingerprint": fp,
    }
    atomic.write_text(job.stats_path, json.dumps(stats, indent=1))
    return {**stats, "reused": False}
