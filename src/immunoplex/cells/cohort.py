"""The cell stage over a cohort (``immunoplex-cells``): every slide in a process pool, resumable,
then the cohort's patient and slide feature tables.

A slide whose ``cells.h5ad`` and ``settings.json`` exist with the same settings is skipped.
Unreadable slides are listed in ``skipped.csv`` and the run goes on. With ``phenotypes.scope:
cohort`` the positivity thresholds are pooled over the run's slides in two passes: the first
measures every slide (tables only, under ``out_dir/pass1``), the thresholds are fitted on all
their cells (``thresholds.json``), and the second writes every output with them. The run's
settings (everything but its inputs and output folder) go to ``cells_config.json`` beside
``cell_features.csv``: a model trained on that table stores them, and ``immunoplex-predict``
runs the same stage on new slides with them (:func:`run_config`).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from immunoplex.errors import ImmunoplexError, ManifestError

#: keys of configs/cells.yaml that name a run's inputs and outputs, not how cells are measured
IO_KEYS = ("manifest", "slide", "slide_id", "out_dir", "workers", "progress", "overwrite", "hydra")
CELLS_CONFIG = "cells_config.json"


def run_config(c: DictConfig) -> dict[str, Any]:
    """The settings of a run (``cells_config.json``): the config without its inputs/outputs."""
    d = OmegaConf.to_container(c, resolve=True)
    assert isinstance(d, dict)
    return {k: v for k, v in d.items() if k not in IO_KEYS}


def read_slides(c: DictConfig) -> list[dict[str, Any]]:
    """(slide_id, image, patient_id, mpp) rows from ``manifest`` or the single ``slide``."""
    if c.get("slide"):
        p = Path(str(c.slide))
        sid = str(c.get("slide_id") or p.name.split(".")[0])
        return [{"slide_id": sid, "image": str(p), "patient_id": sid, "mpp": c.get("mpp")}]
    if not c.get("manifest"):
        raise ManifestError("give manifest=<csv> or slide=<image>")
    path = Path(str(c.manifest))
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    df = pd.read_csv(path)
    missing = [k for k in ("slide_id", "image") if k not in df.columns]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {missing}; has {list(df.columns)}")
    if df["slide_id"].duplicated().any():
        raise ManifestError(f"{path}: duplicated slide_id(s)")
    rows = []
    for i, r in df.iterrows():
        if pd.isna(r["image"]) or pd.isna(r["slide_id"]):
            raise ManifestError(f"{path}: row {int(i) + 2} has an empty slide_id or image")
        mpp = r.get("mpp") if "mpp" in df.columns and not pd.isna(r.get("mpp")) else c.get("mpp")
        pid = r.get("patient_id") if "patient_id" in df.columns else None
        rows.append({
            "slide_id": str(r["slide_id"]),
            "image": str(path.parent / str(r["image"])),
            "patient_id": str(r["slide_id"] if pid is None or pd.isna(pid) else pid),
            "mpp": None if mpp is None else float(mpp),
        })  # fmt: skip
    return rows


def _settings(c: DictConfig) -> dict[str, Any]:
    keys = ("segmentation", "compartments", "phenotypes", "outputs", "tissue_um", "channels")
    out = {k: OmegaConf.to_container(c[k], resolve=True) if OmegaConf.is_config(c[k]) else c[k]
           for k in keys}  # fmt: skip
    out["aliases"] = OmegaConf.to_container(c.panel.get("aliases") or {}, resolve=True)
    return out


def cell_slide(job: dict[str, Any]) -> dict[str, Any]:
    """One slide end to end in a worker; errors become ``status='skipped'``."""
    from immunoplex.cells.phenotype import PhenotypeScheme
    from immunoplex.cells.pipeline import run_slide
    from immunoplex.cells.quantify import CompartmentParams
    from immunoplex.cells.segment import SegmentParams
    from immunoplex.io import open_slide
    from immunoplex.utils.atomic import write_json

    s = job["settings"]
    row = {"slide_id": job["slide_id"], "image": job["image"]}
    try:
        scheme = PhenotypeScheme.from_dict(s["phenotypes"], source="phenotypes")
        with open_slide(job["image"], mpp=job["mpp"]) as slide:
            if s.get("channels"):
                names = [str(n) for n in s["channels"]]
                if len(names) != len(slide.channels):
                    raise ManifestError(
                        f"{job['image']}: channels= names {len(names)} channels, the file has "
                        f"{len(slide.channels)}"
                    )
                slide.channels = names
            res = run_slide(
                slide,
                job["slide_id"],
                job["dir"],
                segment=SegmentParams.from_dict(s["segmentation"]),
                compartments=CompartmentParams.from_dict(s["compartments"]),
                scheme=scheme,
                aliases=s["aliases"],
                outputs=s["outputs"],
                tissue_um=float(s["tissue_um"]),
                qc_max_size=int(job["qc_max_size"]),
                thresholds=s.get("thresholds"),
            )
        write_json(Path(job["dir"]) / "settings.json", s)
        row.update(
            status="done",
            n_cells=len(res.table),
            **{f"area_{k}_mm2": v for k, v in res.areas_mm2.items()},
        )
        if not len(res.table):
            row["note"] = "no cells found"
    except ImmunoplexError as err:
        row.update(status="skipped", reason=str(err))
    except Exception as err:  # one bad slide must not stop a cohort
        row.update(status="skipped", reason=f"{job['image']}: {type(err).__name__}: {err}")
    return row


def _is_done(d: Path, settings: dict[str, Any]) -> bool:
    try:
        return (d / "cells.h5ad").is_file() and json.loads(
            (d / "settings.json").read_text()
        ) == json.loads(json.dumps(settings))
    except (OSError, ValueError):
        return False


def _run_slides(
    c: DictConfig, rows: list[dict[str, Any]], out: Path, settings: dict[str, Any], desc: str
) -> tuple[list[dict[str, Any]], int]:
    """Run the slides not yet done with ``settings`` under ``out/slides``; (results, already)."""
    from tqdm import tqdm

    jobs, already = [], 0
    for r in rows:
        d = out / "slides" / r["slide_id"]
        if not c.get("overwrite", False) and _is_done(d, settings):
            already += 1
            continue
        jobs.append({**r, "dir": str(d), "settings": settings, "qc_max_size": c.qc_max_size})
    bar = tqdm(total=len(jobs), desc=desc, unit="slide", disable=not c.get("progress", True),
               file=sys.stderr)  # fmt: skip
    results = []
    workers = int(c.get("workers") or 1)
    if workers <= 1 or len(jobs) <= 1:
        for j in jobs:
            results.append(cell_slide(j))
            bar.update()
    else:
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx) as pool:
            for f in as_completed([pool.submit(cell_slide, j) for j in jobs]):
                results.append(f.result())
                bar.update()
    bar.close()
    return results, already


def cells_cohort(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """Run the cell stage over the slides of ``cfg`` (see configs/cells.yaml)."""
    from immunoplex.cells.io import read_h5ad
    from immunoplex.cells.phenotype import PhenotypeScheme
    from immunoplex.cells.spatial import SlideCells, SpatialParams, feature_catalogue, feature_table
    from immunoplex.utils.atomic import write_csv, write_json

    c = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    out = Path(str(c.out_dir))
    settings = _settings(c)
    scheme = PhenotypeScheme.from_dict(settings["phenotypes"], source="phenotypes")  # fail early
    sp = OmegaConf.to_container(c.spatial, resolve=True)
    spatial = SpatialParams(
        radius_um=float(sp["radius_um"]),  # type: ignore[index]
        nearest=tuple((str(a), str(b)) for a, b in sp["nearest"]),  # type: ignore[index]
        tumour_type=str(sp["tumour_type"]),  # type: ignore[index]
        fraction_pseudocount=float(sp.get("fraction_pseudocount", 1.0)),  # type: ignore[union-attr]
    )
    rows = read_slides(c)
    out.mkdir(parents=True, exist_ok=True)
    pass1: list[dict[str, Any]] = []
    if scheme.scope == "cohort":
        # pass 1: the tables alone; then one set of thresholds over all their cells
        from immunoplex.cells.phenotype import fit_thresholds

        first = {**settings, "outputs": ["h5ad"]}
        pass1, _ = _run_slides(c, rows, out / "pass1", first, "cells (pass 1)")
        tables = [read_h5ad(h) for r in rows
                  if (h := out / "pass1" / "slides" / r["slide_id"] / "cells.h5ad").is_file()]  # fmt: skip
        thr = fit_thresholds(tables, scheme)
        del tables
        write_json(out / "thresholds.json", {"scope": "cohort", "n_slides": len(rows),
                                             "thresholds": thr})  # fmt: skip
        settings = {**settings, "thresholds": thr}
    results, already = _run_slides(c, rows, out, settings, "cells")
    # a slide that fails in pass 1 fails again in pass 2: listed once
    skipped = list({r["slide_id"]: r for r in pass1 + results if r["status"] == "skipped"}.values())
    write_csv(out / "skipped.csv", pd.DataFrame(skipped, columns=["slide_id", "image", "reason"]))
    slides = []
    for r in rows:
        h5 = out / "slides" / r["slide_id"] / "cells.h5ad"
        if h5.is_file():
            t = read_h5ad(h5)
            slides.append(SlideCells.from_table(t, t.uns.get("areas_mm2", {}), r["patient_id"]))
    if slides:
        write_json(out / CELLS_CONFIG, run_config(c))
        write_csv(out / "cell_features.csv", feature_table(slides, scheme, spatial, "patient"))
        write_csv(out / "slide_features.csv", feature_table(slides, scheme, spatial, "slide"))
        write_csv(out / "cell_features_columns.csv", feature_catalogue(scheme, spatial))
    done = [r for r in results if r["status"] == "done"]
    print(f"cells: {len(done)} slide(s) done, {already} already done, {len(skipped)} skipped"
          + (f" (see {out / 'skipped.csv'})" if skipped else ""), file=sys.stderr)  # fmt: skip
    for r in done:
        if r.get("note"):
            print(f"  {r['slide_id']}: {r['note']}", file=sys.stderr)
    for r in skipped:
        print(f"  skipped {r['slide_id']}: {r['reason']}", file=sys.stderr)
    return {"done": done, "skipped": skipped, "already": already, "out_dir": out}
