"""``data.clinical.ClinicalEncoder``: the one clinical encoding for training and prediction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from immunoplex.data.clinical import ClinicalEncoder
from immunoplex.errors import ManifestError


def test_fit_transform_round_trip() -> None:
    train = pd.DataFrame({"age": [50.0, 70.0, np.nan], "ecog": [1.0, 1.0, 1.0]})
    enc = ClinicalEncoder.fit(["age", "ecog"], train)
    assert enc.stats == {"age": [60.0, 10.0], "ecog": [1.0, 1.0]}  # constant column: sd 1
    again = ClinicalEncoder.from_dict(enc.to_dict())
    assert again == enc and again.n_features == 4
    row = train.iloc[0]  # a table row (training) and a mapping (prediction) encode the same
    np.testing.assert_array_equal(enc.transform(row), again.transform({"age": 50.0, "ecog": 1.0}))
    np.testing.assert_array_equal(enc.transform(row), [-1.0, 1.0, 0.0, 1.0])
    for missing in ({}, {"age": None, "ecog": float("nan")}, train.iloc[2][["age"]]):
        assert enc.transform(missing)[[1, 3]].tolist()[0] == 0.0  # age unobserved


def test_column_without_training_values_is_refused() -> None:
    with pytest.raises(ManifestError, match="'age' has no value in training patients"):
        ClinicalEncoder.fit(["age"], pd.DataFrame({"age": [np.nan, np.nan]}))
