"""Clinical covariates -> model input: the one encoder, fitted at training, stored, reused at predict.

Each column becomes two numbers: the value standardised with the training patients' mean and
standard deviation (0 when missing) and an observed indicator (nothing is imputed). The fitted
statistics are stored in the checkpoint (``data.clinical_columns`` / ``data.clinical_stats``) and
:meth:`ClinicalEncoder.from_dict` rebuilds the identical encoder for prediction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from immunoplex.errors import ManifestError


def _value(v: Any) -> float | None:
    """A finite float, or None for a missing (None/NaN/non-finite) value."""
    if v is None:
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


@dataclass
class ClinicalEncoder:
    """``[standardised value, observed]`` per column, with statistics fitted on training rows."""

    columns: list[str] = field(default_factory=list)
    stats: dict[str, list[float]] = field(default_factory=dict)  # column -> [mean, sd]

    @classmethod
    def fit(cls, columns: Sequence[str], train: pd.DataFrame) -> ClinicalEncoder:
        """Mean and (population) sd of each column over ``train``'s rows; a constant column gets
        sd 1. A column with no value in any training row is a :class:`ManifestError`."""
        stats: dict[str, list[float]] = {}
        for col in columns:
            vals = pd.to_numeric(train[col], errors="coerce")
            vals = vals[np.isfinite(vals)]
            if vals.empty:
                raise ManifestError(f"clinical column {col!r} has no value in training patients")
            stats[col] = [float(vals.mean()), float(vals.std(ddof=0)) or 1.0]
        return cls(list(columns), stats)

    @property
    def n_features(self) -> int:
        return 2 * len(self.columns)

    def transform(self, values: Mapping[str, Any] | pd.Series) -> np.ndarray:
        """One patient's values (a mapping or a table row; missing keys are unobserved)."""
        vec: list[float] = []
        for col in self.columns:
            mean, sd = self.stats.get(col, [0.0, 1.0])
            v = _value(values.get(col))
            vec += [0.0 if v is None else (v - mean) / (sd or 1.0), float(v is not None)]
        return np.asarray(vec, dtype=np.float32)

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's ``data`` keys for this encoder."""
        return {
            "clinical_columns": list(self.columns),
            "clinical_stats": {k: [float(x) for x in v] for k, v in self.stats.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClinicalEncoder:
        """From the checkpoint's ``data`` section (see :meth:`to_dict`)."""
        stats = data.get("clinical_stats") or {}
        return cls(
            list(data.get("clinical_columns") or []),
            {str(k): [float(x) for x in v] for k, v in stats.items()},
        )
