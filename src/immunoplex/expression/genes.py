"""Gene identifiers across cohorts: symbol normalisation, reindexing a table to a model's genes
(with an explicit report of what is missing), and the genes cohorts share."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from immunoplex.errors import ExpressionError

_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")


@dataclass
class GeneReport:
    """What harmonise_genes did: genes requested, found, missing (and whether they were filled)."""

    requested: int
    present: list[str]
    missing: list[str]
    dropped: list[str]
    filled: bool = False

    def summary(self) -> str:
        action = "filled with training means" if self.filled else "absent"
        head = ", ".join(self.missing[:10]) + (" ..." if len(self.missing) > 10 else "")
        return (
            f"{len(self.present)}/{self.requested} genes present; {len(self.missing)} missing "
            f"({action}){': ' + head if self.missing else ''}; {len(self.dropped)} extra dropped"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "requested": self.requested,
            "present": list(self.present),
            "missing": list(self.missing),
            "dropped": list(self.dropped),
            "filled": self.filled,
        }


def _fail(source: object, msg: str) -> ExpressionError:
    return ExpressionError(f"{source}: {msg}")


def normalise_symbol(name: object) -> str:
    """Gene identifier as compared across cohorts: stripped, upper-case, Ensembl version dropped."""
    text = str(name).strip().upper()
    if _ENSEMBL.match(text):
        text = text.split(".")[0]
    return text


def harmonise_genes(
    values: pd.DataFrame,
    genes: Sequence[str],
    allow_missing: bool = False,
    fill_values: Mapping[str, float] | pd.Series | None = None,
    source: object = "expression table",
) -> tuple[pd.DataFrame, GeneReport]:
    """Reindex ``values`` (samples x genes) to ``genes`` in that order.

    Missing genes are an error unless ``allow_missing=True``, in which case each is filled with
    ``fill_values[gene]`` (the per-gene training mean stored by the model) and reported. Nothing
    is ever imputed silently.
    """
    wanted = [normalise_symbol(g) for g in genes]
    if len(set(wanted)) != len(wanted):
        dup = pd.Index(wanted)[pd.Index(wanted).duplicated()][0]
        raise _fail(source, f"gene list has duplicated gene {dup!r}")
    frame = values.copy()
    frame.columns = pd.Index([normalise_symbol(c) for c in frame.columns], dtype=object)
    if frame.columns.duplicated().any():
        frame = frame.T.groupby(level=0, sort=False).mean().T
    have = set(frame.columns)
    missing = [g for g in wanted if g not in have]
    present = [g for g in wanted if g in have]
    wanted_set = set(wanted)
    dropped = [g for g in frame.columns if g not in wanted_set]
    report = GeneReport(len(wanted), present, missing, dropped, filled=False)
    if missing and not allow_missing:
        raise _fail(source, f"{len(missing)} required gene(s) missing: {report.summary()}")
    out = frame.reindex(columns=wanted)
    if missing:
        if fill_values is None:
            raise _fail(source, "allow_missing=True needs fill_values (per-gene training means)")
        fills = dict(fill_values.items()) if isinstance(fill_values, pd.Series) else fill_values
        lacking = [g for g in missing if g not in fills]
        if lacking:
            raise _fail(source, f"no fill value for missing gene {lacking[0]!r}")
        for g in missing:
            out[g] = float(fills[g])
        report.filled = True
    return out.astype(np.float64), report


def intersect_genes(tables: Mapping[str, pd.DataFrame]) -> tuple[list[str], dict[str, list[str]]]:
    """Genes shared by every table (order of the first table) and, per table, the genes it lacks
    from the union (so the loss caused by intersecting is explicit)."""
    if not tables:
        return [], {}
    cols = {k: [normalise_symbol(c) for c in v.columns] for k, v in tables.items()}
    union: dict[str, None] = {}
    for c in cols.values():
        union.update(dict.fromkeys(c))
    common = set.intersection(*(set(c) for c in cols.values()))
    first = next(iter(cols.values()))
    shared = [g for g in first if g in common]
    missing = {k: [g for g in union if g not in set(c)] for k, c in cols.items()}
    return shared, missing
