"""Predict-time expression of a checkpoint trained with ``expression_norm=features``: the table's
genes become the checkpoint's within-sample features (:class:`ExpressionFeatures`), with the
per-feature coverage report written into every patient's result.

Partial gene coverage (documented in docs/expression_results.md, "Multimodal expression
branch"): nothing is ever mean-filled. When some of the model's features cannot be computed from
the new table's genes,

- by default the run is refused with one line naming the features (and the genes they need);
- with ``allow_missing_genes=true`` those patients' expression modality is marked missing: the
  model predicts from its other inputs (image, clinical), and each result reports
  ``expression_dropped`` and the features that were not computable. An expression-only model has
  no other input, so it is refused either way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from immunoplex.errors import ExpressionError
from immunoplex.expression.features import CoverageReport

log = logging.getLogger(__name__)


def _names(items: list[str], k: int = 10) -> str:
    return ", ".join(items[:k]) + (f" ... (+{len(items) - k})" if len(items) > k else "")


def feature_expression(
    pred: Any, values: pd.DataFrame, source: str | Path, allow_missing: bool
) -> tuple[dict[str, np.ndarray], CoverageReport, list[str]]:
    """({patient: (F,) features}, coverage report, patients whose expression was dropped)."""
    feats = pred.expression_features
    frame, report = feats.transform(values)
    missing = report.not_computable
    if missing:
        genes = sorted({g for f in report.features if not f.computable for g in f.missing})
        msg = (
            f"{source}: {len(missing)} of the model's {len(feats.names)} expression features "
            f"cannot be computed from this table's genes: {_names(missing)} "
            f"(missing genes: {_names(genes)})"
        )
        if "image" not in pred.modalities:
            raise ExpressionError(msg + "; an expression-only model has no other input")
        if not allow_missing:
            raise ExpressionError(
                msg + "; allow_missing_genes=true predicts these patients without expression "
                "(nothing is filled)"
            )
        log.warning("%s; expression is not used for these patients", msg)
        return {}, report, [str(i) for i in values.index]
    x = frame.to_numpy(dtype=np.float32)
    out: dict[str, np.ndarray] = {}
    dropped: list[str] = []
    for i, pid in enumerate(values.index):
        if np.isfinite(x[i]).all():
            out[str(pid)] = x[i]
        else:  # not reachable through read_expression (it refuses NaN); never filled
            dropped.append(str(pid))
    if dropped:
        raise ExpressionError(f"{source}: non-finite expression features for {dropped[:5]}")
    return out, report, dropped


def feature_fields(
    report: CoverageReport | None, dropped: list[str], patient_id: str
) -> dict[str, Any]:
    """The coverage columns of one patient's result (empty for a gene-level checkpoint)."""
    if report is None:
        return {}
    n = len(report.features)
    return {
        "genes_missing": report.universe_size - report.universe_present,
        "genes_filled": False,
        "expression_dropped": patient_id in set(dropped),
        "expression_features": f"{len(report.computable)}/{n}",
        "expression_features_missing": list(report.not_computable),
        "expression_coverage": report.summary(),
    }
