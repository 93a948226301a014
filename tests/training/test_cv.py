from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from immunoplex.data.datamodule import ResponseDataModule, data_config_from
from immunoplex.training.cv import collect_folds, fold_configs, run_cv

from .helpers import compose_train, fast_overrides


def test_cv_runs_every_fold_and_summarises(tiny_cohort: Path, tmp_path: Path) -> None:
    over = fast_overrides(tiny_cohort, epochs=1) + [
        "data.split.mode=kfold",
        "data.split.n_folds=2",
        "callbacks=none",
    ]
    cfg = compose_train(over, tmp_path)
    assert [Path(c.paths.output_dir).name for c in fold_configs(cfg)] == ["fold0", "fold1"]
    table = run_cv(cfg)
    assert list(table["fold"]) == [0, 1]
    assert table["test_auroc"].between(0, 1).all()
    md = (tmp_path / "cv_summary.md").read_text()
    assert "| test_auroc |" in md and "±" in md
    tests = [
        set(pd.read_csv(tmp_path / f"fold{k}" / "predictions_test.csv")["patient_id"])
        for k in (0, 1)
    ]
    assert not tests[0] & tests[1]  # every labelled patient tested exactly once
    again = collect_folds([tmp_path / "fold0", tmp_path / "fold1"], tmp_path / "collected")
    assert list(again["test_auroc"]) == list(table["test_auroc"])


def test_fixed_mode_is_not_cross_validation(tiny_cohort: Path, tmp_path: Path) -> None:
    cfg = compose_train(fast_overrides(tiny_cohort), tmp_path)
    with pytest.raises(ValueError, match="kfold, nested or loco"):
        fold_configs(cfg)


def test_per_device_batch_from_world_size(tiny_cohort: Path, tmp_path: Path) -> None:
    cfg = compose_train(fast_overrides(tiny_cohort) + ["data.global_batch_size=16"], tmp_path)
    dm = ResponseDataModule(data_config_from(cfg.data, 0))
    assert [dm.per_device_batch_size(w) for w in (1, 2, 4, 32)] == [16, 8, 4, 1]
