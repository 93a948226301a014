"""task=survival|both end to end on the tiny synthetic cohort: manifest columns named in the
config, missing times unlabelled, risk head, Breslow baseline in the checkpoint, predict writes
risk + survival curves, eval reads the predictions; bad manifests are one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.append(str(Path(__file__).resolve().parents[1] / "training"))
from helpers import compose_train, fast_overrides  # noqa: E402

from immunoplex.data.cohort import load_cohort  # noqa: E402
from immunoplex.errors import ConfigError, ManifestError, SplitError  # noqa: E402

SURV = {"os": ("survival_time_os", "event_occurred_os")}


@pytest.fixture(scope="module")
def survival_run(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory):
    from immunoplex.training.run import train

    out = tmp_path_factory.mktemp("surv_run")
    cfg = compose_train(
        [*fast_overrides(tiny_cohort, epochs=2), "task=survival", "model=expression_only",
         f"data.cache_dir={out}/cache"], output_dir=out,
    )  # fmt: skip
    return out, train(cfg)


def test_manifest_survival_columns_are_parsed_and_missing_is_unlabelled(tiny_cohort: Path):
    c = load_cohort(tiny_cohort / "manifest.csv", survival=SURV)
    m = pd.read_csv(tiny_cohort / "manifest.csv").drop_duplicates("patient_id")
    p = c.patients.set_index("patient_id").loc[m["patient_id"]]
    np.testing.assert_array_equal(p["time_os"].to_numpy(), m["survival_time_os"].to_numpy())
    assert ((p["event_os"] == -1) == m["survival_time_os"].isna().to_numpy()).all()
    # names come from the config: other names, other columns
    other = load_cohort(tiny_cohort / "manifest.csv", survival={"x": ("nope_t", "nope_e")})
    assert other.patients["time_x"].isna().all()


@pytest.mark.parametrize(
    ("time", "event", "message"),
    [("-2", "1", "negative"), ("", "1", "without a time"), ("5", "yes", "not 0/1")],
)
def test_bad_survival_cells_are_one_line_row_errors(
    tiny_cohort: Path, tmp_path: Path, time: str, event: str, message: str
) -> None:
    m = pd.read_csv(tiny_cohort / "manifest.csv", dtype=str, keep_default_na=False)
    m["image"] = [str(tiny_cohort / p) for p in m["image"]]
    m.loc[2, "survival_time_os"], m.loc[2, "event_occurred_os"] = time, event
    m.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ManifestError, match=rf"m.csv:4: os .*{message}") as err:
        load_cohort(tmp_path / "m.csv", survival=SURV)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_no_events_and_bad_config_are_errors(tiny_cohort: Path, tmp_path: Path) -> None:
    from immunoplex.training.run import build

    m = pd.read_csv(tiny_cohort / "manifest.csv", dtype=str, keep_default_na=False)
    m["image"] = [str(tiny_cohort / p) for p in m["image"]]
    m.loc[m["survival_time_os"] != "", "event_occurred_os"] = "0"
    m.to_csv(tmp_path / "m.csv", index=False)
    base = [*fast_overrides(tiny_cohort, 1), "task=survival", "model=expression_only",
            f"data.manifest={tmp_path / 'm.csv'}"]  # fmt: skip
    with pytest.raises(SplitError, match="train split, endpoint os .*no events"):
        build(compose_train(base, output_dir=tmp_path / "o"))
    with pytest.raises(ConfigError, match="data.survival.endpoint='dfs'"):
        build(compose_train([*base, "data.survival.endpoint=dfs"], output_dir=tmp_path / "o"))
    with pytest.raises(ConfigError, match="task='cox'"):
        build(compose_train([*base, "task=cox"], output_dir=tmp_path / "o"))


@pytest.mark.slow
def test_survival_training_predict_and_eval(survival_run, tiny_cohort: Path, tmp_path: Path):
    from immunoplex.evaluation.run import evaluate_predictions

    out, summary = survival_run
    assert summary["task"] == "survival" and "test_c_index" in summary
    assert "test_oracle_c_index" in summary  # synthetic: the true log hazard's C on them
    preds = pd.read_csv(out / "predictions_test.csv")
    assert {"risk", "survival_time", "event_occurred"} <= set(preds.columns)
    assert not any(c.startswith(("probability", "logit")) for c in preds.columns)
    assert any(c.startswith("survival_at_") for c in preds.columns)
    ckpt = torch.load(out / "model.ckpt", weights_only=True)
    base = ckpt["immunoplex"]["data"]["survival"]["baseline"]
    assert len(base["times"]) == len(base["cumhaz"]) > 3 and np.all(np.diff(base["cumhaz"]) > 0)
    assert ckpt["immunoplex"]["dims"]["risk_head"] is True
    res = evaluate_predictions(preds, tmp_path / "eval", n_boot=0)
    assert res["survival"]["harrell_c"] == pytest.approx(summary["test_c_index"])
    assert (tmp_path / "eval" / "plots" / "km_risk_groups.png").is_file()


@pytest.mark.slow
def test_predict_writes_risk_and_curves(survival_run, tiny_cohort: Path, tmp_path: Path):
    import subprocess

    out, _ = survival_run
    r = subprocess.run(
        [sys.executable, "-m", "immunoplex.cli.predict", f"ckpt={out / 'model.ckpt'}",
         f"input={tiny_cohort / 'manifest.csv'}", f"expression={tiny_cohort / 'expression.csv'}",
         f"out_dir={tmp_path / 'p'}"], capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    p = pd.read_csv(tmp_path / "p" / "predictions.csv")
    curves = pd.read_csv(tmp_path / "p" / "survival_curves.csv")
    assert "risk" in p.columns and "probability" not in p.columns
    assert list(curves["patient_id"]) == list(p["patient_id"])
    s = curves.drop(columns="patient_id").to_numpy()
    assert (np.diff(s, axis=1) <= 1e-12).all() and (s > 0).all() and (s <= 1).all()
    # a higher risk never has a higher survival curve
    order = np.argsort(p["risk"].to_numpy())
    assert (np.diff(s[order], axis=0) <= 1e-12).all()


@pytest.mark.slow
def test_task_both_has_two_heads(tiny_cohort: Path, tmp_path: Path) -> None:
    from immunoplex.training.run import train

    cfg = compose_train(
        [*fast_overrides(tiny_cohort, epochs=1), "task=both", "model=expression_only",
         f"data.cache_dir={tmp_path}/cache"], output_dir=tmp_path,
    )  # fmt: skip
    summary = train(cfg)
    preds = pd.read_csv(tmp_path / "predictions_test.csv")
    assert {"probability", "risk", "survival_time"} <= set(preds.columns)
    assert "test_auroc" in summary and "test_c_index" in summary
