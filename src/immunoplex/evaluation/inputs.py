"""Read and check predictions tables, and pair two of them on patient_id.

Predictions table: ``patient_id``, ``label`` (1 / 0 / empty or -1 = unlabelled), ``probability``;
optional ``calibrated_probability``, ``prediction_set`` and grouping columns. Bad input raises
``ManifestError`` naming the file, row (1 = first data row after the header) and reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from immunoplex.errors import ManifestError
from immunoplex.evaluation.calibration import SET_LABELS
from immunoplex.utils.tables import read_table

PROB = "probability"
CAL_PROB = "calibrated_probability"
REQUIRED = ("patient_id", "label")
_LABEL_VALUES = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "": -1, "-1": -1, "-1.0": -1, "nan": -1}


def _text(v: Any) -> str:
    """Cell as stripped text; missing values (NaN/None/NA) become the empty string."""
    return "" if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v).strip()


def _where(source: str, row: int, pid: Any | None = None) -> str:
    return f"{source}: row {row}" + (f" (patient_id {pid!r})" if pid is not None else "")


def resolve_prob_column(columns: Sequence[str], prob_column: str = "auto") -> str:
    """``auto`` -> ``calibrated_probability`` when present, else ``probability``."""
    if prob_column in (None, "", "auto"):
        return CAL_PROB if CAL_PROB in columns else PROB
    return prob_column


def read_predictions_csv(path: str | Path) -> pd.DataFrame:
    """Read a predictions table (CSV, TSV or Parquet) with every column as text (validation
    parses what it needs)."""
    return read_table(path, "predictions file")


def _parse_probability(df: pd.DataFrame, col: str, source: str) -> np.ndarray:
    raw = df[col].map(_text)
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    for i, (text, v) in enumerate(zip(raw.tolist(), values, strict=True)):
        if not math.isfinite(v):
            pid = df["patient_id"].iloc[i]
            what = "is empty" if text == "" else f"{text!r} is not a finite number"
            raise ManifestError(f"{_where(source, i + 1, pid)}: {col} {what}")
        if v < 0 or v > 1:
            pid = df["patient_id"].iloc[i]
            raise ManifestError(f"{_where(source, i + 1, pid)}: {col} {text} is outside [0, 1]")
    return values


def validate_predictions(
    df: pd.DataFrame, source: str = "predictions", prob_column: str = "auto"
) -> pd.DataFrame:
    """Check and normalise a predictions table.

    Returns a copy with ``patient_id`` (str), ``label`` (int: 1, 0, -1 = unlabelled) and every
    probability column as float; other columns are kept as they are.
    """
    df = df.copy()
    df.columns = [str(c).strip() for c in df.columns]
    col = resolve_prob_column(df.columns, prob_column)
    missing = [c for c in (*REQUIRED, col) if c not in df.columns]
    if missing:
        raise ManifestError(
            f"{source}: missing required column(s) {', '.join(missing)} "
            f"(found: {', '.join(df.columns) or 'none'})"
        )
    if df.empty:
        raise ManifestError(f"{source}: no rows")
    ids = df["patient_id"].map(_text)
    for i, pid in enumerate(ids.tolist()):
        if pid == "":
            raise ManifestError(f"{_where(source, i + 1)}: patient_id is empty")
    dup = ids.duplicated(keep="first")
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        first = int(np.flatnonzero((ids == ids.iloc[i]).to_numpy())[0])
        raise ManifestError(
            f"{_where(source, i + 1)}: duplicated patient_id {ids.iloc[i]!r} "
            f"(first at row {first + 1})"
        )
    df["patient_id"] = ids
    labels = []
    for i, v in enumerate(df["label"].tolist()):
        text = _text(v)
        if text.lower() not in _LABEL_VALUES:
            raise ManifestError(
                f"{_where(source, i + 1, ids.iloc[i])}: label {text!r} is not 1, 0, -1 or empty"
            )
        labels.append(_LABEL_VALUES[text.lower()])
    df["label"] = np.asarray(labels, dtype=np.int64)
    for c in dict.fromkeys((col, PROB, CAL_PROB)):
        if c in df.columns:
            df[c] = _parse_probability(df, c, source)
    if "prediction_set" in df.columns:
        sets = df["prediction_set"].map(_text).str.lower()
        bad = ~sets.isin(SET_LABELS)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ManifestError(
                f"{_where(source, i + 1, ids.iloc[i])}: prediction_set "
                f"{df['prediction_set'].iloc[i]!r} is not one of {', '.join(SET_LABELS)}"
            )
        df["prediction_set"] = sets
    df.attrs["prob_column"] = col
    df.attrs["source"] = source
    return df


def load_predictions(
    data: pd.DataFrame | str | Path, prob_column: str = "auto", source: str | None = None
) -> tuple[pd.DataFrame, str]:
    """Validated table and its source name (the path, or ``source``/"predictions" for frames)."""
    if isinstance(data, pd.DataFrame):
        src = source or "predictions"
        return validate_predictions(data, src, prob_column), src
    src = source or str(data)
    return validate_predictions(read_predictions_csv(data), src, prob_column), src


def pair_predictions(
    a: pd.DataFrame,
    b: pd.DataFrame,
    source_a: str,
    source_b: str,
    intersect: bool = False,
) -> pd.DataFrame:
    """Align two validated tables on patient_id -> columns patient_id, label, p_a, p_b.

    Refuses mismatched patient sets unless ``intersect``; refuses conflicting labels.
    """
    ids_a, ids_b = set(a["patient_id"]), set(b["patient_id"])
    only_a, only_b = sorted(ids_a - ids_b), sorted(ids_b - ids_a)
    shared = ids_a & ids_b
    if (only_a or only_b) and not intersect:

        def show(v: list[str]) -> str:
            return ", ".join(v[:3]) + (", ..." if len(v) > 3 else "")

        raise ManifestError(
            f"{source_b}: patient ids do not match {source_a} "
            f"({len(only_a)} only in the first{': ' + show(only_a) if only_a else ''}; "
            f"{len(only_b)} only in the second{': ' + show(only_b) if only_b else ''}); "
            f"pass intersect=true to compare the {len(shared)} shared patients"
        )
    if not shared:
        raise ManifestError(f"{source_b}: no patient ids in common with {source_a}")
    pa = a.set_index("patient_id")
    pb = b.set_index("patient_id")
    keep = [pid for pid in a["patient_id"] if pid in shared]
    la, lb = pa.loc[keep, "label"], pb.loc[keep, "label"]
    clash = (la >= 0) & (lb >= 0) & (la != lb)
    if clash.any():
        pid = clash[clash].index[0]
        raise ManifestError(
            f"{source_b}: label of patient_id {pid!r} is {lb[pid]} but {la[pid]} in {source_a}"
        )
    label = np.where(la >= 0, la, lb)
    return pd.DataFrame(
        {
            "patient_id": keep,
            "label": label,
            "p_a": pa.loc[keep, a.attrs["prob_column"]].to_numpy(),
            "p_b": pb.loc[keep, b.attrs["prob_column"]].to_numpy(),
        }
    )
