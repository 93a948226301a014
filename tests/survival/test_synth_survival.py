"""Synthetic time to event: known hazard, oracle C-indices, determinism, files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from immunoplex.evaluation.survival import harrell_c
from immunoplex.synth import survival as SV
from immunoplex.synth.settings import resolve_settings
from immunoplex.synth.truth import sample_truth


@pytest.fixture(scope="module")
def population() -> tuple[pd.DataFrame, pd.DataFrame]:
    s = resolve_settings("default")
    truth = sample_truth(20_000, 0, s["truth"])
    return truth, SV.sample_survival(truth, s["truth"], s["survival"], np.random.default_rng(5))


def test_oracle_cindex_and_modality_oracles(population) -> None:
    truth, surv = population
    for ep in SV.ENDPOINTS:
        c = SV.oracle_cindices(surv, ep)
        assert 0.72 < c["bayes"] < 0.77, c
        assert c["image_only"] < c["bayes"] and c["expression_only"] < c["bayes"]
        assert c["image_only"] > 0.97 * c["bayes"] and c["expression_only"] > 0.97 * c["bayes"]
    # shares latents with response: high response probability, lower hazard
    assert np.corrcoef(surv["log_hazard"], truth["logit"])[0, 1] < -0.5
    # PFS never after OS; event rates and missing fractions as configured
    both = surv.dropna(subset=["survival_time_os", "survival_time_pfs"])
    assert (both["survival_time_pfs"] <= both["survival_time_os"]).all()
    assert 0.45 < surv["event_occurred_os"].mean() < 0.7
    assert surv["event_occurred_pfs"].mean() > surv["event_occurred_os"].mean()
    assert surv["survival_time_os"].isna().mean() == pytest.approx(0.03, abs=0.01)
    assert (surv["survival_time_os"].isna() == surv["event_occurred_os"].isna()).all()


def test_true_hazard_is_the_weibull_of_the_latent_times(population) -> None:
    """Uncensored death times follow PH in eta: P(T_i < T_j) = sigmoid(eta_i - eta_j), so the
    C-index of eta is E[sigmoid(|eta_i - eta_j|)] over pairs."""
    _, surv = population
    t = surv["time_death"].to_numpy()
    eta = surv["log_hazard"].to_numpy()
    c_true = harrell_c(t, np.ones_like(t), eta)
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(eta), (2, 400_000))
    expected = np.mean(1.0 / (1.0 + np.exp(-np.abs(eta[i] - eta[j]))))
    assert c_true == pytest.approx(expected, abs=0.005)
    c_noise = harrell_c(t, np.ones_like(t), rng.normal(size=len(t)))
    assert abs(c_noise - 0.5) < 0.01


def test_survival_draws_are_deterministic(population) -> None:
    s = resolve_settings("default")
    truth = population[0].iloc[:500]
    a = SV.sample_survival(truth, s["truth"], s["survival"], np.random.default_rng(7))
    b = SV.sample_survival(truth, s["truth"], s["survival"], np.random.default_rng(7))
    pd.testing.assert_frame_equal(a, b)


def test_cohort_files_carry_survival(tiny_cohort: Path) -> None:
    manifest = pd.read_csv(tiny_cohort / "manifest.csv")
    truth = pd.read_csv(tiny_cohort / "truth.csv").set_index("patient_id")
    for col in SV.SURVIVAL_COLUMNS:
        assert col in manifest.columns and col in truth.columns
    m = manifest.drop_duplicates("patient_id").set_index("patient_id")
    pd.testing.assert_series_equal(
        m["survival_time_os"], truth.loc[m.index, "survival_time_os"], check_names=False
    )
    assert set(manifest["event_occurred_os"].dropna().unique()) <= {0, 1}
    summary = json.loads((tiny_cohort / "synth_summary.json").read_text())["summary"]
    assert 0.7 < summary["cindex_bayes_os_population"] < 0.78
    test = truth[truth["split"] == "test"].dropna(subset=["survival_time_os"])
    c = harrell_c(test["survival_time_os"], test["event_occurred_os"], test["log_hazard"])
    assert summary["cindex_bayes_os_test"] == pytest.approx(c)
