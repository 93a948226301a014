"""The survival LOCO table on the shared ICB cohorts with OS/PFS (realdata; skipped without)."""

from __future__ import annotations

import numpy as np
import pytest

from immunoplex.evaluation.loco_survival import (
    POOLED,
    _counts,
    icb_survival,
    run_loco_survival,
    summarise_survival,
    survival_markdown,
)
from immunoplex.evaluation.survival import harrell_c


def test_stratified_pooled_counts_match_harrell() -> None:
    rng = np.random.default_rng(0)
    t, e, r = rng.exponential(5, 80), (rng.random(80) < 0.6).astype(float), rng.normal(size=80)
    n, d = _counts(t, e, r)
    assert n / d == pytest.approx(harrell_c(t, e, r), abs=1e-12)


@pytest.mark.realdata
@pytest.mark.slow
def test_survival_loco_table(realdata) -> None:
    from immunoplex.expression.icb import load_icb_cohorts

    prepared = load_icb_cohorts(realdata)
    surv = icb_survival(realdata, prepared.expression.index)
    res = run_loco_survival(prepared.expression, prepared.cohorts, surv)
    summary = summarise_survival(res, n_boot=30)
    os_cohorts = set(summary[summary["endpoint"] == "os"]["cohort"]) - {POOLED}
    pfs_cohorts = set(summary[summary["endpoint"] == "pfs"]["cohort"]) - {POOLED}
    assert len(os_cohorts) == 7 and {"Liu", "Padron", "Van_Allen"} <= pfs_cohorts
    # held-out cohorts only: no patient scored for a cohort its model was trained on
    p = res.predictions
    assert (p.groupby(["endpoint", "method", "patient_id"]).size() == 1).all()
    assert summary["c_index"].between(0.2, 0.9).all()
    pooled = summary[(summary["cohort"] == POOLED) & (summary["endpoint"] == "os")]
    assert pooled["c_index"].max() > 0.53  # signatures carry some OS signal
    assert "| **pooled (stratified)** |" in survival_markdown(summary, res.methods)
