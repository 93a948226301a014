"""The transferable features (:mod:`.features`) as the input of the multimodal model's expression
branch: fitted on the training patients, stored in the checkpoint, applied at predict time.

``configs/expression_norm/features.yaml`` (``expression_norm=features``) selects it: instead of G
normalised genes, each patient's expression becomes the F features of
:class:`~immunoplex.expression.features.FeatureBuilder` (``families`` of ``sig`` / ``impres`` /
``pairs`` / ``rank``), every one computed within the sample. Fitting is label-free and uses the
training patients only: it fixes the gene universe (the training table's genes), the features
those genes support and, with ``standardize``, one pooled per-feature mean/std (a fixed affine map
stored with the rest, so a new cohort still needs no statistics of its own).

The state is a plain JSON dict (gene lists, gene pairs, numbers) under a fixed ``kind``; reading
it accepts only the fixed family names of :data:`~immunoplex.expression.features.FAMILIES` and
the fixed feature kinds of :class:`~immunoplex.expression.features.FeatureSpec`: the file chooses
no code path.

Partial coverage: :meth:`ExpressionFeatures.transform` returns the features its table allows and
the :class:`~immunoplex.expression.features.CoverageReport`; a feature that cannot be computed is
NaN, never filled. What the caller does with it (refuse, or drop the modality) is its decision
(``immunoplex-predict``: see :func:`immunoplex.inference.inputs.prepare_expression`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from immunoplex.errors import CheckpointError, ConfigError, ExpressionError
from immunoplex.expression.features import FAMILIES, CoverageReport, FeatureBuilder, FeatureSpec

KIND = "ExpressionFeatures"
METHOD = "features"
_VERSION = 1
_EPS = 1e-8
DEFAULT_FAMILIES = ("sig", "pairs", "rank")
# configs/expression_norm keys that the gene-level normalisers use and within-sample features do
# not need (train.yaml sets small_cohort for every option): accepted and ignored.
_IGNORED = {"log", "min_cohort_size", "small_cohort", "name", "description"}
_KEYS = {"method", "families", "min_set_fraction", "standardize"}


def is_feature_config(spec: Any) -> bool:
    """Whether a ``data.expression_norm`` value (name or mapping) selects the features."""
    if isinstance(spec, Mapping):
        return spec.get("method") == METHOD
    return str(spec) == METHOD


class ExpressionFeatures:
    """Fit on training samples (label-free); transform any table; round-trips via to_dict()."""

    def __init__(
        self,
        families: Sequence[str] = DEFAULT_FAMILIES,
        min_set_fraction: float = 0.5,
        standardize: bool = True,
    ) -> None:
        fams = tuple(str(f) for f in families)
        bad = [f for f in fams if f not in FAMILIES]
        if bad or not fams:
            raise ConfigError(
                f"expression feature families {list(fams)}: choose one or more of {FAMILIES}"
            )
        if not 0.0 < float(min_set_fraction) <= 1.0:
            raise ConfigError(f"min_set_fraction {min_set_fraction} must be in (0, 1]")
        self.families = fams
        self.min_set_fraction = float(min_set_fraction)
        self.standardize = bool(standardize)
        self.universe: list[str] = []
        self.specs: list[FeatureSpec] = []
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | str) -> ExpressionFeatures:
        """From ``configs/expression_norm/features.yaml`` (or the bare name ``features``)."""
        if not isinstance(cfg, Mapping):
            return cls()
        extra = set(cfg) - _KEYS - _IGNORED
        if extra:
            raise ConfigError(f"unknown expression feature option(s) {sorted(extra)}")
        return cls(
            families=list(cfg.get("families") or DEFAULT_FAMILIES),
            min_set_fraction=float(cfg.get("min_set_fraction", 0.5)),
            standardize=bool(cfg.get("standardize", True)),
        )

    @property
    def builder(self) -> FeatureBuilder:
        return FeatureBuilder(families=self.families, min_fraction=self.min_set_fraction)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def fitted(self) -> bool:
        return self.mean is not None

    # ------------------------------------------------------------------ fit / transform
    def fit(self, values: pd.DataFrame) -> ExpressionFeatures:
        """Universe, features and (optionally) their pooled statistics from training samples."""
        if values.shape[0] == 0 or values.shape[1] == 0:
            raise ExpressionError("cannot fit expression features on an empty table")
        builder = self.builder
        self.universe = [str(g) for g in values.columns]
        self.specs = builder.define(self.universe)
        if not self.specs:
            raise ExpressionError(
                f"none of the expression feature families {list(self.families)} is computable "
                f"from the training genes ({len(self.universe)} genes)"
            )
        feats, report = builder.compute(values, self.specs, self.universe)
        if report.not_computable:  # define() only keeps what these genes support
            raise ExpressionError(f"training table: {report.summary()}")
        x = feats[self.names].to_numpy(dtype=np.float64)
        if not np.isfinite(x).all():
            raise ExpressionError("expression features of the training table are not finite")
        if self.standardize:
            sd = x.std(axis=0, ddof=0)
            self.mean, self.std = x.mean(axis=0), np.where(sd > _EPS, sd, 1.0)
        else:
            self.mean, self.std = np.zeros(x.shape[1]), np.ones(x.shape[1])
        return self

    def transform(self, values: pd.DataFrame) -> tuple[pd.DataFrame, CoverageReport]:
        """(samples x F features, NaN where not computable; coverage report). Nothing is filled."""
        if not self.fitted:
            raise ExpressionError("ExpressionFeatures.transform called before fit")
        assert self.mean is not None and self.std is not None
        feats, report = self.builder.compute(values, self.specs, self.universe)
        feats = feats.reindex(columns=self.names)
        scaled = (feats - self.mean) / self.std
        return scaled.astype(np.float64), report

    def matrix(self, values: pd.DataFrame) -> np.ndarray:
        """(n, F) float32 for a table from which every feature is computable (training)."""
        feats, report = self.transform(values)
        if report.not_computable:
            raise ExpressionError(f"expression table: {report.summary()}")
        return feats.to_numpy(dtype=np.float32)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state: family names, gene lists / pairs, numbers."""
        if not self.fitted:
            raise ExpressionError("cannot serialise unfitted ExpressionFeatures")
        assert self.mean is not None and self.std is not None
        return {
            "kind": KIND,
            "version": _VERSION,
            "families": list(self.families),
            "min_set_fraction": self.min_set_fraction,
            "standardize": self.standardize,
            "universe": list(self.universe),
            "features": [s.to_dict() for s in self.specs],
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExpressionFeatures:
        """Inverse of to_dict(); only the fixed families and feature kinds are accepted."""
        if not isinstance(d, Mapping) or d.get("kind") != KIND or d.get("version") != _VERSION:
            got = d.get("kind") if isinstance(d, Mapping) else type(d).__name__
            raise CheckpointError(f"not an {KIND} v{_VERSION} state (kind={got!r})")
        try:
            feats = cls(d["families"], float(d["min_set_fraction"]), bool(d["standardize"]))
            feats.universe = [str(g) for g in d["universe"]]
            feats.specs = [FeatureSpec.from_dict(s) for s in d["features"]]
            feats.mean = np.asarray(d["mean"], dtype=np.float64)
            feats.std = np.asarray(d["std"], dtype=np.float64)
        except (KeyError, TypeError, ValueError, ConfigError, ExpressionError) as err:
            raise CheckpointError(f"malformed {KIND} state ({err!r})") from err
        n = len(feats.specs)
        if n == 0 or len(feats.mean) != n or len(feats.std) != n:
            raise CheckpointError(f"malformed {KIND} state: feature count mismatch")
        return feats
