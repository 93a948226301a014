"""evaluate_predictions end to end: outputs, report content, validation errors."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from immunoplex.errors import ManifestError
from immunoplex.evaluation.inputs import read_predictions_csv, validate_predictions
from immunoplex.evaluation.run import evaluate_predictions

FAST = {"n_boot": 40, "roc_band_boot": 10}


def test_report_outputs_and_content(tmp_path: Path, predictions: pd.DataFrame) -> None:
    csv = tmp_path / "preds.csv"
    predictions.assign(prediction_set="both").to_csv(csv, index=False)
    out = tmp_path / "eval"
    res = evaluate_predictions(csv, out, **FAST)
    for name in ("metrics.json", "metrics.csv", "confusion_matrix.csv", "report.md", "report.html"):
        assert (out / name).is_file(), name
    for png in ("roc", "pr", "calibration", "decision_curve", "confusion_matrix"):
        assert (out / "plots" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "metrics.json").read_text()) == res

    # unlabelled rows are excluded and counted; calibrated probability is the one evaluated
    assert res["input"]["n_unlabelled"] == 8
    assert res["input"]["n_labelled"] == len(predictions) - 8
    assert res["input"]["prob_column"] == "calibrated_probability"
    cal = res["calibration"]
    assert cal["calibrated"]["ece"]["estimate"] < cal["uncalibrated"]["ece"]["estimate"]
    assert res["conformal"]["coverage"] == 1.0 and res["conformal"]["mean_set_size"] == 2.0
    assert set(res["groups"]) == {"cohort", "treatment"}
    auc = res["overall"]["metrics"]["auroc"]
    assert auc["ci_low"] < auc["estimate"] < auc["ci_high"]

    html = (out / "report.html").read_text()
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(imgs) == 5
    assert all(base64.b64decode(i)[:4] == b"\x89PNG" for i in imgs)
    assert not re.search(r'(src|href)="(?!data:)', html)  # no external assets
    assert f"{auc['estimate']:.3f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}]" in html
    assert "Breakdown by cohort" in html and "cohortA" in html
    md = (out / "report.md").read_text()
    assert "![ROC curve](plots/roc.png)" in md and f"{auc['estimate']:.3f}" in md
    cm = pd.read_csv(out / "confusion_matrix.csv", index_col=0)
    assert cm.to_numpy().sum() == res["input"]["n_labelled"]


def test_group_with_one_class_gets_defined_metrics_and_note(
    tmp_path: Path, predictions: pd.DataFrame
) -> None:
    df = predictions.copy()
    df.loc[df.index[:3], "cohort"] = ""
    df.loc[df.cohort == "cohortB", "label"] = "1"
    res = evaluate_predictions(df, tmp_path, group_by=["cohort", "site"], make_plots=False, **FAST)
    b = res["groups"]["cohort"]["cohortB"]
    assert b["metrics"]["auroc"]["estimate"] is None
    assert b["metrics"]["specificity"]["estimate"] is None
    assert b["metrics"]["sensitivity"]["estimate"] is not None
    assert b["metrics"]["brier"]["ci_low"] is not None
    assert "only responders" in b["note"]
    assert res["groups"]["cohort"]["(missing)"]["n_unlabelled"] == 3
    assert any("'site'" in n for n in res["notes"])
    html = (tmp_path / "report.html").read_text()
    assert "only responders" in html and "<img" not in html
    assert not (tmp_path / "plots" / "roc.png").exists()


def test_paired_comparison_and_id_checks(tmp_path: Path, predictions: pd.DataFrame) -> None:
    other = predictions[["patient_id", "label"]].copy()
    rng = np.random.default_rng(1)
    other["probability"] = rng.uniform(0, 1, len(other))
    res = evaluate_predictions(
        predictions,
        tmp_path / "a",
        compare=other,
        name="multimodal",
        compare_name="expr",
        group_by=(),
        **FAST,
    )
    c = res["comparison"]
    assert c["n_paired_labelled"] == res["input"]["n_labelled"]
    assert c["delong"]["auroc_a"] == pytest.approx(res["overall"]["metrics"]["auroc"]["estimate"])
    assert c["delong"]["p_value"] < 0.05
    assert (tmp_path / "a" / "plots" / "roc_compare.png").is_file()
    assert "Paired comparison: multimodal vs expr" in (tmp_path / "a" / "report.md").read_text()

    fewer = other.iloc[5:]
    with pytest.raises(ManifestError) as err:
        evaluate_predictions(predictions, tmp_path / "b", compare=fewer, compare_source="b.csv")
    assert str(err.value) == (
        "b.csv: patient ids do not match predictions (5 only in the first: P000, P001, P002, "
        "...; 0 only in the second); pass intersect=true to compare the 155 shared patients"
    )
    res = evaluate_predictions(predictions, tmp_path / "c", compare=fewer, intersect=True, **FAST)
    assert res["comparison"]["n_shared"] == 155 and res["comparison"]["n_excluded_a"] == 5

    clash = other.copy()
    clash.loc[20, "label"] = "0" if predictions.loc[20, "label"] == "1" else "1"
    with pytest.raises(ManifestError, match="label of patient_id 'P020' is"):
        evaluate_predictions(predictions, tmp_path / "d", compare=clash, make_plots=False)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "patient_id,probability\nP1,0.5\n",
            "missing required column(s) label (found: patient_id, probability)",
        ),
        (
            "patient_id,label\nP1,1\n",
            "missing required column(s) probability (found: patient_id, label)",
        ),
        (
            "patient_id,label,probability\nP1,1,0.5\nP2,0,1.5\n",
            "row 2 (patient_id 'P2'): probability 1.5 is outside [0, 1]",
        ),
        (
            "patient_id,label,probability\nP1,1,0.5\nP2,0,NaN\n",
            "row 2 (patient_id 'P2'): probability 'NaN' is not a finite number",
        ),
        ("patient_id,label,probability\nP1,1,\n", "row 1 (patient_id 'P1'): probability is empty"),
        (
            "patient_id,label,probability\nP1,1,0.2\nP2,0,0.3\nP1,0,0.4\n",
            "row 3: duplicated patient_id 'P1' (first at row 1)",
        ),
        (
            "patient_id,label,probability\nP1,yes,0.2\n",
            "row 1 (patient_id 'P1'): label 'yes' is not 1, 0, -1 or empty",
        ),
        ("patient_id,label,probability\n,1,0.2\n", "row 1: patient_id is empty"),
        (
            "patient_id,label,probability,calibrated_probability\nP1,1,0.2,-0.1\n",
            "row 1 (patient_id 'P1'): calibrated_probability -0.1 is outside [0, 1]",
        ),
        (
            "patient_id,label,probability\nP1,,0.2\n",
            "no labelled rows (label 1 or 0): nothing to evaluate",
        ),
    ],
)
def test_input_errors_are_one_line_and_exact(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ManifestError) as err:
        evaluate_predictions(path, tmp_path / "out", n_boot=0, make_plots=False)
    assert str(err.value) == f"{path}: {message}"
    assert "\n" not in str(err.value)


def test_labels_accept_minus_one_and_floats(tmp_path: Path) -> None:
    path = _write(tmp_path, "patient_id,label,probability\nP1,1.0,0.9\nP2,-1,0.4\nP3,0,0.1\n")
    df = validate_predictions(read_predictions_csv(path), str(path))
    assert df["label"].tolist() == [1, -1, 0]
    assert df.attrs["prob_column"] == "probability"
