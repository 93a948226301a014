"""Scoring a segmentation against a reference: instance matching at an IoU threshold, and
centre matching within a distance (for truth given as points)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MatchScore:
    """Instance detection counts and their F1 (precision, recall)."""

    true_positives: int
    n_predicted: int
    n_reference: int

    @property
    def precision(self) -> float:
        return self.true_positives / self.n_predicted if self.n_predicted else 0.0

    @property
    def recall(self) -> float:
        return self.true_positives / self.n_reference if self.n_reference else 0.0

    @property
    def f1(self) -> float:
        n = self.n_predicted + self.n_reference
        return 2.0 * self.true_positives / n if n else 1.0


def match_masks(predicted: np.ndarray, reference: np.ndarray, iou: float = 0.5) -> MatchScore:
    """Objects of two label images matched one-to-one when their IoU exceeds ``iou`` (>= 0.5
    makes the matching unique without an assignment step)."""
    if predicted.shape != reference.shape:
        raise ValueError(f"shapes differ: {predicted.shape} vs {reference.shape}")
    if iou < 0.5:
        raise ValueError("iou must be >= 0.5 for a unique matching")
    p = np.unique(predicted, return_inverse=True)[1].reshape(-1)
    r = np.unique(reference, return_inverse=True)[1].reshape(-1)
    p_has0, r_has0 = (predicted == 0).any(), (reference == 0).any()
    p_ids = p - int(p_has0)  # -1 = background
    r_ids = r - int(r_has0)
    n_p, n_r = int(p_ids.max()) + 1, int(r_ids.max()) + 1
    a_p = np.bincount(p_ids[p_ids >= 0], minlength=n_p)
    a_r = np.bincount(r_ids[r_ids >= 0], minlength=n_r)
    both = (p_ids >= 0) & (r_ids >= 0)
    pair = p_ids[both].astype(np.int64) * max(n_r, 1) + r_ids[both]
    keys, inter = np.unique(pair, return_counts=True)
    pi, ri = keys // max(n_r, 1), keys % max(n_r, 1)
    ious = inter / (a_p[pi] + a_r[ri] - inter)
    tp = int(np.count_nonzero(ious > iou))
    return MatchScore(tp, max(n_p, 0), max(n_r, 0))


def match_points(
    predicted: np.ndarray, reference: np.ndarray, max_distance: float
) -> tuple[MatchScore, np.ndarray]:
    """Greedy one-to-one matching of (N, 2) points, closest pairs first, within ``max_distance``.

    Returns the score and, per reference point, the index of its predicted match (-1 = none).
    """
    from scipy.spatial import cKDTree

    pred = np.asarray(predicted, float).reshape(-1, 2)
    ref = np.asarray(reference, float).reshape(-1, 2)
    match = np.full(len(ref), -1, np.int64)
    if len(pred) == 0 or len(ref) == 0:
        return MatchScore(0, len(pred), len(ref)), match
    pairs = cKDTree(ref).sparse_distance_matrix(cKDTree(pred), max_distance, output_type="ndarray")
    used = np.zeros(len(pred), bool)
    for k in np.argsort(pairs["v"], kind="stable"):
        i, j = int(pairs["i"][k]), int(pairs["j"][k])
        if match[i] < 0 and not used[j]:
            match[i], used[j] = j, True
    return MatchScore(int(np.count_nonzero(match >= 0)), len(pred), len(ref)), match
