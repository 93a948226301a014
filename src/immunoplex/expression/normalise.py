"""Per-cohort / per-sample expression normalisation, stored in checkpoints (to_dict/from_dict).

Methods (all applied after an optional ``log2(x + 1)`` for count/TPM-scale input):

- ``zscore_cohort``: per gene, z-score within each cohort using that cohort's own mean/std.
  Cohorts seen at fit keep the statistics of their training samples (so validation patients of a
  training cohort are never used to normalise themselves). A cohort unseen at fit (a new cohort at
  inference, or the held-out cohort in leave-one-cohort-out) is z-scored by the statistics of the
  samples passed to ``transform`` (labels are never used). That needs at least ``min_cohort_size``
  samples (default 3): fewer is an error unless ``small_cohort="global"``, which then uses the
  pooled training statistics stored at fit (documented fallback, weaker across platforms).
- ``zscore``: per gene, one z-score with the pooled training statistics.
- ``rank``: within each sample, genes ranked (ties averaged) and scaled to zero mean/unit variance.
- ``quantile``: within each sample, values mapped onto the training reference distribution (mean
  of sorted training samples; classic quantile normalisation), then z-scored per gene with the
  training statistics of the quantile-normalised data.
- ``none``: values passed through.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from immunoplex.errors import CheckpointError, ConfigError, ExpressionError

NORMALIZATION_METHODS = ("zscore_cohort", "zscore", "rank", "quantile", "none")
LOG_TRANSFORMS = ("none", "log2p1")
ALL_COHORT = "__all__"
_EPS = 1e-8
_VERSION = 1


def _std(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=0, ddof=0)
    return np.where(sd > _EPS, sd, 1.0)


def _within_sample_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..G along genes for each sample, ties averaged."""
    from scipy.stats import rankdata

    return rankdata(x, axis=1, method="average")


class ExpressionNormalizer:
    """Fit on training samples only; transform any cohort; round-trips through to_dict()."""

    def __init__(
        self,
        method: str = "zscore_cohort",
        log: str = "none",
        min_cohort_size: int = 3,
        small_cohort: str = "error",
    ) -> None:
        if method not in NORMALIZATION_METHODS:
            raise ConfigError(f"expression normalisation {method!r} not in {NORMALIZATION_METHODS}")
        if log not in LOG_TRANSFORMS:
            raise ConfigError(f"expression log transform {log!r} not in {LOG_TRANSFORMS}")
        if small_cohort not in ("error", "global"):
            raise ConfigError(f"small_cohort {small_cohort!r} must be 'error' or 'global'")
        if min_cohort_size < 2:
            raise ConfigError(f"min_cohort_size must be >= 2, got {min_cohort_size}")
        self.method = method
        self.log = log
        self.min_cohort_size = int(min_cohort_size)
        self.small_cohort = small_cohort
        self.genes: list[str] = []
        self.fill_mean: np.ndarray | None = None  # raw-scale gene means (for allow_missing)
        self.mean: np.ndarray | None = None  # pooled stats on the (logged/quantiled) scale
        self.std: np.ndarray | None = None
        self.cohort_stats: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
        self.reference: np.ndarray | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ExpressionNormalizer:
        """Build from a config mapping (configs/expression_norm/*.yaml)."""
        keys = {"method", "log", "min_cohort_size", "small_cohort"}
        extra = set(cfg) - keys - {"name", "description"}
        if extra:
            raise ConfigError(f"unknown expression normalisation option(s) {sorted(extra)}")
        return cls(**{k: cfg[k] for k in keys if k in cfg})

    @property
    def fitted(self) -> bool:
        return self.mean is not None

    # ------------------------------------------------------------------ fit / transform
    def _log(self, x: np.ndarray) -> np.ndarray:
        if self.log == "log2p1":
            if (x < 0).any():
                raise ExpressionError("log2p1 normalisation needs non-negative values")
            return np.log2(x + 1.0)
        return x

    def _quantile(self, x: np.ndarray) -> np.ndarray:
        assert self.reference is not None
        ranks = _within_sample_ranks(x) - 1.0
        grid = np.arange(len(self.reference), dtype=np.float64)
        return np.stack([np.interp(r, grid, self.reference) for r in ranks])

    def fit(
        self, df: pd.DataFrame, cohorts: pd.Series | Sequence[str] | None = None
    ) -> ExpressionNormalizer:
        """Learn gene order and statistics from training samples (samples x genes)."""
        if df.shape[0] == 0 or df.shape[1] == 0:
            raise ExpressionError("cannot fit expression normalisation on an empty table")
        self.genes = [str(g) for g in df.columns]
        raw = df.to_numpy(dtype=np.float64)
        if not np.isfinite(raw).all():
            raise ExpressionError("cannot fit expression normalisation: non-finite values")
        self.fill_mean = raw.mean(axis=0)
        x = self._log(raw)
        if self.method == "quantile":
            self.reference = np.sort(x, axis=1).mean(axis=0)
            x = self._quantile(x)
        self.mean, self.std = x.mean(axis=0), _std(x)
        self.cohort_stats = {}
        if self.method == "zscore_cohort":
            labels = self._labels(df, cohorts)
            for c in pd.unique(labels):
                xc = x[labels == c]
                if len(xc) < self.min_cohort_size:
                    if self.small_cohort == "error":
                        raise ExpressionError(self._small_msg(c, len(xc)))
                    continue  # transform falls back to pooled statistics for it
                self.cohort_stats[str(c)] = (xc.mean(axis=0), _std(xc), len(xc))
        return self

    def _small_msg(self, cohort: object, n: int) -> str:
        return (
            f"cohort {cohort!r} has {n} sample(s); z-scoring within a cohort needs >= "
            f"{self.min_cohort_size} (set small_cohort='global' to use pooled training statistics)"
        )

    @staticmethod
    def _labels(df: pd.DataFrame, cohorts: pd.Series | Sequence[str] | None) -> np.ndarray:
        if cohorts is None:
            return np.full(len(df), ALL_COHORT, dtype=object)
        if isinstance(cohorts, pd.Series):
            if cohorts.index.equals(df.index) or not set(df.index) <= set(cohorts.index):
                arr = cohorts.to_numpy()
            else:
                arr = cohorts.reindex(df.index).to_numpy()
        else:
            arr = np.asarray(list(cohorts), dtype=object)
        if len(arr) != len(df):
            raise ExpressionError(f"{len(arr)} cohort labels for {len(df)} samples")
        return np.asarray([str(c) for c in arr], dtype=object)

    def align(self, df: pd.DataFrame, allow_missing: bool = False) -> pd.DataFrame:
        """Reindex to the fitted genes (missing genes: error, or training means if allowed)."""
        from immunoplex.expression.genes import harmonise_genes

        assert self.fill_mean is not None
        aligned, _ = harmonise_genes(
            df,
            self.genes,
            allow_missing=allow_missing,
            fill_values=dict(zip(self.genes, self.fill_mean.tolist(), strict=True)),
        )
        return aligned

    def transform(
        self,
        df: pd.DataFrame,
        cohorts: pd.Series | Sequence[str] | None = None,
        allow_missing: bool = False,
    ) -> np.ndarray:
        """Normalised (n_samples, n_genes) float32 in the fitted gene order."""
        if not self.fitted:
            raise ExpressionError("ExpressionNormalizer.transform called before fit")
        assert self.mean is not None and self.std is not None
        if list(df.columns) != self.genes:
            df = self.align(df, allow_missing=allow_missing)
        if len(df) == 0:
            return np.zeros((0, len(self.genes)), dtype=np.float32)
        x = df.to_numpy(dtype=np.float64)
        if not np.isfinite(x).all():
            raise ExpressionError("cannot normalise expression: non-finite values")
        x = self._log(x)
        if self.method == "none":
            out = x
        elif self.method == "rank":
            g = x.shape[1]
            out = ((_within_sample_ranks(x) - 0.5) / g - 0.5) * np.sqrt(12.0)
        elif self.method in ("zscore", "quantile"):
            if self.method == "quantile":
                x = self._quantile(x)
            out = (x - self.mean) / self.std
        else:
            out = np.empty_like(x)
            labels = self._labels(df, cohorts)
            for c in pd.unique(labels):
                rows = labels == c
                if c in self.cohort_stats:
                    mu, sd, _ = self.cohort_stats[c]
                elif rows.sum() >= self.min_cohort_size:
                    mu, sd = x[rows].mean(axis=0), _std(x[rows])
                elif self.small_cohort == "global":
                    mu, sd = self.mean, self.std
                else:
                    raise ExpressionError(self._small_msg(c, int(rows.sum())))
                out[rows] = (x[rows] - mu) / sd
        return out.astype(np.float32)

    def fit_transform(
        self, df: pd.DataFrame, cohorts: pd.Series | Sequence[str] | None = None
    ) -> np.ndarray:
        return self.fit(df, cohorts).transform(df, cohorts)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state (lists of floats) for checkpoints."""
        if not self.fitted:
            raise ExpressionError("cannot serialise an unfitted ExpressionNormalizer")
        assert self.mean is not None and self.std is not None and self.fill_mean is not None

        def fl(a: np.ndarray | None) -> list[float] | None:
            return None if a is None else [float(v) for v in a]

        return {
            "kind": "ExpressionNormalizer",
            "version": _VERSION,
            "method": self.method,
            "log": self.log,
            "min_cohort_size": self.min_cohort_size,
            "small_cohort": self.small_cohort,
            "genes": list(self.genes),
            "fill_mean": fl(self.fill_mean),
            "mean": fl(self.mean),
            "std": fl(self.std),
            "reference": fl(self.reference),
            "cohort_stats": {
                c: {"mean": fl(m), "std": fl(s), "n": int(n)}
                for c, (m, s, n) in self.cohort_stats.items()
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExpressionNormalizer:
        """Inverse of to_dict()."""
        if d.get("kind") != "ExpressionNormalizer" or d.get("version") != _VERSION:
            raise CheckpointError(
                f"not an ExpressionNormalizer v{_VERSION} state (kind={d.get('kind')!r}, "
                f"version={d.get('version')!r})"
            )
        try:
            norm = cls(d["method"], d["log"], d["min_cohort_size"], d["small_cohort"])
            norm.genes = [str(g) for g in d["genes"]]
            norm.fill_mean = np.asarray(d["fill_mean"], dtype=np.float64)
            norm.mean = np.asarray(d["mean"], dtype=np.float64)
            norm.std = np.asarray(d["std"], dtype=np.float64)
            ref = d.get("reference")
            norm.reference = None if ref is None else np.asarray(ref, dtype=np.float64)
            norm.cohort_stats = {
                str(c): (np.asarray(s["mean"]), np.asarray(s["std"]), int(s["n"]))
                for c, s in d["cohort_stats"].items()
            }
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"malformed ExpressionNormalizer state ({err!r})") from err
        g = len(norm.genes)
        if any(len(a) != g for a in (norm.fill_mean, norm.mean, norm.std)):
            raise CheckpointError("malformed ExpressionNormalizer state: gene count mismatch")
        return norm
