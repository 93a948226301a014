"""A per-patient feature table as model input: the cell stage's ``cell_features.csv`` (or any CSV
with a ``patient_id`` column and numeric columns).

``data.features`` in the training config:

- ``table``: the CSV (one row per patient; ``immunoplex-cells`` writes ``cell_features.csv``);
- ``columns``: the columns the model reads, each with its transform: ``none``, ``log1p``
  (``log(1 + x)``: densities per mm² and counts) or ``logit`` (``logit(x)`` clipped to
  [0.005, 0.995]: fractions); a list means ``none`` for every one;
- ``labels`` (optional): a human-readable label per column; by default, for the cell stage's
  columns, one built from the name and the phenotype rules' labels ("Clever-1+ macrophages per
  mm² stroma", :func:`cell_label`), else the ``description`` and ``unit`` of the table's catalogue
  (``cell_features_columns.csv`` beside it), else the name.

Nothing is imputed here. A patient without a row has ``has_features`` False and a value left
empty (NaN) is carried as NaN: the model treats either as an unobserved input (the training
mean after its standardisation), and both are counted and logged. A value that is not a number
is a :class:`~immunoplex.errors.ManifestError` naming the file, row and column.

The spec (columns, transforms, labels and, when the table came from ``immunoplex-cells``, that
run's settings ``cells_config.json``) is stored in the checkpoint, so ``immunoplex-predict``
reads the same columns from a new table, or runs the same cell stage on new slides.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from immunoplex.cells.cohort import CELLS_CONFIG
from immunoplex.errors import ConfigError, ManifestError
from immunoplex.utils.tables import MISSING_TEXT, read_table

log = logging.getLogger(__name__)

TRANSFORMS = ("none", "log1p", "logit")
LOGIT_CLIP = 0.005
CATALOGUE = "cell_features_columns.csv"


def _transform(x: np.ndarray, how: str) -> np.ndarray:
    if how == "log1p":
        return np.log1p(np.maximum(x, 0.0))
    if how == "logit":
        p = np.clip(x, LOGIT_CLIP, 1.0 - LOGIT_CLIP)
        return np.log(p / (1.0 - p))
    return x


def _columns_spec(columns: Any) -> dict[str, str]:
    if isinstance(columns, Mapping):
        spec = {str(k): str(v if v is not None else "none") for k, v in columns.items()}
    elif isinstance(columns, Sequence) and not isinstance(columns, str):
        spec = {str(c): "none" for c in columns}
    else:
        raise ConfigError("data.features.columns must be a mapping column -> transform or a list")
    if not spec:
        raise ConfigError("data.features.columns is empty")
    bad = {k: v for k, v in spec.items() if v not in TRANSFORMS}
    if bad:
        raise ConfigError(f"data.features.columns: unknown transform(s) {bad}; use {TRANSFORMS}")
    return spec


COMPARTMENT_WORDS = {"tissue": "tissue", "tumour": "tumour", "stroma": "stroma",
                     "border": "border band"}  # fmt: skip


def _type_labels(cells: Mapping[str, Any] | None) -> dict[str, str]:
    """Cell-type name -> label (``Clever-1+ macrophage``) from the cell stage's phenotype rules."""
    rules = ((cells or {}).get("phenotypes") or {}).get("rules") or []
    return {str(r["name"]): str(r.get("label") or r["name"]) for r in rules if "name" in r}


def cell_label(column: str, types: Mapping[str, str]) -> str | None:
    """A readable label for a column of the cell stage's table, e.g.
    ``density_clever1_macrophage_stroma_per_mm2`` -> "Clever-1+ macrophages per mm² stroma"
    (None: not one of its patterns, or an unknown type)."""
    names = sorted(types, key=len, reverse=True)

    def split(text: str, sep: str) -> tuple[str, str] | None:
        for a in names:
            if text.startswith(a + sep) and text[len(a) + len(sep) :] in types:
                return a, text[len(a) + len(sep) :]
        return None

    def pl(t: str) -> str:
        return types[t] + "s"

    if column.startswith("density_") and column.endswith("_per_mm2"):
        body = column[len("density_") : -len("_per_mm2")]
        for comp, word in COMPARTMENT_WORDS.items():
            t = body[: -len(comp) - 1]
            if body.endswith("_" + comp) and t in types:
                return f"{pl(t)} per mm² {word}"
    if column.startswith("frac_intratumoural_") and column[19:] in types:
        return f"{pl(column[19:])} inside tumour (share)"
    if column.startswith("frac_") and (ab := split(column[5:], "_of_")):
        return f"{pl(ab[0])}, share of {pl(ab[1])}"
    if column.startswith("nn_median_um_") and (ab := split(column[13:], "_to_")):
        return f"{types[ab[0]]} to nearest {types[ab[1]]}, median (µm)"
    if column.startswith("median_tumour_distance_um_") and column[26:] in types:
        return f"{pl(column[26:])}, median signed distance to the tumour border (µm)"
    if column.startswith("nbr_frac_") and "_r" in column and column.endswith("um"):
        body, radius = column[9:].rsplit("_r", 1)
        if ab := split(body, "_around_"):
            return f"{pl(ab[0])}, share of the cells within {radius[:-2]} µm of {pl(ab[1])}"
    return None


def _catalogue_labels(table: Path, columns: Sequence[str]) -> dict[str, str]:
    cat = table.parent / CATALOGUE
    if not cat.is_file():
        return {}
    try:
        df = pd.read_csv(cat)
    except (OSError, ValueError, pd.errors.ParserError):
        return {}
    if "feature" not in df.columns:
        return {}
    out = {}
    for _, r in df.iterrows():
        name = str(r["feature"])
        if name in columns:
            desc = str(r.get("description", "") or name)
            unit = str(r.get("unit", "") or "")
            out[name] = f"{desc} ({unit})" if unit and unit != "nan" else desc
    return out


def read_values(path: str | Path, columns: Sequence[str]) -> pd.DataFrame:
    """The table's ``columns`` as floats, indexed by patient id (NaN where a cell is empty).

    Read with the project's one table reader (CSV, TSV or Parquet; missing file, short rows and
    repeated column names are its one-line errors)."""
    df = read_table(path, "patient feature table")
    if "patient_id" not in df.columns:
        raise ManifestError(f"{path}: no patient_id column; has {list(df.columns)[:8]}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ManifestError(
            f"{path}: column(s) {missing[:5]} of the model are not in the table "
            f"(it has {len(df.columns) - 1} columns, e.g. {list(df.columns)[1:6]})"
        )
    ids = df["patient_id"].str.strip()
    dup = ids[ids.duplicated()].unique().tolist()
    if dup:
        raise ManifestError(f"{path}: patient_id(s) {dup[:5]} appear on more than one row")
    out = {}
    for col in columns:
        text = df[col].str.strip()
        empty = text.str.lower().isin(MISSING_TEXT)
        vals = pd.to_numeric(text.where(~empty), errors="coerce")
        bad = vals.isna() & ~empty
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ManifestError(
                f"{path}: row {i + 2}, column {col!r}: {df[col].iloc[i]!r} is not a number"
            )
        out[col] = vals.astype(float).to_numpy()
    return pd.DataFrame(out, index=pd.Index(ids, name="patient_id"))


@dataclass
class FeatureTable:
    """Columns, transforms and labels of a patient feature table; values per patient."""

    columns: list[str]
    transforms: dict[str, str]
    labels: list[str]
    source: str = ""
    cells: dict[str, Any] | None = None  # the immunoplex-cells settings behind the table
    values: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def from_config(cls, spec: Mapping[str, Any] | None) -> FeatureTable | None:
        """From ``data.features`` (None or no ``table``: no feature table)."""
        if not spec or not spec.get("table"):
            return None
        path = Path(str(spec["table"]))
        tr = _columns_spec(spec.get("columns"))
        cols = list(tr)
        cells = None
        side = path.parent / CELLS_CONFIG
        if side.is_file():
            try:
                cells = json.loads(side.read_text())
            except (OSError, ValueError) as err:
                raise ManifestError(f"{side}: unreadable cell-stage settings ({err})") from None
        given = dict(spec.get("labels") or {})
        cat = _catalogue_labels(path, cols)
        types = _type_labels(cells)
        labels = [str(given.get(c) or cell_label(c, types) or cat.get(c) or c) for c in cols]
        table = cls(cols, tr, labels, str(path), cells)
        table.load(path)
        return table

    def load(self, path: str | Path, patients: Sequence[str] | None = None) -> FeatureTable:
        """Read and transform the values of ``path`` (for ``patients`` when given)."""
        frame = read_values(path, self.columns)
        if patients is not None:
            frame = frame.loc[frame.index.isin(set(patients))]
        mat = np.stack(
            [_transform(frame[c].to_numpy(), self.transforms[c]) for c in self.columns], axis=1
        ).astype(np.float32)
        self.values = {pid: mat[i] for i, pid in enumerate(frame.index)}
        self.source = str(path)
        empty = {c: int(n) for c, n in zip(self.columns, np.isnan(mat).sum(axis=0)) if n}
        if empty:
            log.info("%s: empty values (unobserved inputs) per column: %s", path, empty)
        return self

    def vector(self, patient_id: str) -> np.ndarray | None:
        return self.values.get(str(patient_id))

    def report_missing(self, patients: Sequence[str]) -> list[str]:
        """Patients without a row (logged): their table features are unobserved."""
        lost = [p for p in patients if str(p) not in self.values]
        if lost:
            log.warning(
                "%s: %d patient(s) have no row (their table features are unobserved): %s",
                self.source,
                len(lost),
                lost[:5],
            )
        return lost

    @property
    def n_features(self) -> int:
        return len(self.columns)

    def dims(self) -> dict[str, Any]:
        """The model's build arguments for this table."""
        return {"table_features": list(self.columns), "table_labels": list(self.labels)}

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's ``data.features`` section."""
        return {
            "columns": list(self.columns),
            "transforms": dict(self.transforms),
            "labels": list(self.labels),
            "source": self.source,
            "cells": self.cells,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> FeatureTable | None:
        if not d or not d.get("columns"):
            return None
        cols = [str(c) for c in d["columns"]]
        tr = {str(k): str(v) for k, v in (d.get("transforms") or {}).items()}
        labels = [str(x) for x in (d.get("labels") or cols)]
        return cls(cols, {c: tr.get(c, "none") for c in cols}, labels, str(d.get("source", "")),
                   d.get("cells"))  # fmt: skip


def item_features(table: FeatureTable | None, patient_id: str) -> tuple[np.ndarray, bool] | None:
    """(values, has_row) for a dataset item; None without a table."""
    if table is None:
        return None
    v = table.vector(patient_id)
    if v is None:
        return np.full(table.n_features, math.nan, dtype=np.float32), False
    return v, True
