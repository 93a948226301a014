"""immunoplex-eval's survival section: KM by risk group, log-rank, HR, calibration, report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from immunoplex.evaluation import survival as S
from immunoplex.evaluation.run import evaluate_predictions
from immunoplex.synth import survival as SV
from immunoplex.synth.settings import resolve_settings
from immunoplex.synth.truth import sample_truth


@pytest.fixture(scope="module")
def preds() -> pd.DataFrame:
    s = resolve_settings("default")
    truth = sample_truth(240, 3, s["truth"])
    sv = SV.sample_survival(truth, s["truth"], s["survival"], np.random.default_rng(1))
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "patient_id": [f"P{i:03d}" for i in range(len(truth))],
            "label": truth["label_true"],
            "probability": truth["p_response"],
            "risk": sv["log_hazard"] + 0.3 * rng.normal(size=len(truth)),
            "survival_time": sv["survival_time_os"],
            "event_occurred": sv["event_occurred_os"],
        }
    )


def test_survival_section_matches_the_library_and_is_in_the_report(
    tmp_path: Path, preds: pd.DataFrame
) -> None:
    from lifelines.statistics import logrank_test
    from lifelines.utils import concordance_index

    res = evaluate_predictions(preds, tmp_path, n_boot=20, roc_band_boot=2)
    s = res["survival"]
    ok = preds["survival_time"].notna()
    t, e = preds.loc[ok, "survival_time"].to_numpy(), preds.loc[ok, "event_occurred"].to_numpy()
    r = preds.loc[ok, "risk"].to_numpy()
    assert s["n"] == ok.sum() and s["n_without_time"] == (~ok).sum()
    assert s["harrell_c"] == pytest.approx(concordance_index(t, -r, e), abs=1e-6)
    g = S.risk_groups(r, 2)
    lr = logrank_test(t[g == 0], t[g == 1], e[g == 0], e[g == 1])
    assert s["risk_groups"]["logrank"]["p_value"] == pytest.approx(lr.p_value, abs=1e-6)
    assert s["risk_groups"]["logrank"]["statistic"] == pytest.approx(lr.test_statistic, abs=1e-6)
    assert s["risk_groups"]["hazard_ratio"]["hr"] > 2
    assert len(s["calibration"]["bins"]) == 4
    html = (tmp_path / "report.html").read_text()
    assert "Kaplan-Meier by predicted risk group" in html and "log-rank" in html
    assert "Calibration of survival" in html
    assert (tmp_path / "plots" / "km_risk_groups.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "metrics.json").read_text())["survival"]["harrell_c"]


def test_survival_only_predictions_tertiles_and_model_curves(
    tmp_path: Path, preds: pd.DataFrame
) -> None:
    df = preds.drop(columns=["probability"])
    df["survival_at_12"] = np.exp(-0.5 * np.exp(df["risk"]))
    res = evaluate_predictions(df, tmp_path, survival_groups=3, survival_horizons=[6, 12])
    s = res["survival"]
    assert "overall" not in res and [x["name"] for x in s["risk_groups"]["groups"]] == [
        "low risk", "intermediate risk", "high risk",
    ]  # fmt: skip
    assert [a["horizon"] for a in s["time_auc"]] == [6, 12]
    assert s["calibration"]["horizon"] == 12 and s["calibration_source"].startswith("model")
    assert "Kaplan-Meier" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"survival_time": -1.0}, "survival_time time -1.0 is negative"),
        ({"survival_time": np.nan}, "event .* without a time"),
        ({"event_occurred": 3}, "event '3' is not 0/1"),
    ],
)
def test_bad_survival_input_is_one_line_naming_the_row(
    tmp_path: Path, preds: pd.DataFrame, change: dict, message: str
) -> None:
    df = preds.copy()
    df["event_occurred"] = df["event_occurred"].astype(object)
    for k, v in change.items():
        df.loc[4, k] = v
    if "survival_time" in change and np.isnan(change["survival_time"]):
        df.loc[4, "event_occurred"] = 1
    csv = tmp_path / "p.csv"
    df.to_csv(csv, index=False)
    out = subprocess.run(
        [sys.executable, "-m", "immunoplex.cli.eval", f"predictions={csv}", f"out_dir={tmp_path}/o",
         "n_boot=0"], capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "row 5 (patient_id 'P004')" in lines[0], out.stderr
    assert pytest.importorskip("re").search(message, lines[0])


def test_no_events_is_an_error(tmp_path: Path, preds: pd.DataFrame) -> None:
    from immunoplex.errors import SplitError

    df = preds.copy()
    df.loc[df["survival_time"].notna(), "event_occurred"] = 0
    with pytest.raises(SplitError, match="no events"):
        evaluate_predictions(df, tmp_path, n_boot=0)
