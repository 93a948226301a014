"""scripts/bench_models.py: the scoring of one run against the generator's truth."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from immunoplex.evaluation.metrics import ece

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_models.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_models", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_models"] = mod
    spec.loader.exec_module(mod)
    return mod


def _case(n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.05, 0.95, n)
    y = rng.binomial(1, p)
    ids = [f"P{i:04d}" for i in range(n)]
    truth = pd.DataFrame({"patient_id": ids, "p_response": p}).set_index("patient_id")
    pred = pd.DataFrame({"patient_id": ids, "label": y, "probability": 1 - p})
    return pred, truth, pd.Series(0.0, index=ids)


def test_score_reports_the_truths_own_ece_on_the_same_patients(bench) -> None:
    pred, truth, benefit = _case()
    pred.loc[:9, "label"] = -1  # unlabelled patients are left out of every figure
    out = bench.score(pred, truth, benefit)
    kept = pred[pred["label"] >= 0]
    want = np.asarray(ece(kept["label"], truth.loc[kept["patient_id"], "p_response"]))
    want = float(want.reshape(-1)[0])
    assert out["n_test"] == 190
    assert out["bayes_ece"] == pytest.approx(want)
    # the truth reversed is far worse calibrated than the truth on the same labels
    assert out["ece"] > 2 * out["bayes_ece"]
    assert out["bayes"] > 0.6 and out["auroc"] == pytest.approx(1 - out["bayes"])


def test_table_has_a_column_per_figure(bench) -> None:
    rows = [
        {"model": "m", "seed": s, "wall_s": 1.0, "best": "last.ckpt", "auroc": 0.7 + s / 100,
         "bayes": 0.9, "ratio": (0.7 + s / 100) / 0.9, "ece": 0.1, "bayes_ece": 0.08,
         "benefit_spearman": 0.5}
        for s in (0, 1)
    ]  # fmt: skip
    text = bench.table(rows)
    header, _, row = text.splitlines()
    assert "ECE of the true p" in header
    assert len(header.split("|")) == len(row.split("|"))
    assert "0.705 ± 0.007" in row and "0.080 ± 0.000" in row


def test_readme_model_table_is_the_benchmark_docs_table() -> None:
    """README's model table is docs/models.md's benchmark block, copied whole (issue 16.4)."""
    import re

    root = Path(__file__).resolve().parents[2]

    def block(path: Path) -> str:
        m = re.search(r"<!-- bench_models:start -->\n(.*?)<!-- bench_models:end -->",
                      path.read_text(), flags=re.S)  # fmt: skip
        assert m, f"{path}: no bench_models block"
        return m.group(1)

    assert block(root / "README.md") == block(root / "docs" / "models.md")


def _fake_ckpt(path: Path, pos_weight: float) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "hyper_parameters": {"pos_weight": pos_weight},
                "immunoplex": {"model": {"_target_": "immunoplex.models.response_model.ResponseModel"}}},
               path)  # fmt: skip


@pytest.mark.parametrize("crossfit", [False, True])
def test_recalibrate_refits_todays_rule_from_the_held_out_logits(
    bench, tmp_path: Path, crossfit: bool
) -> None:
    """--recalibrate: the prior shift log(pos_weight) comes off and the temperature is tested,
    from predictions_val.csv or (cross-fit) the out-of-fold logits with each fold's own shift."""
    from scipy.special import expit

    from immunoplex.evaluation.calibration import fit_calibration

    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, 400)
    y = (rng.random(400) < expit(z)).astype(int)
    w = 1.5
    _fake_ckpt(tmp_path / "model.ckpt", w)
    held = pd.DataFrame({"patient_id": [f"P{i}" for i in range(400)], "label": y,
                         "logit": z + np.log(w)})  # fmt: skip
    if crossfit:  # old out-of-fold files have no crossfit_offset column: read the folds' ckpts
        held["crossfit_fold"] = np.arange(400) % 2
        for k, wk in ((0, 1.4), (1, 1.6)):
            _fake_ckpt(tmp_path / "crossfit" / f"fold{k}" / "model.ckpt", wk)
        held["logit"] = z + np.log(np.where(held["crossfit_fold"] == 0, 1.4, 1.6))
        (tmp_path / "crossfit").mkdir(exist_ok=True)
        held.to_csv(tmp_path / "crossfit" / "oof_predictions.csv", index=False)
    else:
        held.to_csv(tmp_path / "predictions_val.csv", index=False)
    pred = pd.DataFrame({"patient_id": ["A", "B"], "label": [1, 0], "logit": [np.log(w), 0.0],
                         "calibrated_probability": [0.9, 0.9]})  # fmt: skip
    bench.recalibrate(tmp_path, pred)
    assert pred.attrs["offset"] == pytest.approx(np.log(w))
    fo = None if not crossfit else np.log(np.where(held["crossfit_fold"] == 0, 1.4, 1.6))
    want = fit_calibration(held["logit"], y, alpha=None, offset=np.log(w), fit_offset=fo)
    assert pred.attrs["temperature"] == pytest.approx(want.temperature)
    assert want.temperature == 1.0  # these logits are calibrated once the shift is off
    np.testing.assert_allclose(pred["calibrated_probability"], [0.5, expit(-np.log(w))])
