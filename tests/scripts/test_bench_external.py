"""scripts/bench_external.py: scoring a run on an independent draw, and the ECE floor."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import special

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def ext():
    spec = importlib.util.spec_from_file_location("bench_external", SCRIPTS / "bench_external.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_external"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_ece_floor_shrinks_with_patients_and_is_positive(ext) -> None:
    p = np.random.default_rng(0).uniform(0.05, 0.95, 3000)
    small, lo, hi = ext.ece_floor(p[:92])
    large = ext.ece_floor(p[:3000])[0]
    assert lo < small < hi
    # perfectly calibrated probabilities still show an ECE from label noise alone: ~1/sqrt(n)
    assert 0.05 < small < 0.2 and 0.005 < large < 0.04 and large < small / 2


def test_score_the_truth_itself_is_the_bayes_ratio_one(ext) -> None:
    rng = np.random.default_rng(1)
    n = 400
    ids = [f"P{i:04d}" for i in range(n)]
    p = rng.uniform(0.05, 0.95, n)
    truth = pd.DataFrame({"label": rng.binomial(1, p), "p_response": p}, index=ids)
    benefit = pd.Series(rng.normal(size=n), index=ids)
    logit = special.logit(p)
    pred = pd.DataFrame({"patient_id": ids, "probability": p, "calibrated_probability": p,
                         "logit[anti-PD-1]": 2 * (logit - benefit.to_numpy()),
                         "logit[bexmarilimab+anti-PD-1]": 2 * logit})  # fmt: skip
    out = ext.score(pred, truth, benefit, temperature=2.0)
    assert out["n"] == n and out["ratio"] == pytest.approx(1.0)
    assert out["ece"] == pytest.approx(out["bayes_ece"])
    assert out["benefit_spearman"] > 0.5  # p(combo) - p(mono) rises with the true benefit
    shuffled = pred.assign(probability=rng.permutation(p))
    assert ext.score(shuffled, truth, benefit, 2.0)["ratio"] < 0.8
