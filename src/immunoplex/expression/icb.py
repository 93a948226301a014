"""Preparation of the public ICB RNA-seq cohorts (PredictioR ``ICB_small_*``) into the project's
manifest + expression formats, and loading them back.

Input (``realdata/expression``): per cohort ``ICB_small_<Cohort>__assay_gene_expression.csv.gz``
(genes x samples, log2(TPM + 0.001)) and ``ICB_small_<Cohort>__coldata.csv`` (``response`` R / NR /
empty). Output (``out_dir``):

- ``manifest.csv``: patient_id (``<Cohort>_<sample>``), label (1 R / 0 NR / empty = unknown),
  cohort, treatment, cancer_type, sample_id, recist.
- ``expression.csv``: patient_id, then the genes shared by every cohort (values unchanged).
- ``genes_report.json``: per cohort its gene count, genes dropped for missing values, and the
  genes of the union it lacks (what the cross-cohort intersection costs).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from immunoplex.errors import ExpressionError, ManifestError
from immunoplex.expression.genes import intersect_genes
from immunoplex.expression.io import read_expression
from immunoplex.utils.atomic import write_csv, write_text
from immunoplex.utils.tables import read_table

ASSAY_SUFFIX = "__assay_gene_expression.csv.gz"
COLDATA_SUFFIX = "__coldata.csv"
_PREFIX = "ICB_small_"
LABELS = {"R": "1", "NR": "0"}


@dataclass
class PreparedICB:
    """Samples x genes log expression, manifest (one row per sample) and the gene report."""

    expression: pd.DataFrame
    manifest: pd.DataFrame
    report: dict[str, Any]

    @property
    def labels(self) -> pd.Series:
        lab = pd.to_numeric(self.manifest.set_index("patient_id")["label"], errors="coerce")
        return lab.fillna(-1).astype(int).reindex(self.expression.index)

    @property
    def cohorts(self) -> pd.Series:
        return (
            self.manifest.set_index("patient_id")["cohort"]
            .astype(str)
            .reindex(self.expression.index)
        )


def expression_dir(realdata: str | Path) -> Path:
    """Accept either the realdata root or its ``expression`` folder."""
    root = Path(realdata)
    sub = root / "expression"
    return sub if sub.is_dir() else root


def find_cohorts(realdata: str | Path) -> dict[str, tuple[Path, Path]]:
    """Cohort name -> (assay file, coldata file), sorted by name."""
    folder = expression_dir(realdata)
    if not folder.is_dir():
        raise ExpressionError(f"{folder}: ICB expression folder not found")
    found: dict[str, tuple[Path, Path]] = {}
    for assay in sorted(folder.glob(f"*{ASSAY_SUFFIX}")):
        stem = assay.name[: -len(ASSAY_SUFFIX)]
        name = stem[len(_PREFIX) :] if stem.startswith(_PREFIX) else stem
        coldata = folder / f"{stem}{COLDATA_SUFFIX}"
        if not coldata.is_file():
            raise ManifestError(f"{coldata}: sample table for {assay.name} not found")
        found[name] = (assay, coldata)
    if not found:
        raise ExpressionError(f"{folder}: no *{ASSAY_SUFFIX} files")
    return found


def _clean(value: object) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()


def _cohort_manifest(name: str, coldata: Path, samples: list[str]) -> pd.DataFrame:
    col = read_table(coldata, "sample table")
    col = col.set_index(col.columns[0])
    col.index = col.index.str.strip()
    absent = [s for s in samples if s not in col.index]
    if absent:
        raise ManifestError(f"{coldata}: expression sample {absent[0]!r} has no row")
    col = col.loc[samples]
    bad = sorted(set(col["response"].str.strip()) - {"R", "NR", ""})
    if bad:
        raise ManifestError(f"{coldata}: response value {bad[0]!r} is not R, NR or empty")
    prefix = re.sub(r"\W+", "_", name)
    return pd.DataFrame(
        {
            "patient_id": [f"{prefix}_{s}" for s in samples],
            "label": [LABELS.get(r.strip(), "") for r in col["response"]],
            "cohort": name,
            "treatment": [_clean(v) for v in col.get("treatment", [""] * len(col))],
            "cancer_type": [_clean(v) for v in col.get("cancer_type", [""] * len(col))],
            "sample_id": samples,
            "recist": [_clean(v) for v in col.get("recist", [""] * len(col))],
        }
    )


def load_icb_cohorts(realdata: str | Path) -> PreparedICB:
    """Read every cohort, harmonise genes (upper-case, duplicates averaged, genes with missing
    values dropped per cohort and reported) and keep the genes shared by all cohorts."""
    per_cohort: dict[str, pd.DataFrame] = {}
    manifests = []
    report: dict[str, Any] = {"cohorts": {}}
    for name, (assay, coldata) in find_cohorts(realdata).items():
        table = read_expression(assay, orientation="genes_x_samples", missing="drop_genes")
        man = _cohort_manifest(name, coldata, table.samples)
        values = table.values.copy()
        values.index = pd.Index(man["patient_id"].tolist(), name="patient_id")
        per_cohort[name] = values
        manifests.append(man)
        report["cohorts"][name] = {
            "file": assay.name,
            "samples": len(values),
            "responders": int((man["label"] == "1").sum()),
            "non_responders": int((man["label"] == "0").sum()),
            "unlabelled": int((man["label"] == "").sum()),
            "genes": values.shape[1],
            "dropped_for_missing_values": table.dropped_genes,
            "duplicated_genes_averaged": table.duplicated_genes,
        }
    shared, lacking = intersect_genes(per_cohort)
    shared = sorted(shared)
    for name, genes in lacking.items():
        report["cohorts"][name]["lacks_from_union"] = genes
    report["shared_genes"] = len(shared)
    report["union_genes"] = len(set().union(*(set(v.columns) for v in per_cohort.values())))
    expression = pd.concat([v[shared] for v in per_cohort.values()], axis=0)
    manifest = pd.concat(manifests, ignore_index=True)
    if expression.index.duplicated().any():
        dup = expression.index[expression.index.duplicated()][0]
        raise ManifestError(f"duplicated patient id {dup!r} after prefixing with the cohort")
    return PreparedICB(expression, manifest, report)


def write_prepared(prepared: PreparedICB, out_dir: str | Path) -> dict[str, Path]:
    """Write manifest.csv, expression.csv and genes_report.json into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "manifest": out / "manifest.csv",
        "expression": out / "expression.csv",
        "report": out / "genes_report.json",
    }
    write_csv(paths["manifest"], prepared.manifest)
    expression = prepared.expression.rename_axis("patient_id")
    write_csv(paths["expression"], expression, index=True, float_format="%.7g")
    write_text(paths["report"], json.dumps(prepared.report, indent=1))
    return paths


def read_prepared(out_dir: str | Path) -> PreparedICB:
    """Load a prepared directory back through the project readers."""
    out = Path(out_dir)
    table = read_expression(out / "expression.csv", orientation="samples_x_genes")
    manifest = read_table(out / "manifest.csv", "manifest")
    missing = sorted(set(table.samples) - set(manifest["patient_id"]))
    if missing:
        raise ManifestError(f"{out / 'manifest.csv'}: patient {missing[0]!r} not in the manifest")
    report_path = out / "genes_report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    return PreparedICB(table.values, manifest, report)
