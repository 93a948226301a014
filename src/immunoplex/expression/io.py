"""Expression tables: readers for CSV, TSV, Parquet and AnnData (gene harmonisation is in :mod:`.genes`).

Formats: CSV, TSV (optionally gzipped), Parquet and AnnData ``.h5ad`` (read with h5py, no anndata).
Tables may be genes x samples or samples x genes (detected, or declared with ``orientation``).
The result is always samples x genes: index = sample/patient id (str), columns = upper-cased gene
symbols, float64, with duplicated genes averaged. Bad input raises :class:`ExpressionError` with
one line naming the file and the offending row/gene.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from immunoplex.expression.genes import (
    _ENSEMBL,
    _fail,
    normalise_symbol,
)
from immunoplex.expression.h5ad import read_h5ad_frame

Orientation = Literal["auto", "samples_x_genes", "genes_x_samples"]
ORIENTATIONS = ("auto", "samples_x_genes", "genes_x_samples")

SAMPLE_HEADERS = {
    "patient_id", "patient", "patientid", "sample_id", "sample", "sampleid", "samples",
    "barcode", "obs", "obs_names", "case_id", "subject_id", "subject", "id",
}  # fmt: skip
GENE_HEADERS = {
    "gene", "genes", "gene_id", "gene_symbol", "symbol", "gene_name", "hugo_symbol", "geneid",
    "genesymbol", "gene_names", "feature", "feature_name", "var", "var_names", "ensembl_id",
}  # fmt: skip
# Genes present on nearly every panel/transcriptome: used only to tell which axis holds genes.
_COMMON_GENE_TEXT = """ACTB GAPDH B2M TUBB RPLP0 PGK1 TBP HPRT1 GUSB PPIA UBC YWHAZ HMBS SDHA TFRC CD274 PDCD1
    CTLA4 CD8A CD8B CD4 CD3E CD3D CD3G CD2 CD19 MS4A1 CD68 CD163 PTPRC GZMA GZMB GZMK PRF1 IFNG
    STAT1 IDO1 CXCL9 CXCL10 CXCL11 CXCL13 HLA-A HLA-B HLA-C HLA-DRA HLA-DRB1 HLA-E TBX21 EOMES
    LAG3 HAVCR2 TIGIT FOXP3 IL2RA IL7R CCL5 NKG7 KRT8 KRT18 KRT19 EPCAM VIM CDH1 MKI67 TOP2A
    ESR1 PGR ERBB2 EGFR KRAS TP53 MYC CCND1 PDCD1LG2 TNF IL6 IL10 TGFB1 VEGFA COL1A1 ACTA2 PECAM1
    CD34 FN1 SPP1 MRC1 ITGAM CD14 FCGR3A NCAM1 KLRD1 LYZ CD74 JCHAIN MZB1 IGKC ALB"""
COMMON_GENES = frozenset(_COMMON_GENE_TEXT.split())


@dataclass
class ExpressionTable:
    """Samples x genes expression values and where they came from."""

    values: pd.DataFrame
    source: Path | None = None
    duplicated_genes: list[str] = field(default_factory=list)
    dropped_genes: list[str] = field(default_factory=list)

    @property
    def genes(self) -> list[str]:
        return [str(g) for g in self.values.columns]

    @property
    def samples(self) -> list[str]:
        return [str(s) for s in self.values.index]

    def __len__(self) -> int:
        return len(self.values)


def _read_frame(path: Path, sep: str | None, id_column: str | None) -> pd.DataFrame:
    """Raw table with ids in the index (first column, or ``id_column``), cells not yet checked."""
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            df = pd.read_parquet(path)
            if id_column is None and isinstance(df.index, pd.RangeIndex):
                first = df.columns[0]
                if df[first].dtype == object or pd.api.types.is_string_dtype(df[first]):
                    id_column = str(first)
            if id_column is not None:
                df = _set_id(df, id_column, path)
            return df
        if sep is None:
            stem = name[:-3] if name.endswith(".gz") else name
            sep = "\t" if stem.endswith((".tsv", ".txt", ".tab")) else ","
        # header=None keeps an exactly repeated header as two columns of the same name (pandas
        # would rename the second "CD8A.1"), so duplicated genes are averaged like any other.
        raw = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, header=None)
        if raw.shape[0] == 0:
            raise pd.errors.EmptyDataError("no header row")
        df = raw.iloc[1:].reset_index(drop=True)
        df.columns = pd.Index([str(c) for c in raw.iloc[0]], dtype=object)
    except FileNotFoundError as err:
        raise _fail(path, "expression file not found") from err
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        raise _fail(path, f"cannot parse expression table ({str(err).splitlines()[0]})") from err
    except (ValueError, ImportError) as err:
        raise _fail(path, f"cannot read expression table ({str(err).splitlines()[0]})") from err
    if df.shape[1] == 0:
        raise _fail(path, "expression table is empty (no columns)")
    return _set_id(df, id_column if id_column is not None else str(df.columns[0]), path)


def _set_id(df: pd.DataFrame, id_column: str, path: Path) -> pd.DataFrame:
    if id_column not in df.columns:
        raise _fail(
            path, f"id column {id_column!r} not found; columns start {list(df.columns[:5])}"
        )
    out = df.set_index(id_column)
    out.index = out.index.astype(str).str.strip()
    out.index.name = id_column
    return out


def _axis_gene_score(labels: Iterable[object]) -> int:
    """How many labels look like gene identifiers (common symbols or Ensembl ids)."""
    score = 0
    for lab in labels:
        text = str(lab).strip().upper()
        if text in COMMON_GENES or _ENSEMBL.match(text):
            score += 1
    return score


def detect_orientation(df: pd.DataFrame, source: object = "table") -> str:
    """Guess whether rows are samples or genes from header names, gene-like labels, then shape."""
    header = str(df.index.name or "").strip().lower()
    if header in SAMPLE_HEADERS:
        return "samples_x_genes"
    if header in GENE_HEADERS:
        return "genes_x_samples"
    rows, cols = _axis_gene_score(df.index), _axis_gene_score(df.columns)
    if max(rows, cols) >= 3 and rows != cols:
        return "genes_x_samples" if rows > cols else "samples_x_genes"
    if df.shape[0] != df.shape[1]:
        # Transcriptome tables have (many) more genes than samples.
        return "genes_x_samples" if df.shape[0] > df.shape[1] else "samples_x_genes"
    raise _fail(source, "cannot tell whether rows are samples or genes; pass orientation=...")


def tidy_values(
    df: pd.DataFrame, source: object = "table", counts: bool = False, missing: str = "error"
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Validate a samples x genes frame; upper-case genes, average duplicates, float64.

    ``missing="drop_genes"`` removes genes with any missing (NaN/empty) cell instead of failing.
    Returns the clean frame, the genes that were duplicated (after upper-casing) and the genes
    dropped for missing values.
    """
    if missing not in ("error", "drop_genes"):
        raise _fail(source, f"missing={missing!r} must be 'error' or 'drop_genes'")
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise _fail(
            source, f"expression table is empty ({df.shape[0]} samples x {df.shape[1]} genes)"
        )
    df = df.copy()
    df.index = pd.Index([str(s).strip() for s in df.index], dtype=object)
    empty_ids = [i for i, s in enumerate(df.index) if s == "" or s.lower() == "nan"]
    if empty_ids:
        raise _fail(source, f"sample {empty_ids[0] + 1} has an empty id")
    dup = df.index[df.index.duplicated()]
    if len(dup):
        raise _fail(source, f"duplicated sample id {dup[0]!r}")
    genes = [normalise_symbol(g) for g in df.columns]
    bad_gene = [g for g in genes if g in ("", "NAN") or g.startswith("UNNAMED:")]
    if bad_gene:
        raise _fail(source, f"a gene column has an empty name ({bad_gene[0]!r})")
    df.columns = pd.Index(genes, dtype=object)
    values = _to_numeric(df, source)
    dropped: list[str] = []
    if missing == "drop_genes":
        nan_cols = np.isnan(values).any(axis=0)
        if nan_cols.any():
            dropped = sorted({str(g) for g in df.columns[nan_cols]})
            values, df = values[:, ~nan_cols], df.loc[:, ~nan_cols]
            if values.shape[1] == 0:
                raise _fail(source, "every gene has missing values")
    _check_finite(values, df, source)
    if counts:
        neg = np.argwhere(values < 0)
        if len(neg):
            r, c = neg[0]
            raise _fail(
                source,
                f"sample {df.index[r]!r} gene {df.columns[c]!r}: negative value {values[r, c]:g} "
                "in a table declared as counts",
            )
    out = pd.DataFrame(values, index=df.index, columns=df.columns)
    duplicated = sorted(set(out.columns[out.columns.duplicated()]))
    if duplicated:
        out = out.T.groupby(level=0, sort=False).mean().T
    out.index.name = "patient_id"
    out.columns.name = None
    return out.astype(np.float64), duplicated, dropped


def _to_numeric(df: pd.DataFrame, source: object) -> np.ndarray:
    """Cells as float64; error naming the first non-numeric, missing or infinite cell."""
    values = None
    if all(
        pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t) for t in df.dtypes
    ):
        values = df.to_numpy(dtype=np.float64)
    else:
        try:  # fast path: every cell is a number written as text
            values = df.to_numpy(dtype=object).astype(np.float64)
        except (ValueError, TypeError):
            values = None
    if values is None:
        cells = pd.Series(df.to_numpy(dtype=object).ravel(order="F"))
        num = pd.to_numeric(cells, errors="coerce")
        text = cells.astype(str).str.strip().str.lower()
        blank = cells.isna() | text.isin(["", "nan", "na", "n/a", "null", "none"])
        bad = np.flatnonzero((num.isna() & ~blank).to_numpy())
        if len(bad):
            j, i = divmod(int(bad[0]), df.shape[0])
            raise _fail(
                source,
                f"sample {df.index[i]!r} gene {df.columns[j]!r}: "
                f"non-numeric value {cells.iloc[bad[0]]!r}",
            )
        values = num.to_numpy(dtype=np.float64, na_value=np.nan).reshape(df.shape, order="F")
    return values


def _check_finite(values: np.ndarray, df: pd.DataFrame, source: object) -> None:
    nonfinite = np.argwhere(~np.isfinite(values))
    if len(nonfinite):
        r, c = nonfinite[0]
        what = "missing (NaN)" if np.isnan(values[r, c]) else "infinite"
        raise _fail(
            source,
            f"sample {df.index[r]!r} gene {df.columns[c]!r}: value is {what} "
            f"({len(nonfinite)} such cell(s) in the table)",
        )


def read_expression(
    path: str | Path,
    orientation: Orientation = "auto",
    id_column: str | None = None,
    counts: bool = False,
    sep: str | None = None,
    gene_column: str | None = None,
    missing: str = "error",
) -> ExpressionTable:
    """Read an expression table into samples x genes.

    ``id_column`` names the column holding sample ids (samples x genes) or gene ids
    (genes x samples); default: the first column. ``counts=True`` forbids negative values.
    ``gene_column`` (h5ad only) takes gene names from a ``var`` column instead of its index.
    ``missing="drop_genes"`` drops (and lists in ``dropped_genes``) genes with missing cells
    instead of raising; infinite values are always an error.
    """
    src = Path(path)
    if orientation not in ORIENTATIONS:
        raise _fail(src, f"orientation {orientation!r} is not one of {ORIENTATIONS}")
    if not src.is_file():
        raise _fail(src, "expression file not found")
    if src.name.lower().endswith(".h5ad"):
        if orientation == "genes_x_samples":
            raise _fail(src, "an .h5ad file is always samples (obs) x genes (var)")
        df = read_h5ad_frame(src, gene_column=gene_column)
    else:
        df = _read_frame(src, sep, id_column)
        if orientation == "auto":
            orientation = detect_orientation(df, src)  # type: ignore[assignment]
        if orientation == "genes_x_samples":
            df = df.T
    values, duplicated, dropped = tidy_values(df, src, counts=counts, missing=missing)
    return ExpressionTable(values, src, duplicated, dropped)
