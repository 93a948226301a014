"""The pairs family on the seven shared ICB cohorts, leave-one-cohort-out (skips without the data).

Measured (scripts/loco_features.py, docs/expression_results.md): pooled 0.636, mean over cohorts
0.666; the floors below leave room for solver noise, not for a real regression."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from immunoplex.evaluation.loco import POOLED, mean_over_cohorts, run_loco, summarise
from immunoplex.expression.icb import load_icb_cohorts
from immunoplex.expression.transfer import TransferConfig, TransferModel, predict_transfer


def test_pairs_family_loco_above_measured_floor(realdata: Path) -> None:
    p = load_icb_cohorts(realdata)
    cfg = TransferConfig(families=("impres", "pairs"))
    fitted = {}
    res = run_loco(
        p.expression, p.labels, p.cohorts, {"pairs": lambda: TransferModel(cfg)},
        baselines=("CD8A",), after_fit=lambda n, c, m, t: fitted.__setitem__(c, (m, t)),
    )  # fmt: skip
    s = summarise(res, n_boot=50)
    pooled = float(s[(s["method"] == "pairs") & (s["cohort"] == POOLED)]["auroc"].iloc[0])
    assert pooled >= 0.62, pooled
    assert mean_over_cohorts(s, "pairs") >= 0.65
    # The Liu model scores Liu with a quarter of the genes (the curated checkpoint genes kept),
    # without allow_missing, and says which features it could compute.
    model, test = fitted["Liu"]
    x = p.expression.iloc[test]
    rng = np.random.default_rng(0)
    keep = [g for g in x.columns if rng.random() < 0.2 or g in {"CD8A", "PDCD1", "CD274", "CD27",
            "CD40", "CD86", "TNFSF4", "CTLA4", "HAVCR2", "TNFRSF14", "LAG3", "TIGIT"}]  # fmt: skip
    assert len(keep) <= 0.25 * x.shape[1]
    prob, reports = predict_transfer(model.to_dict(), x[keep])
    assert np.isfinite(prob).all() and reports[0]["computable"] and reports[0]["not_computable"]
