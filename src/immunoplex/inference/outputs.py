"""The run's tables: calibrated probabilities and ``predictions.csv`` / ``predictions.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from immunoplex.inference.predictor import Predictor
from immunoplex.utils.atomic import write_csv, write_json
from immunoplex.utils.jsonsafe import to_json


def _calibrate(pred: Predictor, df: pd.DataFrame) -> pd.DataFrame:
    """Calibrated probability, class and conformal set from the checkpoint's calibration."""
    logits = df["logit"].to_numpy(dtype=float)
    names = pred.label_names
    if pred.calibration is not None:
        df["calibrated_probability"] = pred.calibration.probabilities(logits)
        if pred.calibration.conformal is not None:
            df["prediction_set"] = pred.calibration.predict_sets(logits)
        else:
            df["prediction_set"] = None
        col = "calibrated_probability"
    else:
        df["calibrated_probability"] = np.nan
        df["prediction_set"] = None
        col = "probability"
    df["predicted_class"] = np.where(df[col] >= pred.threshold, names[1], names[0])
    return survival_outputs(pred, df)


def survival_outputs(pred: Predictor, df: pd.DataFrame) -> pd.DataFrame:
    """Models with a survival head: ``survival_at_<h>`` columns and, in ``df.attrs``, the
    per-patient curves S(t | x) = exp(-H0(t) exp(risk)) on 25 times (written to
    ``survival_curves.csv``) from the checkpoint's Breslow baseline. A task=survival model has no
    trained response head: its probability columns are dropped."""
    from immunoplex.evaluation.survival import survival_at
    from immunoplex.training.survival_fit import survival_columns_frame

    data = pred.meta.get("data") or {}
    if "risk" not in df.columns:
        return df
    if data.get("task") == "survival":
        drop = ("probability", "calibrated_probability", "predicted_class", "prediction_set")
        df = df.drop(
            columns=[
                c for c in df.columns if c in drop or c.startswith(("logit", "counterfactual"))
            ]
        )
    baseline = (data.get("survival") or {}).get("baseline")
    if not baseline or not baseline.get("times"):
        return df
    risk = df["risk"].to_numpy(dtype=float)
    at = survival_columns_frame(risk, baseline)
    for c in at.columns:
        df[c] = at[c].to_numpy()
    times = np.asarray(baseline["times"], dtype=float)
    grid = np.unique(np.quantile(times, np.linspace(0, 1, 25)).round(3))
    curves = pd.DataFrame(survival_at(times, np.asarray(baseline["cumhaz"]), risk, grid))
    curves.columns = [f"S({t:g})" for t in grid]
    curves.insert(0, "patient_id", df["patient_id"].to_numpy())
    df.attrs["survival_curves"] = curves
    return df


COLUMN_ORDER = [
    "patient_id",
    "slide_ids",
    "label",
    "cohort",
    "treatment",
    "probability",
    "calibrated_probability",
    "predicted_class",
    "prediction_set",
    "logit",
    "modalities",
    "markers_used",
    "markers_missing",
    "degraded",
    "genes_missing",
    "genes_filled",
    "n_tiles",
    "treatment_source",
    "skipped_slides",
]


def write_predictions(out_dir: Path, df: pd.DataFrame, header: dict[str, Any]) -> None:
    """predictions.csv (lists joined by ';') and predictions.json, both atomically."""
    records = [to_json(r) for r in df.to_dict(orient="records")]
    flat = df.copy()
    for col in flat.columns:
        if flat[col].map(lambda v: isinstance(v, list)).any():
            flat[col] = flat[col].map(lambda v: ";".join(map(str, v)) if isinstance(v, list) else v)
    write_csv(out_dir / "predictions.csv", flat)
    curves = df.attrs.get("survival_curves")
    if curves is not None:  # a survival head with a stored baseline: S(t) per patient
        write_csv(out_dir / "survival_curves.csv", curves)
    write_json(out_dir / "predictions.json", {**to_json(header), "patients": records})
