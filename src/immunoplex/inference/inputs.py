"""What a prediction run is given: slides grouped into patients, clinical values, expression.

``collect_inputs`` turns a slide file, a folder slide (one TIFF per marker), a folder of slides or
a manifest into :class:`PatientInput` records; ``prepare_expression`` matches an expression table
to the checkpoint's genes and normalisation. Errors name the file and the row.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from immunoplex.errors import ConfigError, ExpressionError, ManifestError
from immunoplex.expression.genes import GeneReport, harmonise_genes
from immunoplex.io.folder import TIFF_SUFFIXES, stem
from immunoplex.io.imc import looks_like_imc_txt
from immunoplex.io.names import ChannelNames, read_names_file
from immunoplex.io.ngff import is_ngff
from immunoplex.utils.tables import MISSING_TEXT, read_table, table_columns

if TYPE_CHECKING:
    from immunoplex.inference.predictor import Predictor

log = logging.getLogger(__name__)

SLIDE_SUFFIXES = (*TIFF_SUFFIXES, ".qptiff", ".btf", ".mcd")
MANIFEST_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet")


@dataclass
class SlideInput:
    slide_id: str
    path: Path  # an IMC .mcd acquisition is 'file.mcd#<id>'
    mpp: float | None = None
    channel_names: ChannelNames | None = None  # from the manifest 'channels' or a names file


@dataclass
class PatientInput:
    """One patient's slides and patient-level values as given by the user."""

    patient_id: str
    slides: list[SlideInput]
    label: int = -1
    cohort: str | None = None
    treatment: str | None = None
    clinical: dict[str, float] = field(default_factory=dict)


def is_folder_slide(folder: Path) -> bool:
    """A folder whose TIFFs are all single-channel images of one size (one slide per marker)."""
    import tifffile

    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES]
    if len(files) < 2 or any(p.is_dir() for p in folder.iterdir()):
        return False
    shapes = set()
    try:
        for f in files:
            with tifffile.TiffFile(f) as tif:
                s = tif.series[0]
                shape = tuple(int(v) for v in s.shape)
                axes = s.axes
                spatial = tuple(n for n, a in zip(shape, axes, strict=True) if a in "YX")
                if int(np.prod(shape)) != int(np.prod(spatial)):
                    return False
                shapes.add(spatial)
    except Exception:  # noqa: BLE001 - not a readable TIFF: not a folder slide
        return False
    return len(shapes) == 1


def is_imc_txt(path: Path) -> bool:
    """A raw IMC text export (header starting with ``Start_push``), not a manifest."""
    if path.suffix.lower() != ".txt" or not path.is_file():
        return False
    with open(path, "rb") as fh:
        return looks_like_imc_txt(Path("x.bin"), fh.read(16))


def _expand_mcd(p: Path) -> list[tuple[str, Path]]:
    """(slide id, path) per acquisition of an .mcd (``<stem>#<id>``); other slides as given."""
    sid = stem(p) if p.is_file() else p.name
    if not (p.is_file() and p.suffix.lower() == ".mcd"):
        return [(sid, p)]
    from immunoplex.io.mcd import acquisitions

    acqs = acquisitions(p)
    if len(acqs) == 1:
        return [(sid, p)]
    return [(f"{sid}#{i}", Path(f"{p}#{i}")) for i, _ in acqs]


def _slides_in_folder(folder: Path) -> list[Path]:
    out = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if (
            p.is_file()
            and (p.name.lower().endswith(SLIDE_SUFFIXES) or is_imc_txt(p))
            or p.is_dir()
            and (is_ngff(p) or is_folder_slide(p))
        ):
            out.append(p)
    return out


def collect_inputs(
    input_path: str | Path,
    clinical_columns: Sequence[str] = (),
    mpp: float | None = None,
    kind: str = "auto",
    cohort: str | None = None,
    names_file: str | Path | None = None,
) -> list[PatientInput]:
    """Patients to predict from a slide, a folder of slides, a folder slide or a manifest.

    A manifest groups slides by ``patient_id`` (as in training); otherwise each slide is its own
    patient named by the slide's file stem. ``mpp`` is the µm/px override for files lacking it
    (a manifest ``mpp`` column takes precedence per slide). ``names_file`` names the channels of
    slides that carry no names (below a manifest ``channels`` cell and a ``panel.csv``). Each
    acquisition of an IMC ``.mcd`` is a slide (``<stem>#<id>``).
    """
    path = Path(input_path)
    names = read_names_file(names_file) if names_file else None
    if not path.exists():
        raise ConfigError(f"{path}: input not found")
    if kind == "auto":
        if path.is_file() and path.name.lower().endswith(MANIFEST_SUFFIXES):
            kind = "slide" if is_imc_txt(path) else "manifest"
        elif path.is_file() or is_ngff(path) or is_folder_slide(path):
            kind = "slide"
        else:
            kind = "folder"
    if kind == "manifest":
        return _manifest_inputs(path, clinical_columns, mpp, cohort, names)
    if kind == "slide":
        slides = [path]
    elif kind == "folder":
        if not path.is_dir():
            raise ConfigError(f"{path}: input_kind=folder needs a directory")
        slides = _slides_in_folder(path)
        if not slides:
            raise ConfigError(f"{path}: folder contains no slides ({', '.join(SLIDE_SUFFIXES)})")
    else:
        raise ConfigError(f"input_kind {kind!r} must be auto, slide, folder or manifest")
    out: list[PatientInput] = []
    seen: dict[str, Path] = {}
    for p, sid in ((q, s) for f in slides for s, q in _expand_mcd(f)):
        if sid in seen:
            raise ManifestError(f"{p}: slide id {sid!r} also used by {seen[sid]}")
        seen[sid] = p
        out.append(PatientInput(sid, [SlideInput(sid, p, mpp, names)], cohort=cohort))
    return out


def _manifest_inputs(
    path: Path,
    clinical_columns: Sequence[str],
    mpp: float | None,
    cohort: str | None,
    names: ChannelNames | None = None,
) -> list[PatientInput]:
    from immunoplex.data.cohort import load_cohort, slide_channel_names

    header = set(table_columns(path, "manifest"))
    cols = [c for c in clinical_columns if c in header]
    coh = load_cohort(path, cols)
    has_cohort = "cohort" in header
    patients = coh.patients.set_index("patient_id")
    out = []
    for pid, group in coh.slides.groupby("patient_id", sort=False):
        slides = []
        for row in group.itertuples():
            row_mpp = getattr(row, "mpp", None)
            smpp = mpp if row_mpp is None or pd.isna(row_mpp) else float(row_mpp)
            given = slide_channel_names(row) or names
            slides.append(SlideInput(str(row.slide_id), Path(row.image_path), smpp, given))
        prow = patients.loc[pid]
        treatment = str(prow.get("treatment", "") or "").strip() or None
        clinical = {c: float(prow[c]) for c in cols if not pd.isna(prow[c])}
        out.append(
            PatientInput(
                patient_id=str(pid),
                slides=slides,
                label=int(prow["label"]),
                cohort=cohort or (str(prow["cohort"]) if has_cohort else None),
                treatment=treatment,
                clinical=clinical,
            )
        )
    return out


def read_clinical_table(path: str | Path, columns: Sequence[str]) -> dict[str, dict[str, float]]:
    """``patient_id`` + clinical columns (CSV/TSV/Parquet) -> {patient: {column: value}}
    (empty and NA cells dropped). Every one of ``columns`` (the model's) must be in the table."""
    p = Path(path)
    df = read_table(p, "clinical table")
    if "patient_id" not in df.columns:
        raise ManifestError(
            f"{p}: clinical table needs a patient_id column; has {list(df.columns)}"
        )
    absent = [c for c in columns if c not in df.columns]
    if absent:  # a misnamed column would silently predict every patient without the value
        raise ManifestError(
            f"{p}: clinical table has no column {absent[0]!r} (the model's clinical columns: "
            f"{list(columns)}); has {list(df.columns)}"
        )
    out: dict[str, dict[str, float]] = {}
    for i, row in enumerate(df.itertuples(index=False), start=2):
        vals: dict[str, float] = {}
        for c in columns:
            v = str(getattr(row, c) if c.isidentifier() else row[list(df.columns).index(c)])
            if v.strip().lower() in MISSING_TEXT:
                continue
            try:
                vals[c] = float(v)
            except ValueError:
                raise ManifestError(f"{p}:{i}: {c} value {v!r} is not a number") from None
        out[str(row.patient_id).strip()] = vals
    return out


# ----------------------------------------------------------------------------- expression
@dataclass
class ExpressionInputs:
    """Normalised expression per patient plus the gene report of the harmonisation."""

    values: dict[str, np.ndarray]
    report: GeneReport | None
    source: str | None
    # A checkpoint trained with expression_norm=features: per-feature coverage (CoverageReport)
    # and the patients whose expression was dropped (inference/feature_inputs.py).
    feature_report: Any = None
    dropped: list[str] = field(default_factory=list)


def prepare_expression(
    pred: Predictor,
    path: str | Path | None,
    patients: Sequence[PatientInput],
    allow_missing_genes: bool = False,
    small_cohort: str | None = None,
    default_cohort: str = "new_cohort",
) -> ExpressionInputs:
    """Harmonise a table to the checkpoint's genes BY NAME and normalise it as in training."""
    if path is None or "expression" not in pred.modalities:
        if path is not None:
            log.warning("%s: the model has no expression branch; expression is not used", path)
        return ExpressionInputs({}, None, None)
    from immunoplex.expression.io import read_expression

    features = getattr(pred, "expression_features", None)  # expression_norm=features
    if features is None and (pred.expression_norm is None or not pred.genes):
        raise ExpressionError(f"{pred.path}: checkpoint has no expression normalisation/genes")
    table = read_expression(path)
    ids = [p.patient_id for p in patients]
    values = table.values.loc[table.values.index.isin(ids)]
    if values.empty:
        raise ExpressionError(
            f"{path}: no sample id matches a patient to predict (first ids: {ids[:3]})"
        )
    if features is not None:  # within-sample features: coverage reported, nothing filled
        from immunoplex.inference.feature_inputs import feature_expression

        feats, freport, dropped = feature_expression(pred, values, path, allow_missing_genes)
        return ExpressionInputs(feats, None, str(path), freport, dropped)
    norm = pred.expression_norm
    fills = dict(
        zip(norm.genes, (norm.fill_mean if norm.fill_mean is not None else []), strict=False)
    )
    aligned, report = harmonise_genes(
        values, pred.genes, allow_missing=allow_missing_genes, fill_values=fills, source=path
    )
    if report.missing:
        log.warning("%s: %s (filled with the training means)", path, report.summary())
    if small_cohort:
        norm.small_cohort = small_cohort
    cohort_of = {p.patient_id: p.cohort or default_cohort for p in patients}
    cohorts = pd.Series([cohort_of[str(i)] for i in aligned.index], index=aligned.index)
    matrix = norm.transform(aligned, cohorts)
    return ExpressionInputs(
        {str(pid): matrix[i] for i, pid in enumerate(aligned.index)}, report, str(path)
    )


def treatment_index(pred: Predictor, name: str | None) -> tuple[int, str, str]:
    """(index, name, source) of a treatment in the checkpoint's list."""
    if not pred.treatments:
        return 0, name or "unspecified", "model has no treatment input"
    if name is None or not str(name).strip():
        default = "unspecified" if "unspecified" in pred.treatments else pred.treatments[0]
        return pred.treatments.index(default), default, "default"
    name = str(name).strip()
    if name not in pred.treatments:
        raise ConfigError(f"treatment {name!r} is not one of the model's {pred.treatments}")
    return pred.treatments.index(name), name, "given"


def expression_only_inputs(expression: str | Path | None, cohort: str | None) -> list[PatientInput]:
    """No slides: one patient per sample of the expression table (expression-only models)."""
    from immunoplex.expression.io import read_expression

    if expression is None:
        raise ConfigError("input=null needs expression=PATH (one patient per sample)")
    table = read_expression(expression)
    return [PatientInput(str(pid), [], cohort=cohort) for pid in table.values.index]
