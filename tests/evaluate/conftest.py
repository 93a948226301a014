"""Simulated predictions shared by the evaluation tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit


def simulate_predictions(n: int = 160, seed: int = 0, unlabelled: int = 8) -> pd.DataFrame:
    """A predictions table with raw/calibrated probabilities, groups and unlabelled rows."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < expit(z)).astype(int)
    logits = 2.0 * z  # overconfident model
    df = pd.DataFrame(
        {
            "patient_id": [f"P{i:03d}" for i in range(n)],
            "label": y.astype(str),
            "probability": expit(logits),
            "calibrated_probability": expit(logits / 2.0),
            "cohort": rng.choice(["cohortA", "cohortB"], n),
            "treatment": rng.choice(["anti-PD-1", "bexmarilimab+anti-PD-1"], n),
        }
    )
    df.loc[: unlabelled - 1, "label"] = ""
    return df


@pytest.fixture
def predictions() -> pd.DataFrame:
    return simulate_predictions()
