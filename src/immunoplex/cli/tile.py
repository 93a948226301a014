"""``immunoplex-tile``: tissue masks, tile grids and QC thumbnails for every slide of a manifest.

Slides are processed in a process pool; unreadable slides are skipped (one line each in
``skipped.csv``) and the run goes on. Slides whose grid already exists with the same parameters
are not recomputed.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from immunoplex.errors import ImmunoplexError, ManifestError
from immunoplex.utils.atomic import write_csv
from immunoplex.utils.tables import MISSING_TEXT, read_table


@dataclass
class TileRunSummary:
    """What a run did: per-slide rows (done/skipped) and where the tables went."""

    done: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    already: int = 0
    out_dir: Path | None = None


def read_manifest(path: str | Path, default_mpp: float | None = None) -> list[dict[str, Any]]:
    """Rows (slide_id, image path resolved against the manifest, mpp or None) of a CSV, TSV or
    Parquet manifest."""
    path = Path(path)
    df = read_table(path, "manifest")
    missing = [c for c in ("slide_id", "image") if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {missing}; has {list(df.columns)}")
    if df.empty:
        raise ManifestError(f"{path}: manifest has no rows (empty cohort)")
    df["slide_id"] = df["slide_id"].str.strip()
    dup = df["slide_id"][df["slide_id"].duplicated()].unique().tolist()
    if dup:
        raise ManifestError(f"{path}: duplicated slide_id(s) {dup[:5]}")
    rows = []
    for i, r in df.iterrows():
        if not r["image"].strip() or not r["slide_id"]:
            raise ManifestError(f"{path}: row {i + 2} has an empty slide_id or image")
        text = r["mpp"].strip() if "mpp" in df.columns else ""
        try:
            mpp = default_mpp if text.lower() in MISSING_TEXT else float(text)
        except ValueError:
            raise ManifestError(f"{path}: row {i + 2} has mpp {text!r} (not a number)") from None
        if mpp is not None and not mpp > 0:
            raise ManifestError(f"{path}: row {i + 2} has mpp {mpp} (must be > 0)")
        rows.append(
            {
                "slide_id": str(r["slide_id"]),
                "image": str(path.parent / str(r["image"])),
                "mpp": mpp,
                "channels": str(r["channels"]) if "channels" in df.columns else "",
            }
        )
    return rows


def tile_slide(job: dict[str, Any]) -> dict[str, Any]:
    """One slide: grid parquet + QC png. Returns a row; errors become ``status='skipped'``."""
    from immunoplex.io import open_slide
    from immunoplex.io.names import manifest_names
    from immunoplex.tiles.grid import make_tile_grid, save_grid
    from immunoplex.tiles.params import TilingParams
    from immunoplex.tiles.qc import render_qc

    row = {"slide_id": job["slide_id"], "image": job["image"]}
    try:
        params = TilingParams.from_dict(job["params"])
        names = manifest_names(job.get("channels"), f"slide {job['slide_id']}")
        with open_slide(job["image"], mpp=job["mpp"], channel_names=names) as slide:
            aliases = job.get("aliases") or {}
            grid = make_tile_grid(slide, params, aliases)
            save_grid(grid, job["grid_path"], slide=slide, slide_id=job["slide_id"])
            if job["qc_path"]:
                render_qc(
                    slide,
                    grid,
                    job["qc_path"],
                    markers=job["qc_markers"],
                    max_size=job["qc_max_size"],
                    title=job["slide_id"],
                    aliases=aliases,
                )
            row.update(
                status="done",
                n_tiles=len(grid),
                format=slide.format,
                slide_mpp=slide.mpp,
                channels=len(slide.channels),
            )
    except ImmunoplexError as err:
        row.update(status="skipped", reason=str(err))
    except Exception as err:  # an unforeseen failure on one slide must not stop a cohort
        row.update(status="skipped", reason=f"{job['image']}: {type(err).__name__}: {err}")
    return row


def _is_done(grid_path: Path, qc_path: Path | None, params: dict[str, Any]) -> bool:
    from immunoplex.tiles.grid import grid_metadata

    if not grid_path.is_file() or (qc_path is not None and not qc_path.is_file()):
        return False
    try:
        return grid_metadata(grid_path).get("params") == params
    except Exception:
        return False


def tile_cohort(cfg: DictConfig | dict[str, Any]) -> TileRunSummary:
    """Run tiling over ``cfg.manifest`` into ``cfg.out_dir`` (see configs/tile.yaml)."""
    from tqdm import tqdm

    from immunoplex.tiles.params import TilingParams

    c = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    out = Path(str(c.out_dir))
    params = TilingParams.from_dict(OmegaConf.to_container(c.tiling, resolve=True))  # type: ignore[arg-type]
    pdict = params.to_dict()
    rows = read_manifest(c.manifest, c.get("mpp"))
    qc = c.get("qc") or {}
    qc_on = bool(qc.get("enabled", True))
    panel = c.get("panel") or {}
    aliases = {str(k): [str(s) for s in v or []] for k, v in (panel.get("aliases") or {}).items()}
    summary = TileRunSummary(out_dir=out)
    jobs = []
    for r in rows:
        grid_path = out / "grids" / f"{r['slide_id']}.parquet"
        qc_path = out / "qc" / f"{r['slide_id']}.png" if qc_on else None
        if not c.get("overwrite", False) and _is_done(grid_path, qc_path, pdict):
            summary.already += 1
            continue
        jobs.append(
            {
                **r,
                "params": pdict,
                "grid_path": str(grid_path),
                "qc_path": str(qc_path) if qc_path else None,
                "qc_markers": list(qc.get("markers") or []),
                "qc_max_size": int(qc.get("max_size", 1024)),
                "aliases": aliases,
            }
        )
    out.mkdir(parents=True, exist_ok=True)
    workers = c.get("workers") or mp.cpu_count()
    bar = tqdm(
        total=len(jobs),
        desc="tiling",
        unit="slide",
        disable=not c.get("progress", True),
        file=sys.stderr,
    )
    results = []
    if workers <= 1 or len(jobs) <= 1:
        for j in jobs:
            results.append(tile_slide(j))
            bar.update()
    else:
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
            futs = [pool.submit(tile_slide, j) for j in jobs]
            for f in as_completed(futs):
                results.append(f.result())
                bar.update()
    bar.close()
    order = {r["slide_id"]: i for i, r in enumerate(rows)}
    results.sort(key=lambda r: order[r["slide_id"]])
    summary.done = [r for r in results if r["status"] == "done"]
    summary.skipped = [r for r in results if r["status"] == "skipped"]
    if summary.done:
        table = out / "tiles.csv"
        new = pd.DataFrame(summary.done).drop(columns=["status"])
        if table.is_file() and not c.get("overwrite", False):
            old = read_table(table, "tile table")
            new = pd.concat([old[~old["slide_id"].isin(new["slide_id"].astype(str))], new])
        write_csv(table, new)
    skipped_csv = out / "skipped.csv"
    write_csv(skipped_csv, pd.DataFrame(summary.skipped, columns=["slide_id", "image", "reason"]))
    print(
        f"tiled {len(summary.done)} slide(s), {summary.already} already done, "
        f"{len(summary.skipped)} skipped" + (f" (see {skipped_csv})" if summary.skipped else ""),
        file=sys.stderr,
    )
    for r in summary.skipped:
        print(f"  skipped {r['slide_id']}: {r['reason']}", file=sys.stderr)
    return summary


def _run(cfg: DictConfig) -> None:
    """Console-script entry point: tile every slide; exit 1 when every slide was skipped."""
    summary = tile_cohort(cfg)
    if summary.skipped and not summary.done and not summary.already:
        raise SystemExit(1)


def main() -> None:
    from immunoplex.cli.checks import validate_tile
    from immunoplex.cli.common import hydra_app

    hydra_app("tile", validate_tile)(_run)()


if __name__ == "__main__":
    main()
