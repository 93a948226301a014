"""The one reader for manifests and other small tables: CSV, TSV (``.tsv``/``.txt``), Parquet.

Text tables may be gzipped (``.csv.gz``, ``.tsv.gz``). Every cell comes back as a string (empty
cells as ``""``, Parquet nulls too) so that validation, not the reader, decides what a value means;
a missing, empty or unreadable file is one :class:`ManifestError` line naming the file and reason,
and so are a repeated column name and a row with fewer or more fields than the header (named by
its line: ``<file>:<row>: short row: 3 field(s), the header has 8``).
Expression matrices have their own reader (:mod:`immunoplex.expression.io`).
"""

from __future__ import annotations

import csv
import gzip
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from immunoplex.errors import ImmunoplexError, ManifestError

MISSING_TEXT = frozenset({"", "nan", "na", "n/a", "null", "none"})  # cells that mean "no value"
TEXT_SEPARATORS = {".csv": ",", ".tsv": "\t", ".txt": "\t"}
TABLE_SUFFIXES = (*TEXT_SEPARATORS, ".parquet")


def table_format(path: str | os.PathLike[str]) -> str:
    """``".csv"``, ``".tsv"``, ``".txt"`` or ``".parquet"`` (a ``.gz`` is looked through); other
    names are read as CSV."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    return last if last in TABLE_SUFFIXES else ".csv"


def _reason(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def _check_duplicated(path: Path, what: str, names: Sequence[str], error: type) -> None:
    counts = Counter(str(n) for n in names)
    dup = [n for n, k in counts.items() if k > 1]
    if dup:
        where = [i + 1 for i, n in enumerate(names) if str(n) == dup[0]]
        raise error(
            f"{path}:1: duplicated column {dup[0]!r} in the {what} header (columns {where}); "
            "rename or remove one"
        )


def _check_text_rows(
    path: Path, fmt: str, what: str, nrows: int | None, error: type[ImmunoplexError]
) -> None:
    """The header has no repeated name and every record has as many fields as the header.

    pandas renames a repeated header ``label.1`` and pads a short row with empty cells; both would
    be silent. Rows are numbered by line as a spreadsheet shows them (header = 1)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh, delimiter=TEXT_SEPARATORS[fmt])
        header: list[str] | None = None
        seen = 0
        for record in reader:
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # blank line (pandas skips them too)
            if header is None:
                header = record
                _check_duplicated(path, what, header, error)
                if nrows == 0:
                    return
                continue
            if len(record) != len(header):
                kind = "short" if len(record) < len(header) else "long"
                raise error(
                    f"{path}:{reader.line_num}: {kind} row: {len(record)} field(s), the header "
                    f"has {len(header)}"
                )
            seen += 1
            if nrows is not None and seen >= nrows:
                return


def read_table(
    path: str | os.PathLike[str],
    what: str = "table",
    columns: Sequence[str] | None = None,
    nrows: int | None = None,
    error: type[ImmunoplexError] = ManifestError,
) -> pd.DataFrame:
    """Read a CSV/TSV/Parquet table with every cell as a string.

    ``what`` names the table in errors (``"manifest"``, ``"clinical table"``...); ``columns``
    keeps only those (all must exist); ``nrows=0`` reads just the header. Errors are ``error``
    (a :class:`ManifestError` unless given): ``<path>: <what> not found`` or
    ``<path>: cannot read <what> (<reason>)``.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    fmt = table_format(path)
    if fmt != ".parquet":
        try:
            _check_text_rows(path, fmt, what, nrows, error)
        except (OSError, csv.Error, EOFError) as err:
            raise error(f"{path}: cannot read {what} ({_reason(err)})") from None
    try:
        if fmt == ".parquet":
            import pyarrow.parquet as pq

            _check_duplicated(path, what, pq.read_schema(path).names, error)

            if nrows == 0:
                names = pq.read_schema(path).names
                df = pd.DataFrame({n: pd.Series(dtype=str) for n in names})
            else:
                df = pd.read_parquet(path, columns=list(columns) if columns else None)
                if nrows is not None:
                    df = df.head(nrows)
            df = df.astype(object).where(df.notna(), "").astype(str)
        else:
            df = pd.read_csv(
                path,
                sep=TEXT_SEPARATORS[fmt],
                dtype=str,
                keep_default_na=False,
                usecols=list(columns) if columns else None,
                nrows=nrows,
            )
    except pd.errors.EmptyDataError:
        raise error(f"{path}: cannot read {what} (the file is empty: no header row)") from None
    except (MemoryError, KeyboardInterrupt, ImmunoplexError):
        raise
    except Exception as err:  # noqa: BLE001 - parsers raise many types (ArrowInvalid, OSError...)
        raise error(f"{path}: cannot read {what} ({_reason(err)})") from None
    df.columns = [str(c) for c in df.columns]
    return df


def table_columns(path: str | os.PathLike[str], what: str = "table") -> list[str]:
    """The header of a table (no rows read)."""
    return list(read_table(path, what=what, nrows=0).columns)
