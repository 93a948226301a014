"""AUROC helpers used to report how much signal the synthetic truth carries."""

from __future__ import annotations

import numpy as np


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


def auroc(labels: np.ndarray, score: np.ndarray) -> float:
    """Ordinary AUROC of ``score`` against 0/1 ``labels`` (NaN when one class is absent)."""
    y = np.asarray(labels, dtype=np.float64)
    if y.size == 0 or y.min() == y.max():
        return float("nan")
    return expected_auroc(score, y)
