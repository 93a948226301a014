"""Classic expression baselines for immune-checkpoint-blockade response (no training).

Every score is oriented a priori: higher = more likely responder. Inputs are log-scale expression
(e.g. log2(TPM + c)); pass ``log=True`` for linear-scale TPM/counts to apply log2(x + 1) first.

- ``CD274``: PD-L1 mRNA (log expression).
- ``CD8A``: CD8 T-cell marker (log expression).
- ``CYT``: cytolytic activity, geometric mean of GZMA and PRF1 (Rooney et al., Cell 2015), computed
  as the mean of the log values (= log of the geometric mean).
- ``IFNG6``: the Ayers et al. 2017 (J Clin Invest) "preliminary" 6-gene IFN-γ signature
  (IFNG, STAT1, IDO1, CXCL9, CXCL10, HLA-DRA): arithmetic mean of log expression, as in the paper.
- ``TEFF``: CD8 T-effector signature of Mariathasan et al. 2018 (Nature 554:544), 8 genes
  (CD8A, CXCL9, CXCL10, GZMA, GZMB, IFNG, PRF1, TBX21): mean of per-gene z-scores, the z-scores
  taken within each cohort (label-free). The POPLAR version (Fehrenbacher et al., Lancet 2016)
  has EOMES instead of PRF1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from immunoplex.errors import ExpressionError


@dataclass(frozen=True)
class Signature:
    """A fixed-direction expression score: genes, how they are combined, and the source."""

    name: str
    genes: tuple[str, ...]
    combine: str  # "mean_log" (mean of log values) or "mean_z" (mean of within-cohort z-scores)
    source: str


SIGNATURES: dict[str, Signature] = {
    s.name: s
    for s in (
        Signature("CD274", ("CD274",), "mean_log", "PD-L1 (CD274) mRNA"),
        Signature("CD8A", ("CD8A",), "mean_log", "CD8A mRNA"),
        Signature("CYT", ("GZMA", "PRF1"), "mean_log", "Rooney et al., Cell 2015"),
        Signature(
            "IFNG6",
            ("IFNG", "STAT1", "IDO1", "CXCL9", "CXCL10", "HLA-DRA"),
            "mean_log",
            "Ayers et al., J Clin Invest 2017 (6-gene IFN-γ)",
        ),
        Signature(
            "TEFF",
            ("CD8A", "CXCL9", "CXCL10", "GZMA", "GZMB", "IFNG", "PRF1", "TBX21"),
            "mean_z",
            "Mariathasan et al., Nature 2018 (CD8 T-effector)",
        ),
    )
}


def _cohort_labels(values: pd.DataFrame, cohorts: pd.Series | Sequence[str] | None) -> np.ndarray:
    if cohorts is None:
        return np.zeros(len(values), dtype=object)
    if isinstance(cohorts, pd.Series):
        arr = (
            cohorts.reindex(values.index).to_numpy()
            if set(values.index) <= set(cohorts.index)
            else cohorts.to_numpy()
        )
    else:
        arr = np.asarray(list(cohorts), dtype=object)
    if len(arr) != len(values):
        raise ExpressionError(f"{len(arr)} cohort labels for {len(values)} samples")
    return arr


def zscore_within(x: pd.DataFrame, cohorts: np.ndarray) -> pd.DataFrame:
    """Per-column z-score computed separately within each cohort (constant columns -> 0)."""
    out = x.astype(np.float64).copy()
    for c in pd.unique(cohorts):
        rows = cohorts == c
        block = x.loc[rows]
        sd = block.std(ddof=0).replace(0.0, 1.0)
        out.loc[rows] = (block - block.mean()) / sd
    return out


def score_signature(
    values: pd.DataFrame,
    signature: str | Signature,
    cohorts: pd.Series | Sequence[str] | None = None,
    log: bool = False,
) -> pd.Series:
    """One score per sample (index of ``values``); errors if a signature gene is absent."""
    sig = SIGNATURES[signature] if isinstance(signature, str) else signature
    cols = {str(c).upper(): c for c in values.columns}
    missing = [g for g in sig.genes if g not in cols]
    if missing:
        raise ExpressionError(
            f"signature {sig.name}: gene(s) {missing} not in the expression table"
        )
    x = values[[cols[g] for g in sig.genes]].astype(np.float64)
    if log:
        if (x.to_numpy() < 0).any():
            raise ExpressionError(f"signature {sig.name}: log=True needs non-negative values")
        x = np.log2(x + 1.0)
    if sig.combine == "mean_z":
        x = zscore_within(x, _cohort_labels(values, cohorts))
    score = x.mean(axis=1)
    score.name = sig.name
    return score


def score_signatures(
    values: pd.DataFrame,
    cohorts: pd.Series | Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    log: bool = False,
) -> pd.DataFrame:
    """All (or the named) baseline scores as columns, one row per sample."""
    names = list(names) if names is not None else list(SIGNATURES)
    return pd.concat([score_signature(values, n, cohorts, log) for n in names], axis=1)
