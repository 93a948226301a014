"""Binary response metrics with stratified percentile-bootstrap confidence intervals: the one
AUROC and the one bootstrap of the package (torchmetrics logs during training only).

Every metric takes ``y`` (0/1) and ``p`` (probability of response) as 2-D arrays ``(B, n)`` and
returns ``(B,)``, so the point estimate (B = 1) and all bootstrap replicates share one code path
and the bootstrap is vectorised. ``compute_metrics`` is the entry point on 1-D arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

EPS = float(np.finfo(np.float64).eps)
DEFAULT_ECE_BINS = 15

METRIC_LABELS: dict[str, str] = {
    "auroc": "AUROC",
    "auprc": "AUPRC",
    "balanced_accuracy": "Balanced accuracy",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "brier": "Brier score",
    "ece": "ECE",
    "log_loss": "Log-loss",
}
# Metrics that need both classes present.
NEEDS_BOTH = {"auroc", "auprc", "balanced_accuracy"}


def _rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[None, :] if a.ndim == 1 else a


def auroc(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties)."""
    y, p = _rows(y), _rows(p)
    n1 = y.sum(axis=1)
    n0 = y.shape[1] - n1
    ranks = rankdata(p, axis=1)
    r1 = (ranks * y).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (r1 - n1 * (n1 + 1) / 2) / (n1 * n0)


def auroc_score(y: np.ndarray, score: np.ndarray) -> float:
    """AUROC of one 1-D ``score`` against 0/1 ``y`` (ties count half); NaN without both classes."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if y.size == 0 or y.min() == y.max():
        return float("nan")
    return float(auroc(y, np.asarray(score, dtype=np.float64).reshape(-1))[0])


def expected_auroc(score: np.ndarray, p_positive: np.ndarray) -> float:
    """AUROC of ``score`` when case i is positive with probability ``p_positive[i]``.

    With 0/1 labels as ``p_positive`` this is the ordinary AUROC (ties count one half); with true
    probabilities it is the AUROC expected over label draws (ratio of expected pair counts), which
    removes the label sampling noise from oracle comparisons. NaN when there are no pairs.
    """
    s = np.asarray(score, dtype=np.float64)
    p = np.asarray(p_positive, dtype=np.float64)
    if s.shape != p.shape or s.ndim != 1:
        raise ValueError("score and p_positive must be 1-D arrays of the same length")
    q = 1.0 - p
    uniq, inv = np.unique(s, return_inverse=True)
    neg_in_group = np.bincount(inv, weights=q, minlength=len(uniq))
    neg_below = np.cumsum(neg_in_group) - neg_in_group
    numerator = np.sum(p * (neg_below[inv] + 0.5 * (neg_in_group[inv] - q)))
    denominator = p.sum() * q.sum() - np.sum(p * q)
    if denominator <= 0:
        return float("nan")
    return float(numerator / denominator)


def auprc(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Average precision (step-wise area under the precision-recall curve, ties grouped).

    Same definition as ``sklearn.metrics.average_precision_score``.
    """
    y, p = _rows(y), _rows(p)
    order = np.argsort(-p, axis=1, kind="stable")
    ps = np.take_along_axis(p, order, axis=1)
    ys = np.take_along_axis(y, order, axis=1)
    tp = np.cumsum(ys, axis=1)
    k = np.arange(1, y.shape[1] + 1)[None, :]
    precision = tp / k
    # a threshold is "closed" at the last element of each group of tied scores
    is_end = np.ones_like(ps, dtype=bool)
    is_end[:, :-1] = ps[:, :-1] != ps[:, 1:]
    tp_end = np.where(is_end, tp, 0.0)
    prev_end = np.zeros_like(tp)
    prev_end[:, 1:] = np.maximum.accumulate(tp_end, axis=1)[:, :-1]
    gain = np.where(is_end, tp - prev_end, 0.0)
    n1 = y.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (gain * precision).sum(axis=1) / n1


def _confusion(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[np.ndarray, ...]:
    pred = p >= threshold
    pos = y == 1
    tp = (pred & pos).sum(axis=1)
    fn = (~pred & pos).sum(axis=1)
    tn = (~pred & ~pos).sum(axis=1)
    fp = (pred & ~pos).sum(axis=1)
    return tp, fp, tn, fn


def sensitivity(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """True-positive rate of ``p >= threshold`` (NaN without responders)."""
    tp, _, _, fn = _confusion(_rows(y), _rows(p), threshold)
    with np.errstate(invalid="ignore", divide="ignore"):
        return tp / (tp + fn)


def specificity(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """True-negative rate of ``p >= threshold`` (NaN without non-responders)."""
    _, fp, tn, _ = _confusion(_rows(y), _rows(p), threshold)
    with np.errstate(invalid="ignore", divide="ignore"):
        return tn / (tn + fp)


def balanced_accuracy(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Mean of sensitivity and specificity."""
    return (sensitivity(y, p, threshold) + specificity(y, p, threshold)) / 2


def brier(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Mean squared error between probability and outcome."""
    y, p = _rows(y), _rows(p)
    return ((p - y) ** 2).mean(axis=1)


def log_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Mean negative log-likelihood; probabilities clipped to [eps, 1 - eps] (float64 eps)."""
    y, p = _rows(y), np.clip(_rows(p), EPS, 1 - EPS)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p)).mean(axis=1)


def ece_bin_index(p: np.ndarray, n_bins: int = DEFAULT_ECE_BINS) -> np.ndarray:
    """Equal-width bin of each probability: [0, 1/k), [1/k, 2/k), ..., [(k-1)/k, 1]."""
    return np.minimum((np.asarray(p) * n_bins).astype(np.int64), n_bins - 1)


def ece(y: np.ndarray, p: np.ndarray, n_bins: int = DEFAULT_ECE_BINS) -> np.ndarray:
    """Expected calibration error of p(responder): sum_b (n_b / n) |mean(y)_b - mean(p)_b|.

    Equal-width bins over [0, 1] (``n_bins``, 15 by default); empty bins contribute nothing.
    """
    y, p = _rows(y), _rows(p)
    b, n = y.shape
    idx = ece_bin_index(p, n_bins) + (np.arange(b) * n_bins)[:, None]
    size = b * n_bins
    sum_p = np.bincount(idx.ravel(), weights=p.ravel(), minlength=size).reshape(b, n_bins)
    sum_y = np.bincount(idx.ravel(), weights=y.ravel(), minlength=size).reshape(b, n_bins)
    return np.abs(sum_y - sum_p).sum(axis=1) / n


def reliability_bins(y: np.ndarray, p: np.ndarray, n_bins: int = DEFAULT_ECE_BINS) -> dict:
    """Per-bin counts, mean probability and observed response rate (for the diagram)."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    idx = ece_bin_index(p, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, weights=p, minlength=n_bins) / count
        frac_pos = np.bincount(idx, weights=y, minlength=n_bins) / count
    edges = np.linspace(0, 1, n_bins + 1)
    return {"edges": edges, "count": count, "mean_p": mean_p, "frac_pos": frac_pos}


def net_benefit(y: np.ndarray, p: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Decision-curve net benefit TP/n - FP/n * pt/(1-pt) of treating when ``p >= pt``."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    pt = np.asarray(thresholds, dtype=np.float64)
    n = y.size
    treat = p[None, :] >= pt[:, None]
    tp = (treat & (y[None, :] == 1)).sum(axis=1) / n
    fp = (treat & (y[None, :] == 0)).sum(axis=1) / n
    return tp - fp * pt / (1 - pt)


def net_benefit_treat_all(prevalence: float, thresholds: np.ndarray) -> np.ndarray:
    """Net benefit of treating everyone: prevalence - (1 - prevalence) * pt / (1 - pt)."""
    pt = np.asarray(thresholds, dtype=np.float64)
    return prevalence - (1 - prevalence) * pt / (1 - pt)


def metric_functions(
    threshold: float = 0.5, ece_bins: int = DEFAULT_ECE_BINS
) -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """Name -> vectorised metric, with the decision threshold and ECE bins bound."""
    return {
        "auroc": auroc,
        "auprc": auprc,
        "balanced_accuracy": lambda y, p: balanced_accuracy(y, p, threshold),
        "sensitivity": lambda y, p: sensitivity(y, p, threshold),
        "specificity": lambda y, p: specificity(y, p, threshold),
        "brier": brier,
        "ece": lambda y, p: ece(y, p, ece_bins),
        "log_loss": log_loss,
    }


def bootstrap_indices(
    y: np.ndarray, n_boot: int, seed: int | np.random.Generator = 0, stratified: bool = True
) -> np.ndarray:
    """``(n_boot, n)`` resampling indices; stratified keeps the class counts of ``y`` fixed."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    y = np.asarray(y)
    n = y.size
    if not stratified:
        return rng.integers(0, n, size=(n_boot, n))
    parts = []
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        parts.append(members[rng.integers(0, members.size, size=(n_boot, members.size))])
    return np.concatenate(parts, axis=1)


@dataclass
class Estimate:
    """A metric value with its percentile-bootstrap confidence interval."""

    estimate: float | None
    ci_low: float | None = None
    ci_high: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {"estimate": self.estimate, "ci_low": self.ci_low, "ci_high": self.ci_high}


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def percentile_ci(values: np.ndarray, level: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile interval of the finite bootstrap replicates."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None, None
    lo, hi = np.percentile(v, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def compute_metrics(
    y: np.ndarray,
    p: np.ndarray,
    threshold: float = 0.5,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    ece_bins: int = DEFAULT_ECE_BINS,
    chunk: int = 500,
) -> dict[str, Estimate]:
    """All metrics with stratified percentile-bootstrap CIs over patients (labelled rows only).

    Metrics that are undefined for the data (e.g. AUROC with one class) have estimate None.
    ``n_boot=0`` gives point estimates only.
    """
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    fns = metric_functions(threshold, ece_bins)
    point = {k: _finite(float(f(y, p)[0])) if y.size else None for k, f in fns.items()}
    reps: dict[str, list[np.ndarray]] = {k: [] for k in fns}
    if n_boot > 0 and y.size > 1:
        rng = np.random.default_rng(seed)
        done = 0
        while done < n_boot:  # chunks bound memory for large cohorts
            b = min(chunk, n_boot - done)
            idx = bootstrap_indices(y, b, rng)
            yb, pb = y[idx], p[idx]
            for k, f in fns.items():
                if point[k] is not None:
                    reps[k].append(f(yb, pb))
            done += b
    out = {}
    for k in fns:
        lo, hi = percentile_ci(np.concatenate(reps[k])) if reps[k] else (None, None)
        out[k] = Estimate(point[k], lo, hi)
    return out


def bootstrap_replicates(
    y: np.ndarray,
    p: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], np.ndarray],
    n_boot: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """Stratified bootstrap replicates ``(n_boot,)`` of one metric."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    idx = bootstrap_indices(y, n_boot, seed)
    return metric(y[idx], p[idx])
