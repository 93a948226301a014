"""Cross-validation driver: every fold of a patient-level split, then a summary table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from immunoplex.data.cohort import load_cohort
from immunoplex.data.splits import n_folds_for
from immunoplex.utils.atomic import write_csv, write_text

SUMMARY_METRICS = ("test_auroc", "test_bayes_auroc", "val_auroc", "temperature")


def fold_configs(cfg: DictConfig) -> list[DictConfig]:
    """One config per fold (k-fold, nested outer folds or leave-one-cohort-out)."""
    mode = cfg.data.split.mode
    if mode == "fixed":
        raise ValueError("cross-validation needs data.split.mode=kfold, nested or loco")
    patients = load_cohort(cfg.data.manifest, list(cfg.data.clinical_columns)).patients
    n = n_folds_for(patients, mode, int(cfg.data.split.n_folds))
    out = []
    for fold in range(n):
        fc = cfg.copy()
        OmegaConf.set_struct(fc, False)
        fc.data.split.fold = fold
        fc.paths.output_dir = str(Path(cfg.paths.output_dir) / f"fold{fold}")
        out.append(fc)
    return out


def summarise_folds(results: list[dict[str, Any]], out_dir: Path) -> pd.DataFrame:
    """Per-fold metrics plus mean ± sd rows; written as CSV and Markdown."""
    rows = []
    for fold, res in enumerate(results):
        row: dict[str, Any] = {"fold": fold, "split": res.get("split")}
        for key in SUMMARY_METRICS:
            row[key] = res.get(key)
        for key, value in (res.get("metrics") or {}).items():
            if key.startswith("val/") and key != "val/loss":
                row[key] = value
        rows.append(row)
    table = pd.DataFrame(rows)
    numeric = table.select_dtypes("number").drop(columns=["fold"])
    mean = numeric.mean()
    sd = numeric.std(ddof=1) if len(table) > 1 else numeric.mean() * math.nan
    write_csv(out_dir / "cv_summary.csv", table)
    lines = ["| metric | " + " | ".join(f"fold {r}" for r in table["fold"]) + " | mean ± sd |"]
    lines.append("|" + "---|" * (len(table) + 2))
    for col in numeric.columns:
        vals = " | ".join("n/a" if pd.isna(v) else f"{v:.3f}" for v in table[col])
        lines.append(f"| {col} | {vals} | {mean[col]:.3f} ± {sd[col]:.3f} |")
    write_text(out_dir / "cv_summary.md", "\n".join(lines) + "\n")
    write_text(
        out_dir / "cv_summary.json",
        json.dumps({"folds": rows, "mean": mean.to_dict(), "sd": sd.to_dict()}, default=str),
    )
    return table


def run_cv(cfg: DictConfig) -> pd.DataFrame:
    """Train every fold in sequence (for SLURM arrays use multirun over data.split.fold)."""
    from immunoplex.training.run import train

    results = [train(fc) for fc in fold_configs(cfg)]
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return summarise_folds(results, out_dir)


def collect_folds(run_dirs: list[Path], out_dir: Path) -> pd.DataFrame:
    """Summarise folds trained as separate jobs (multirun / SLURM array) from their summaries."""
    results = []
    for d in sorted(run_dirs):
        summary = Path(d) / "summary.json"
        if summary.is_file():
            results.append(json.loads(summary.read_text()))
    if not results:
        raise FileNotFoundError(f"no summary.json under {[str(d) for d in run_dirs]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    return summarise_folds(results, out_dir)
