"""Cross-fitting (data.split.crossfit_folds): K out-of-fold fits calibrate a final fit on
train + val; the test patients stay out of every fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from immunoplex.errors import ConfigError
from immunoplex.evaluation.calibration import fit_calibration
from immunoplex.training.checkpoint import load_checkpoint
from immunoplex.training.run import train

from .helpers import compose_train, fast_overrides

FEATURES = ["model=cell_features", "model.interaction_features=null", "select_checkpoint=last"]


@pytest.mark.slow  # four fits of the feature model on the tiny cohort (~1 min on 2 cores)
def test_crossfit_calibrates_out_of_fold_and_fits_on_train_and_val(
    tiny_cohort: Path, tmp_path: Path
) -> None:
    plain = train(compose_train(fast_overrides(tiny_cohort, 2) + FEATURES, tmp_path / "plain"))
    out = tmp_path / "cf"
    cfg = compose_train(
        fast_overrides(tiny_cohort, 2) + FEATURES + ["data.split.crossfit_folds=3"], out
    )
    summary = train(cfg)
    n = plain["n_patients"]
    assert summary["n_patients"] == {"train": n["train"] + n["val"], "val": 0, "test": n["test"]}
    assert summary["crossfit"]["folds"] == 3
    oof = pd.read_csv(out / "crossfit" / "oof_predictions.csv", dtype={"patient_id": str})
    tr_val = pd.concat(
        [
            pd.read_csv(tmp_path / "plain" / f"predictions_{s}.csv", dtype={"patient_id": str})
            for s in ("val",)
        ]  # fmt: skip
    )
    test_ids = set(
        pd.read_csv(out / "predictions_test.csv", dtype={"patient_id": str})["patient_id"]
    )
    assert not set(oof["patient_id"]) & test_ids  # no test patient is fitted or calibrated on
    assert set(tr_val["patient_id"]) <= set(oof["patient_id"])
    assert oof["patient_id"].is_unique and sorted(oof["crossfit_fold"].unique()) == [0, 1, 2]
    # each out-of-fold logit carries its fold model's prior shift: log(n_neg / n_pos) of the
    # pooled patients outside that fold (module.pos_weight=auto); the final fit's is all of them
    y = oof["label"].to_numpy()
    for fold, g in oof.groupby("crossfit_fold"):
        rest = y[(oof["crossfit_fold"] != fold).to_numpy()]
        assert g["crossfit_offset"].unique() == pytest.approx(
            [np.log((rest == 0).sum() / rest.sum())]
        )
    offset = float(np.log((y == 0).sum() / y.sum()))
    assert summary["calibration"]["offset"] == pytest.approx(offset, rel=1e-5)
    # the final checkpoint carries the calibration fitted on the out-of-fold logits
    want = fit_calibration(
        oof["logit"].to_numpy(), y, alpha=0.1, offset=offset,
        fit_offset=oof["crossfit_offset"].to_numpy(), temperature="test",
    )  # fmt: skip
    ckpt = load_checkpoint(Path(summary["checkpoint"]))
    assert ckpt["immunoplex"]["calibration"]["temperature"] == pytest.approx(want.temperature)
    assert ckpt["immunoplex"]["calibration"]["offset"] == pytest.approx(offset, rel=1e-5)
    assert summary["temperature"] == pytest.approx(want.temperature)
    test = pd.read_csv(out / "predictions_test.csv")
    np.testing.assert_allclose(
        test["calibrated_probability"], want.probabilities(test["logit"].to_numpy()), atol=1e-6
    )
    assert not (out / "predictions_val.csv").exists()


def test_crossfit_refuses_best_checkpoint_selection(tiny_cohort: Path, tmp_path: Path) -> None:
    cfg = compose_train(
        fast_overrides(tiny_cohort, 1) + ["data.split.crossfit_folds=3", "select_checkpoint=best"],
        tmp_path / "x",
    )
    with pytest.raises(ConfigError, match="select_checkpoint=last") as err:
        train(cfg)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("k", [1, -2, "3"])
def test_crossfit_folds_must_be_0_or_at_least_2(k: object) -> None:
    """crossfit_folds=1 used to mean "off" without a word."""
    from omegaconf import OmegaConf

    from immunoplex.cli.checks import validate_train

    cfg = OmegaConf.create({"data": {"split": {"crossfit_folds": k}}})
    with pytest.raises(ConfigError, match="data.split.crossfit_folds: must be an integer >= 2"):
        validate_train(cfg)
    for ok in (0, None, 2, 5):
        validate_train(OmegaConf.create({"data": {"split": {"crossfit_folds": ok}}}))


def test_training_summary_says_which_temperature_was_kept() -> None:
    from immunoplex.cli.train import format_summary

    base = {"n_patients": {"train": 276, "val": 0, "test": 92}, "test_auroc": 0.88}
    kept = format_summary({**base, "temperature": 0.233, "calibration": {
        "temperature_fitted": 0.233, "temperature_lr_statistic": 41.0, "offset": 0.32}})  # fmt: skip
    assert "temperature (fitted on val):   0.233\n" in kept + "\n"
    assert "prior-shift offset (log pos_weight): 0.320" in kept
    dropped = format_summary({**base, "temperature": 1.0, "crossfit": {"folds": 5},
                              "calibration": {"temperature_fitted": 1.23,
                                              "temperature_lr_statistic": 2.91, "offset": 0.0}})  # fmt: skip
    assert (
        "temperature:                   1.000 (fitted out of fold 1.230, not kept: likelihood "
        "ratio 2.91, T = 1 not rejected)" in dropped
    )
    assert "prior-shift" not in dropped
