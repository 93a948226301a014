"""Cohort manifests: one row per slide, joined into one record per patient.

The manifest is the user's contract with immunoplex (README, "Data formats"). Validation is strict:
every problem is an error naming the file and row, never a silent drop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from immunoplex.errors import ManifestError, SlideReadError
from immunoplex.io.mcd import slide_file
from immunoplex.io.names import ChannelNames, manifest_names
from immunoplex.utils.tables import MISSING_TEXT, read_table

REQUIRED_COLUMNS = ("slide_id", "patient_id", "image")
CHANNELS_COLUMN = "channels"
POSITIVE_LABELS = {"1", "1.0", "r", "responder", "cr", "pr", "true", "yes"}
NEGATIVE_LABELS = {"0", "0.0", "nr", "non-responder", "nonresponder", "sd", "pd", "false", "no"}
UNLABELLED = {""}  # an empty cell; nothing else means "unlabelled"
LABEL_NAMES = ("non-responder", "responder")
LABEL_SPELLINGS = (
    "responder: 1, R, responder, CR, PR, true, yes; non-responder: 0, NR, non-responder, SD, PD, "
    "false, no; unlabelled: an empty cell"
)


def parse_label(value: object, where: str) -> int:
    """Map a manifest label cell to 1 (responder), 0 (non-responder) or -1 (unlabelled).

    Only an empty cell (or a null) is unlabelled: ``-1``, ``NA``, ``None`` or ``unknown`` are
    refused, because a cohort coded 1/-1 would otherwise silently lose all its non-responders.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return -1
    text = str(value).strip().lower()
    if text in POSITIVE_LABELS:
        return 1
    if text in NEGATIVE_LABELS:
        return 0
    if text in UNLABELLED:
        return -1
    raise ManifestError(f"{where}: label {value!r} is not an accepted spelling ({LABEL_SPELLINGS})")


@dataclass
class Cohort:
    """A validated cohort: slides (one row per slide) and patients (one row per patient)."""

    manifest: Path
    slides: pd.DataFrame
    patients: pd.DataFrame
    clinical_columns: list[str] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.manifest.parent

    def slides_of(self, patient_id: str) -> pd.DataFrame:
        return self.slides[self.slides["patient_id"] == patient_id]

    def labelled(self) -> pd.DataFrame:
        return self.patients[self.patients["label"] >= 0]


def load_cohort(
    manifest: str | Path,
    clinical_columns: list[str] | None = None,
    check_images: bool = True,
    survival: dict[str, tuple[str, str]] | None = None,
) -> Cohort:
    """Read and validate a manifest; image paths are resolved relative to the manifest.

    ``survival``: endpoint -> (time column, event column), the names set in the data config.
    Present columns are parsed into ``time_<endpoint>`` (NaN = not recorded: unlabelled for that
    endpoint) and ``event_<endpoint>`` (1 / 0, -1 = not recorded) per patient; a bad cell is a
    one-line error naming the row. Absent columns leave the endpoint unrecorded (all NaN).
    """
    path = Path(manifest).resolve()
    df = read_table(path, "manifest")
    if df.empty:
        raise ManifestError(f"{path}: manifest has no rows (empty cohort)")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: missing required column(s) {missing}; has {list(df.columns)}")
    df = df.copy()
    for col in REQUIRED_COLUMNS:
        df[col] = df[col].astype(str).str.strip()
    for defaults in (("label", ""), ("cohort", "cohort"), ("treatment", ""), ("split", "")):
        if defaults[0] not in df.columns:
            df[defaults[0]] = defaults[1]
    # Row numbers as a person sees them in a spreadsheet: header is row 1.
    df["row_number"] = np.arange(len(df)) + 2
    for row in df.itertuples():
        for col in REQUIRED_COLUMNS:
            if not getattr(row, col):
                raise ManifestError(f"{path}:{row.row_number}: empty {col}")
    dup = df[df["slide_id"].duplicated(keep=False)]
    if not dup.empty:
        rows = dup["row_number"].tolist()
        raise ManifestError(
            f"{path}:{rows[1]}: duplicated slide_id {dup['slide_id'].iloc[0]!r} (rows {rows})"
        )
    df["label"] = [parse_label(v, f"{path}:{r}") for v, r in zip(df["label"], df["row_number"])]
    df["split"] = df["split"].astype(str).str.strip().str.lower()
    bad_split = df[~df["split"].isin(["", "train", "val", "test"])]
    if not bad_split.empty:
        r = bad_split.iloc[0]
        raise ManifestError(
            f"{path}:{r['row_number']}: split {r['split']!r} is not train/val/test/empty"
        )
    df["image_path"] = [_image_path(path, p, r) for p, r in zip(df["image"], df["row_number"])]
    if check_images:
        for row in df.itertuples():
            if not slide_file(row.image_path).exists():  # 'file.mcd#2': one acquisition
                raise ManifestError(f"{path}:{row.row_number}: image {row.image!r} not found")
    if CHANNELS_COLUMN in df.columns:  # names for TIFFs that carry none (';'-separated)
        for value, r in zip(df[CHANNELS_COLUMN], df["row_number"]):
            try:
                manifest_names(value, f"{path}:{r}", CHANNELS_COLUMN)
            except SlideReadError as err:
                raise ManifestError(str(err)) from None
    if "mpp" in df.columns:
        df["mpp"] = _numeric_column(df, "mpp", path, allow_empty=True)
    clinical = list(clinical_columns or [])
    for col in clinical:
        if col not in df.columns:
            raise ManifestError(f"{path}: clinical column {col!r} not in manifest")
        df[col] = _numeric_column(df, col, path, allow_empty=True)
    surv_cols = _survival_columns(df, path, survival or {})
    patients = _patients_from_slides(df, path, clinical + surv_cols)
    return Cohort(manifest=path, slides=df, patients=patients, clinical_columns=clinical)


def _survival_columns(
    df: pd.DataFrame, path: Path, survival: dict[str, tuple[str, str]]
) -> list[str]:
    from immunoplex.data.survival import parse_survival

    out = []
    for ep, (tcol, ecol) in survival.items():
        if tcol in df.columns or ecol in df.columns:
            if tcol not in df.columns or ecol not in df.columns:
                have, lack = (tcol, ecol) if tcol in df.columns else (ecol, tcol)
                raise ManifestError(f"{path}: survival column {have!r} without {lack!r} ({ep})")
            where = [f"{path}:{r}" for r in df["row_number"]]
            t, e = parse_survival(df[tcol].tolist(), df[ecol].tolist(), where, ep)
        else:
            t, e = np.full(len(df), np.nan), np.full(len(df), -1)
        df[f"time_{ep}"], df[f"event_{ep}"] = t, e
        out += [f"time_{ep}", f"event_{ep}"]
    return out


def slide_channel_names(row: object) -> ChannelNames | None:
    """The channel names a manifest row gives its slide (``channels`` column), or None.

    The one place the column is read: training (tile cache), tiling and prediction use it."""
    value = getattr(row, CHANNELS_COLUMN, None)
    if value is None and isinstance(row, dict):
        value = row.get(CHANNELS_COLUMN)
    return manifest_names(value, f"slide {getattr(row, 'slide_id', '?')}", CHANNELS_COLUMN)


def _image_path(manifest: Path, image: str, row: int) -> Path:
    """An image path resolved relative to the manifest; unusable paths are a row error."""
    try:
        p = Path(image)
        return p if p.is_absolute() else (manifest.parent / p).resolve()
    except (ValueError, OSError) as err:
        raise ManifestError(
            f"{manifest}:{row}: image path {image!r} is not usable ({err})"
        ) from err


def _numeric_column(df: pd.DataFrame, col: str, path: Path, allow_empty: bool) -> pd.Series:
    values = []
    for v, r in zip(df[col], df["row_number"]):
        text = str(v).strip()
        if text.lower() in MISSING_TEXT:
            if not allow_empty:
                raise ManifestError(f"{path}:{r}: {col} is empty")
            values.append(np.nan)
            continue
        try:
            x = float(text)
        except ValueError as err:
            raise ManifestError(f"{path}:{r}: {col} value {text!r} is not a number") from err
        if not math.isfinite(x):
            raise ManifestError(f"{path}:{r}: {col} value {text!r} is not finite")
        values.append(x)
    return pd.Series(values, index=df.index, dtype=float)


PATIENT_LEVEL = ("label", "cohort", "treatment", "split")


def _patients_from_slides(df: pd.DataFrame, path: Path, clinical: list[str]) -> pd.DataFrame:
    """One row per patient; patient-level columns must agree across that patient's slides."""
    cols = list(PATIENT_LEVEL) + clinical
    for pid, group in df.groupby("patient_id", sort=False):
        for col in cols:
            vals = group[col]
            uniq = vals.dropna().unique() if col in clinical else vals.unique()
            if len(uniq) > 1:
                r = int(group["row_number"].iloc[1])
                raise ManifestError(
                    f"{path}:{r}: patient {pid!r} has conflicting {col} values {[v.item() if hasattr(v, 'item') else v for v in uniq]}"
                )
    patients = df.groupby("patient_id", sort=False).first().reset_index()
    patients["n_slides"] = df.groupby("patient_id", sort=False).size().values
    keep = ["patient_id", *cols, "n_slides"]
    return patients[keep].reset_index(drop=True)


def expression_only_cohort(
    patients: pd.DataFrame, source: Path, clinical: list[str] | None = None
) -> Cohort:
    """A cohort with no slides (expression-only training); `patients` needs patient_id, label."""
    df = patients.copy()
    for col, default in (("cohort", "cohort"), ("treatment", ""), ("split", "")):
        if col not in df.columns:
            df[col] = default
    df["label"] = [parse_label(v, f"{source}:{i + 2}") for i, v in enumerate(df["label"])]
    df["n_slides"] = 0
    empty = pd.DataFrame(columns=["slide_id", "patient_id", "image", "image_path", "row_number"])
    return Cohort(manifest=source, slides=empty, patients=df, clinical_columns=list(clinical or []))
