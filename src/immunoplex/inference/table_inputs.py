"""Predict-time patient feature table of a checkpoint trained with ``data.features`` (e.g. the cell
stage's ``cell_features.csv``).

- ``features_table=PATH``: the table for the new patients (``immunoplex-cells`` on their slides,
  with the settings the model was trained with); the checkpoint's columns are read from it,
  transformed as in training.
- otherwise, when the training table came from ``immunoplex-cells`` (its ``cells_config.json``
  is in the checkpoint), the same cell stage runs on the new slides first, under
  ``<out_dir>/cells`` (resumable, with every per-slide output: h5ad, Parquet, masks, GeoJSON, QC
  overlay), and its ``cell_features.csv`` is used.

A patient without a row is refused with one line (its slides failed in the cell stage, or the
table is for other patients); nothing is filled in.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from immunoplex.data.feature_table import FeatureTable
from immunoplex.errors import ConfigError, ManifestError

log = logging.getLogger(__name__)


def run_cell_stage(cells: dict[str, Any], patients: list[Any], out: Path, progress: bool) -> Path:
    """The stored cell-stage settings on ``patients``' slides; the path of cell_features.csv."""
    from omegaconf import OmegaConf

    from immunoplex.cells.cohort import cells_cohort
    from immunoplex.utils.atomic import write_csv

    rows = [
        {"slide_id": s.slide_id, "image": str(Path(s.path).resolve()), "patient_id": p.patient_id,
         "mpp": s.mpp}
        for p in patients for s in p.slides
    ]  # fmt: skip
    if not rows:
        raise ManifestError("the model reads cell features but no slide was given")
    names = {s.channel_names.names for p in patients for s in p.slides if s.channel_names}
    out.mkdir(parents=True, exist_ok=True)
    manifest = write_csv(out / "manifest.csv", pd.DataFrame(rows))
    cfg = {**cells, "manifest": str(manifest), "out_dir": str(out), "progress": progress,
           "overwrite": False, "workers": 1}  # fmt: skip
    if len(names) == 1 and not cells.get("channels"):
        cfg["channels"] = list(next(iter(names)))
    log.info("running the cell stage on %d slide(s) into %s", len(rows), out)
    summary = cells_cohort(OmegaConf.create(cfg))
    table = out / "cell_features.csv"
    if not table.is_file():
        reasons = "; ".join(f"{r['slide_id']}: {r['reason']}" for r in summary["skipped"][:3])
        raise ManifestError(f"the cell stage produced no cell table ({reasons or 'no slide'})")
    return table


def prepare_table(pred: Any, opts: Any, patients: list[Any], out_dir: Path) -> FeatureTable | None:
    """The checkpoint's patient feature table filled for ``patients`` (None: it reads none)."""
    spec = FeatureTable.from_dict((pred.meta.get("data") or {}).get("features"))
    given = getattr(opts, "features_table", None)
    if spec is None:
        if given:
            raise ConfigError(
                f"{pred.path}: this model reads no patient feature table; drop features_table="
            )
        return None
    if given:
        path = Path(str(given))
    elif spec.cells:
        path = run_cell_stage(spec.cells, patients, out_dir / "cells", bool(opts.progress))
    else:
        raise ConfigError(
            f"{pred.path}: the model reads {spec.n_features} patient-table features (e.g. "
            f"{spec.columns[:3]}); give features_table=PATH with them for these patients"
        )
    spec.load(path, [p.patient_id for p in patients])
    lost = [p.patient_id for p in patients if p.patient_id not in spec.values]
    if lost:
        raise ManifestError(
            f"{path}: no row for patient(s) {lost[:5]}"
            + (
                " (their slides failed in the cell stage: see cells/skipped.csv)"
                if not given
                else ""
            )
        )
    return spec
