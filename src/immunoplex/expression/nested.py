"""Nested selection: which family (or signature) to use, chosen inside the training cohorts only.

Each :class:`~immunoplex.expression.transfer.TransferModel` already chooses its L2 penalty C by
leave-one-cohort-out (LOCO) over its training cohorts and keeps the inner held-out logits at the
chosen C (``inner_logit``). Choosing the family by the same inner criterion (mean of the inner
pooled AUROC and the inner mean-over-cohorts AUROC) is then the nested choice of (family, C) over
one joint grid: nothing of the outer held-out cohort enters it. An ensemble's inner score is that
of the mean of its members' inner held-out probabilities.

For signatures (no training) the same criterion is taken over the training cohorts' samples,
with the scores z-scored within their cohort (label-free) for the pooled part.

:func:`add_nested` / :func:`add_nested_signature` add such a row to a
:class:`~immunoplex.evaluation.loco.LocoResult`: per held-out cohort, the held-out scores of the
family (signature) chosen on the other cohorts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from immunoplex.errors import ExpressionError
from immunoplex.expression.transfer import TransferEnsemble, TransferModel
from immunoplex.expression.transfer import _auroc as auroc_score

if TYPE_CHECKING:  # evaluation imports expression, not the other way round
    from immunoplex.evaluation.loco import LocoResult


def inner_criterion(y: np.ndarray, cohorts: np.ndarray, score: np.ndarray) -> float:
    """Mean of the pooled AUROC and the mean per-cohort AUROC (cohorts with both classes);
    rows with a NaN score are left out; NaN when nothing can be scored."""
    y, cohorts, score = np.asarray(y), np.asarray(cohorts), np.asarray(score, dtype=np.float64)
    ok = np.isfinite(score) & (y >= 0)
    y, cohorts, score = y[ok].astype(bool), cohorts[ok], score[ok]
    if y.all() or not y.any():
        return float("nan")
    per = [
        auroc_score(y[cohorts == c], score[cohorts == c])
        for c in pd.unique(cohorts)
        if 0 < y[cohorts == c].sum() < (cohorts == c).sum()
    ]
    if not per:
        return float("nan")
    return 0.5 * (float(np.mean(per)) + float(auroc_score(y, score)))


def inner_prediction(model: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, cohorts, inner held-out probability) over a fitted model's training samples."""
    if isinstance(model, TransferEnsemble) and model.mode == "first":
        return inner_prediction(model.members[0])  # the member that scores a full table
    if isinstance(model, TransferEnsemble):
        parts = [inner_prediction(m) for m in model.members]
        y, coh = parts[0][0], parts[0][1]
        if any(len(p[0]) != len(y) or not np.array_equal(p[0], y) for p in parts):
            raise ExpressionError("ensemble members were fitted on different samples")
        return y, coh, np.mean([p[2] for p in parts], axis=0)
    if not isinstance(model, TransferModel) or model.train_y is None:
        raise ExpressionError(f"no inner LOCO scores for {type(model).__name__}")
    y = np.asarray(model.train_y)
    if model.inner_logit is None:  # no inner selection was possible
        return y, np.asarray(model.train_cohorts), np.full(len(y), np.nan)
    return y, np.asarray(model.train_cohorts), 1.0 / (1.0 + np.exp(-model.inner_logit))


def select_family(models: Mapping[str, Any]) -> tuple[str, dict[str, float]]:
    """The candidate with the best inner criterion (ties and NaN: the earlier one) and every
    candidate's inner score. Uses the models' training samples only."""
    if not models:
        raise ExpressionError("nested selection needs at least one candidate")
    scores = {name: inner_criterion(*inner_prediction(m)) for name, m in models.items()}
    best, best_val = next(iter(models)), -np.inf
    for name, v in scores.items():
        if np.isfinite(v) and v > best_val + 1e-12:
            best, best_val = name, v
    return best, scores


def select_signature(
    frame: pd.DataFrame, signatures: Sequence[str]
) -> tuple[str, dict[str, float]]:
    """The signature with the best inner criterion on ``frame`` (long form: patient_id, cohort,
    label, method, score; scores already z-scored within their cohort) and every score."""
    scores = {}
    for name in signatures:
        sub = frame[frame["method"] == name]
        scores[name] = inner_criterion(
            sub["label"].to_numpy(), sub["cohort"].to_numpy(), sub["score"].to_numpy()
        )
    best, best_val = signatures[0], -np.inf
    for name, v in scores.items():
        if np.isfinite(v) and v > best_val + 1e-12:
            best, best_val = name, v
    return best, scores


def _copy_rows(result: LocoResult, held_out: str, source: str, name: str) -> pd.DataFrame:
    p = result.predictions
    rows = p[(p["method"] == source) & (p["cohort"] == held_out)].copy()
    rows["method"] = name
    return rows


def _append(result: LocoResult, rows: list[pd.DataFrame], name: str, after: str | None) -> None:
    result.predictions = pd.concat([result.predictions, *rows], ignore_index=True)
    methods = [m for m in result.methods if m != name]
    at = methods.index(after) + 1 if after in methods else len(methods)
    result.methods = [*methods[:at], name, *methods[at:]]


def add_nested(
    result: LocoResult,
    candidates: Sequence[str],
    fold_model: Callable[[str, str], Any],
    name: str = "nested",
    after: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Add row ``name``: per held-out cohort, the held-out scores of the candidate family whose
    fold model (``fold_model(family, held_out)``, fitted on the other cohorts) has the best inner
    LOCO criterion. Returns (and stores in ``result.info[name]``) the choice per cohort."""
    rows, info = [], {}
    for held_out in result.cohorts:
        choice, scores = select_family({c: fold_model(c, held_out) for c in candidates})
        info[held_out] = {"chosen": choice, "inner": scores}
        rows.append(_copy_rows(result, held_out, choice, name))
    _append(result, rows, name, after)
    result.info[name] = info
    return info


def add_nested_signature(
    result: LocoResult,
    signatures: Sequence[str],
    name: str = "nested signature",
    after: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Add row ``name``: per held-out cohort, the held-out scores of the signature with the best
    inner criterion over the other cohorts' samples."""
    p = result.predictions
    rows, info = [], {}
    for held_out in result.cohorts:
        train = p[(p["cohort"] != held_out) & p["method"].isin(signatures)]
        choice, scores = select_signature(train, list(signatures))
        info[held_out] = {"chosen": choice, "inner": scores}
        rows.append(_copy_rows(result, held_out, choice, name))
    _append(result, rows, name, after)
    result.info[name] = info
    return info
