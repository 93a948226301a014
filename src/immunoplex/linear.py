"""Elastic-net logistic regression on normalised expression, with inner cross-validation.

On a few hundred samples a small linear model is a strong, honest competitor to neural nets.
Inner CV chooses C and l1_ratio: leave-one-cohort-out over the training cohorts when there are at
least ``min_cohorts_for_group_cv`` of them (hyperparameters that transfer across platforms),
otherwise stratified k-fold. The whole model (normaliser + gene list + coefficients) serialises to
a JSON-safe dict; :func:`predict_expression` applies it to a new cohort's expression table.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from immunoplex.errors import CheckpointError, ExpressionError
from immunoplex.expression import ExpressionNormalizer, ExpressionTable

_KIND = "ElasticNetExpressionModel"
_VERSION = 1


@dataclass
class ElasticNetConfig:
    """Hyperparameter grid and inner-CV settings."""

    Cs: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3)
    l1_ratios: tuple[float, ...] = (0.1, 0.5, 0.9)
    inner_folds: int = 5
    min_cohorts_for_group_cv: int = 3
    class_weight: str | None = "balanced"
    max_iter: int = 3000
    tol: float = 1e-3
    seed: int = 0
    n_jobs: int | None = 1
    normalizer: dict[str, Any] = field(default_factory=lambda: {"method": "zscore_cohort"})


def _logreg(cfg: ElasticNetConfig, C: float = 1.0, l1_ratio: float = 0.5) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(
        C=C,
        l1_ratio=l1_ratio,
        solver="saga",
        class_weight=cfg.class_weight,
        max_iter=cfg.max_iter,
        tol=cfg.tol,
        random_state=cfg.seed,
    )


class ElasticNetExpressionModel:
    """Normaliser + elastic-net logistic regression; fit on training cohorts only."""

    def __init__(self, config: ElasticNetConfig | None = None) -> None:
        self.config = config or ElasticNetConfig()
        self.normalizer: ExpressionNormalizer | None = None
        self.coef: np.ndarray | None = None
        self.intercept: float = 0.0
        self.best_params: dict[str, float] = {}
        self.cv_auroc: float | None = None
        self.inner_cv: str = ""

    @property
    def genes(self) -> list[str]:
        return [] if self.normalizer is None else list(self.normalizer.genes)

    def fit(
        self,
        values: pd.DataFrame,
        labels: pd.Series | Sequence[int],
        cohorts: pd.Series | Sequence[str] | None = None,
    ) -> ElasticNetExpressionModel:
        """Fit the normaliser on all given samples (labels unused) and the classifier on the
        labelled ones (label 1/0; -1 = unlabelled, excluded)."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.model_selection import GridSearchCV, LeaveOneGroupOut, StratifiedKFold

        y_all = np.asarray(labels, dtype=np.int64)
        coh = (
            np.asarray(cohorts, dtype=object)
            if cohorts is not None
            else np.full(len(values), "all", dtype=object)
        )
        if len(y_all) != len(values) or len(coh) != len(values):
            raise ExpressionError("labels/cohorts do not match the expression table length")
        self.normalizer = ExpressionNormalizer.from_config(self.config.normalizer)
        x_all = self.normalizer.fit_transform(values, coh if cohorts is not None else None)
        keep = y_all >= 0
        x, y, groups = x_all[keep].astype(np.float64), y_all[keep], coh[keep]
        if len(np.unique(y)) < 2:
            raise ExpressionError("elastic-net training needs both responders and non-responders")
        usable = [g for g in pd.unique(groups) if len(np.unique(y[groups == g])) == 2]
        if len(usable) >= self.config.min_cohorts_for_group_cv:
            keep_g = np.isin(groups, usable)
            splits = list(LeaveOneGroupOut().split(x[keep_g], y[keep_g], groups[keep_g]))
            idx = np.flatnonzero(keep_g)
            cv: Any = [(idx[a], idx[b]) for a, b in splits]
            self.inner_cv = f"leave-one-cohort-out over {len(usable)} cohorts"
        else:
            n_min = int(min(np.bincount(y)))
            k = max(2, min(self.config.inner_folds, n_min))
            cv = StratifiedKFold(k, shuffle=True, random_state=self.config.seed)
            self.inner_cv = f"stratified {k}-fold"
        grid = {"C": list(self.config.Cs), "l1_ratio": list(self.config.l1_ratios)}
        search = GridSearchCV(
            _logreg(self.config), grid, scoring="roc_auc", cv=cv, n_jobs=self.config.n_jobs
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            search.fit(x, y)
        best = search.best_estimator_
        self.coef = best.coef_.ravel().astype(np.float64)
        self.intercept = float(best.intercept_[0])
        self.best_params = {k: float(v) for k, v in search.best_params_.items()}
        self.cv_auroc = float(search.best_score_)
        return self

    def decision_function(
        self,
        values: pd.DataFrame,
        cohorts: pd.Series | Sequence[str] | None = None,
        allow_missing: bool = False,
    ) -> np.ndarray:
        if self.normalizer is None or self.coef is None:
            raise ExpressionError("elastic-net model used before fit")
        x = self.normalizer.transform(values, cohorts, allow_missing=allow_missing)
        return x.astype(np.float64) @ self.coef + self.intercept

    def predict_proba(
        self,
        values: pd.DataFrame,
        cohorts: pd.Series | Sequence[str] | None = None,
        allow_missing: bool = False,
    ) -> np.ndarray:
        """P(responder) per sample."""
        z = self.decision_function(values, cohorts, allow_missing)
        return 1.0 / (1.0 + np.exp(-z))

    def top_genes(self, n: int = 20) -> list[tuple[str, float]]:
        """Genes with the largest absolute coefficients (non-zero only)."""
        if self.coef is None:
            return []
        order = np.argsort(-np.abs(self.coef))[:n]
        return [(self.genes[i], float(self.coef[i])) for i in order if self.coef[i] != 0.0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state: normaliser, gene list, coefficients, chosen hyperparameters."""
        if self.normalizer is None or self.coef is None:
            raise ExpressionError("cannot serialise an unfitted elastic-net model")
        cfg = asdict(self.config)
        cfg["Cs"], cfg["l1_ratios"] = list(cfg["Cs"]), list(cfg["l1_ratios"])
        return {
            "kind": _KIND,
            "version": _VERSION,
            "genes": self.genes,
            "normalizer": self.normalizer.to_dict(),
            "coef": [float(c) for c in self.coef],
            "intercept": self.intercept,
            "best_params": dict(self.best_params),
            "cv_auroc": self.cv_auroc,
            "inner_cv": self.inner_cv,
            "config": cfg,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ElasticNetExpressionModel:
        if d.get("kind") != _KIND or d.get("version") != _VERSION:
            raise CheckpointError(
                f"not an {_KIND} v{_VERSION} state (kind={d.get('kind')!r}, "
                f"version={d.get('version')!r})"
            )
        try:
            cfg = dict(d["config"])
            cfg["Cs"], cfg["l1_ratios"] = tuple(cfg["Cs"]), tuple(cfg["l1_ratios"])
            model = cls(ElasticNetConfig(**cfg))
            model.normalizer = ExpressionNormalizer.from_dict(d["normalizer"])
            model.coef = np.asarray(d["coef"], dtype=np.float64)
            model.intercept = float(d["intercept"])
            model.best_params = dict(d.get("best_params", {}))
            model.cv_auroc = d.get("cv_auroc")
            model.inner_cv = str(d.get("inner_cv", ""))
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"malformed {_KIND} state ({err!r})") from err
        if len(model.coef) != len(model.genes):
            raise CheckpointError(f"malformed {_KIND} state: coefficient/gene count mismatch")
        return model


def predict_expression(
    model_dict: Mapping[str, Any],
    table: ExpressionTable | pd.DataFrame,
    cohorts: pd.Series | Sequence[str] | None = None,
    allow_missing: bool = False,
) -> np.ndarray:
    """P(responder) for every sample of a new expression table, using a serialised model.

    With ``zscore_cohort`` normalisation the table is treated as one new cohort (z-scored by its
    own statistics, so it needs >= 3 samples) unless ``cohorts`` labels are given. Every gene the
    model uses must be present (ExpressionError listing the missing ones) unless
    ``allow_missing=True``, which fills them with the training means stored in the model.
    """
    values = table.values if isinstance(table, ExpressionTable) else table
    model = ElasticNetExpressionModel.from_dict(model_dict)
    if cohorts is None:
        cohorts = ["__new__"] * len(values)
    return model.predict_proba(values, cohorts, allow_missing=allow_missing)
