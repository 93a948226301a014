"""Leave-one-cohort-out (LOCO) evaluation of expression models against fixed baselines.

For each cohort: models are fitted on the other cohorts only (normaliser included), then score the
held-out cohort's labelled samples; the baselines (:mod:`immunoplex.expression.signatures`) score exactly the
same samples. Unlabelled samples (label -1) are never scored or treated as non-responders (they
may be used, label-free, for a cohort's normalisation statistics).

AUROC and the stratified bootstrap are :mod:`immunoplex.evaluation.metrics`' (the package's one
implementation); ``bootstrap_auroc`` / ``paired_bootstrap_delta`` only shape their results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from immunoplex.data.splits import loco_splits
from immunoplex.errors import SplitError
from immunoplex.evaluation.metrics import auroc as auroc_rows
from immunoplex.evaluation.metrics import auroc_score as auroc
from immunoplex.evaluation.metrics import bootstrap_indices
from immunoplex.expression.signatures import SIGNATURES, score_signatures, zscore_within

POOLED = "pooled"


class ExpressionModel(Protocol):
    def fit(self, values: pd.DataFrame, labels: Any, cohorts: Any) -> Any: ...

    def predict_proba(self, values: pd.DataFrame, cohorts: Any) -> np.ndarray: ...


@dataclass(frozen=True)
class AurocCI:
    """AUROC with a percentile bootstrap confidence interval."""

    auroc: float
    low: float
    high: float
    n_pos: int
    n_neg: int

    def fmt(self, digits: int = 2) -> str:
        if np.isnan(self.auroc):
            return "n/a"
        return f"{self.auroc:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def bootstrap_auroc(
    y: Sequence[int] | np.ndarray,
    score: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> AurocCI:
    """AUROC and its (1 - alpha) percentile CI from a class-stratified bootstrap."""
    yb = np.asarray(y).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(yb.sum()), int((~yb).sum())
    point = auroc(yb, s)
    if np.isnan(point):
        return AurocCI(point, float("nan"), float("nan"), n_pos, n_neg)
    idx = bootstrap_indices(yb, n_boot, seed)
    boots = auroc_rows(yb[idx], s[idx])
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return AurocCI(point, float(lo), float(hi), n_pos, n_neg)


def paired_bootstrap_delta(
    y: Sequence[int] | np.ndarray,
    score_a: Sequence[float] | np.ndarray,
    score_b: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """AUROC(a) - AUROC(b) on the same samples, with a paired stratified bootstrap CI."""
    yb = np.asarray(y).astype(bool)
    a, b = np.asarray(score_a, dtype=np.float64), np.asarray(score_b, dtype=np.float64)
    point = auroc(yb, a) - auroc(yb, b)
    idx = bootstrap_indices(yb, n_boot, seed)
    d = auroc_rows(yb[idx], a[idx]) - auroc_rows(yb[idx], b[idx])
    lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    return float(point), float(lo), float(hi)


@dataclass
class LocoResult:
    """Held-out predictions in long form: patient_id, cohort, label, method, score."""

    predictions: pd.DataFrame
    methods: list[str]
    cohorts: list[str]
    info: dict[str, Any]


def run_loco(
    values: pd.DataFrame,
    labels: pd.Series,
    cohorts: pd.Series,
    models: dict[str, Callable[[], ExpressionModel]],
    baselines: Sequence[str] = tuple(SIGNATURES),
    log: Callable[[str], None] | None = None,
    extra_baselines: pd.DataFrame | None = None,
    after_fit: Callable[[str, str, Any, np.ndarray], None] | None = None,
) -> LocoResult:
    """Fit every model once per held-out cohort on the other cohorts; score baselines alike.

    ``values`` (samples x genes, log scale), ``labels`` (1/0/-1) and ``cohorts`` share one index.
    ``extra_baselines`` (samples x scores, same index): further label-free, untrained scores
    (e.g. rank-based signatures) treated exactly like the classic ones. ``after_fit(name,
    held_out, model, test_rows)`` is called with every fitted model (e.g. to score the held-out
    cohort again under other conditions).
    """
    if not (values.index.equals(labels.index) and values.index.equals(cohorts.index)):
        raise SplitError("values, labels and cohorts must share the same index")
    y = labels.astype(int).to_numpy()
    coh = cohorts.astype(str)
    base = score_signatures(values, coh, names=baselines)
    if extra_baselines is not None:
        if not extra_baselines.index.equals(values.index):
            raise SplitError("extra_baselines must share the index of values")
        base = pd.concat([base, extra_baselines.astype(np.float64)], axis=1)
    baselines = list(base.columns)
    # Pooling across cohorts: each baseline z-scored within its cohort (label-free, monotone
    # within a cohort so per-cohort AUROCs are unchanged).
    base = zscore_within(base, coh.to_numpy())
    rows: list[pd.DataFrame] = []
    info: dict[str, Any] = {}
    for held_out, train, test in loco_splits(coh):
        if set(coh.iloc[train]) & {held_out}:
            raise SplitError(f"held-out cohort {held_out!r} leaked into training")
        test_lab = test[y[test] >= 0]
        frame = pd.DataFrame(
            {
                "patient_id": values.index[test_lab],
                "cohort": held_out,
                "label": y[test_lab],
            }
        )
        for name in baselines:
            rows.append(frame.assign(method=name, score=base[name].to_numpy()[test_lab]))
        for name, factory in models.items():
            model = factory()
            model.fit(values.iloc[train], labels.iloc[train], coh.iloc[train])
            # The whole held-out cohort is passed (its own normalisation statistics); only the
            # labelled samples are scored.
            prob = np.asarray(model.predict_proba(values.iloc[test], coh.iloc[test]))
            if after_fit is not None:
                after_fit(name, held_out, model, test)
            pos = np.searchsorted(test, test_lab)
            rows.append(frame.assign(method=name, score=prob[pos]))
            info.setdefault(name, {})[held_out] = {
                k: getattr(model, k) for k in ("best_params", "inner_cv") if hasattr(model, k)
            }
            if log:
                log(f"{held_out}: {name} fitted on {len(train)} samples of other cohorts")
    preds = pd.concat(rows, ignore_index=True)
    methods = list(models) + list(baselines)
    return LocoResult(preds, methods, list(pd.unique(coh)), info)


def summarise(result: LocoResult, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """AUROC with CI per (method, held-out cohort) plus pooled and mean-over-cohorts rows."""
    out = []
    p = result.predictions
    for method in result.methods:
        pm = p[p["method"] == method]
        for cohort in [*result.cohorts, POOLED]:
            sub = pm if cohort == POOLED else pm[pm["cohort"] == cohort]
            ci = bootstrap_auroc(sub["label"], sub["score"], n_boot=n_boot, seed=seed)
            out.append(
                {"method": method, "cohort": cohort, "auroc": ci.auroc, "low": ci.low,
                 "high": ci.high, "n_pos": ci.n_pos, "n_neg": ci.n_neg, "ci": ci}
            )  # fmt: skip
    return pd.DataFrame(out)


def markdown_table(result: LocoResult, summary: pd.DataFrame) -> str:
    """Rows = held-out cohorts (+ pooled, mean), columns = methods; cells 'AUROC [95% CI]'."""
    header = "| held-out cohort | R / NR | " + " | ".join(result.methods) + " |"
    lines = [header, "|" + " --- |" * (len(result.methods) + 2)]
    for cohort in [*result.cohorts, POOLED]:
        sub = summary[summary["cohort"] == cohort].set_index("method")
        first = sub.iloc[0]
        name = "**pooled**" if cohort == POOLED else cohort
        cells = [sub.loc[m, "ci"].fmt() for m in result.methods]
        lines.append(
            f"| {name} | {first['n_pos']} / {first['n_neg']} | " + " | ".join(cells) + " |"
        )
    means = [
        summary[(summary["method"] == m) & (summary["cohort"] != POOLED)]["auroc"].mean()
        for m in result.methods
    ]
    lines.append("| mean over cohorts | | " + " | ".join(f"{v:.2f}" for v in means) + " |")
    return "\n".join(lines)


def comparison_table(result: LocoResult, reference: str, n_boot: int = 2000, seed: int = 0) -> str:
    """Pooled AUROC difference (reference - baseline) with a paired bootstrap 95% CI."""
    p = result.predictions
    ref = p[p["method"] == reference].set_index("patient_id")
    lines = [
        f"| pooled: {reference} minus | ΔAUROC [95% CI] |",
        "| --- | --- |",
    ]
    for method in result.methods:
        if method == reference:
            continue
        other = p[p["method"] == method].set_index("patient_id").loc[ref.index]
        d, lo, hi = paired_bootstrap_delta(
            ref["label"], ref["score"], other["score"], n_boot=n_boot, seed=seed
        )
        lines.append(f"| {method} | {d:+.2f} [{lo:+.2f}, {hi:+.2f}] |")
    return "\n".join(lines)


def mean_over_cohorts(summary: pd.DataFrame, method: str) -> float:
    rows = summary[(summary["method"] == method) & (summary["cohort"] != POOLED)]
    return float(rows["auroc"].mean())


def best_by_pooled(summary: pd.DataFrame, methods: Sequence[str]) -> str:
    """The method of ``methods`` with the highest pooled AUROC."""
    pooled = summary[summary["cohort"] == POOLED].set_index("method")["auroc"]
    return max(methods, key=lambda m: float(pooled[m]))


def paired_cohort_mean_delta(
    result: LocoResult, a: str, b: str, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean-over-cohorts AUROC(a) - AUROC(b), CI from resampling within each cohort (paired,
    class-stratified)."""
    p = result.predictions
    deltas, boots = [], []
    for k, cohort in enumerate(result.cohorts):
        sa = p[(p["method"] == a) & (p["cohort"] == cohort)].set_index("patient_id")
        sb = p[(p["method"] == b) & (p["cohort"] == cohort)].set_index("patient_id").loc[sa.index]
        yb = sa["label"].to_numpy().astype(bool)
        if yb.all() or not yb.any():
            continue
        va, vb = sa["score"].to_numpy(float), sb["score"].to_numpy(float)
        deltas.append(auroc(yb, va) - auroc(yb, vb))
        idx = bootstrap_indices(yb, n_boot, seed + k)
        boots.append(auroc_rows(yb[idx], va[idx]) - auroc_rows(yb[idx], vb[idx]))
    d = np.mean(boots, axis=0)
    lo, hi = np.quantile(d, [0.025, 0.975])
    return float(np.mean(deltas)), float(lo), float(hi)


def versus_table(
    result: LocoResult,
    summary: pd.DataFrame,
    models: Sequence[str],
    reference: str,
    n_boot: int = 2000,
    seed: int = 0,
) -> str:
    """Per model: pooled and mean-over-cohorts AUROC, and the paired-bootstrap differences
    (model - reference) with 95% CIs on exactly the same samples."""
    p = result.predictions
    ref = p[p["method"] == reference].set_index("patient_id")
    lines = [
        f"| model | pooled AUROC | mean over cohorts | pooled Δ vs {reference} [95% CI] "
        f"| mean-over-cohorts Δ vs {reference} [95% CI] |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m in models:
        other = p[p["method"] == m].set_index("patient_id").loc[ref.index]
        d, lo, hi = paired_bootstrap_delta(
            ref["label"], other["score"], ref["score"], n_boot=n_boot, seed=seed
        )
        md, mlo, mhi = paired_cohort_mean_delta(result, m, reference, n_boot=n_boot, seed=seed)
        pooled = summary[(summary["method"] == m) & (summary["cohort"] == POOLED)].iloc[0]["ci"]
        lines.append(
            f"| {m} | {pooled.fmt()} | {mean_over_cohorts(summary, m):.3f} | "
            f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}] | {md:+.3f} [{mlo:+.3f}, {mhi:+.3f}] |"
        )
    return "\n".join(lines)
