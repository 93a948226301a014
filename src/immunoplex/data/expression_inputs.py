"""The expression branch's inputs when ``expression_norm=features`` (configs/expression_norm/
features.yaml): each patient's expression becomes the transferable within-sample features of
:class:`~immunoplex.expression.feature_state.ExpressionFeatures` instead of G normalised genes.

Kept out of :mod:`.datamodule` (size limit); the data module calls :func:`feature_matrix` from its
expression step, and stores the fitted state in the checkpoint under ``expression_features``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from immunoplex.expression.feature_state import ExpressionFeatures, is_feature_config

log = logging.getLogger(__name__)


def expression_features(spec: str | Mapping[str, Any]) -> ExpressionFeatures | None:
    """Unfitted features when ``data.expression_norm`` selects them, else None."""
    if not is_feature_config(spec):
        return None
    return ExpressionFeatures.from_config(dict(spec) if isinstance(spec, Mapping) else str(spec))


def feature_matrix(
    feats: ExpressionFeatures, values: pd.DataFrame, fit_ids: Sequence[str]
) -> dict[str, np.ndarray]:
    """Fit ``feats`` on the training samples ``fit_ids`` (no labels), then the (F,) features of
    every sample of ``values`` (within-sample: a sample's features depend on it alone)."""
    feats.fit(values.loc[list(fit_ids)])
    matrix = feats.matrix(values)
    log.info(
        "expression: %d within-sample features (%s) from %d genes",
        len(feats.names),
        ", ".join(feats.families),
        len(feats.universe),
    )
    return {str(pid): matrix[i] for i, pid in enumerate(values.index)}
