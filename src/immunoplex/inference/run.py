"""Inference on new slides: checkpoint + slides (+ expression, clinical) -> predictions, heatmaps.

``predict(cfg)`` is the whole run as a plain function (tests call it; ``immunoplex-predict`` wraps
it). Everything the model needs to turn a new slide into its inputs comes from the checkpoint:
panel and aliases (markers matched by name), tiling, intensity percentiles, gene list and
expression normalisation, clinical statistics, treatments and calibration. Results are written
per patient (``patients/<id>.json``) and per slide (``slides/<slide_id>/``) atomically, so a
re-run skips what is finished, then assembled into ``predictions.csv`` / ``predictions.json``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from immunoplex.errors import ConfigError, ManifestError
from immunoplex.inference.inputs import (
    collect_inputs,
    expression_only_inputs,
    prepare_expression,
    read_clinical_table,
    treatment_index,
)
from immunoplex.inference.options import PatientContext, PredictOptions
from immunoplex.inference.outputs import COLUMN_ORDER, _calibrate, write_predictions
from immunoplex.inference.patient import _finished, patient_key, predict_patient
from immunoplex.inference.predictor import Predictor
from immunoplex.inference.prefetch import SlidePrefetcher, prepare_slide
from immunoplex.inference.table_inputs import prepare_table
from immunoplex.tiles.cache import TileCache
from immunoplex.utils.atomic import write_json
from immunoplex.utils.names import safe_name

log = logging.getLogger(__name__)


def predict(cfg: Any) -> pd.DataFrame:
    """Run inference as configured by ``configs/predict.yaml``; returns one row per patient."""
    opts = cfg if isinstance(cfg, PredictOptions) else PredictOptions.from_config(cfg)
    out_dir = Path(opts.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if str(opts.ckpt).endswith(".json"):
        return predict_elastic_net(opts, out_dir)
    pred = Predictor.load(opts.ckpt, opts.device, opts.required_markers)
    if opts.input in (None, "", "none", "null"):
        patients = expression_only_inputs(opts.expression, opts.cohort)
    else:
        patients = collect_inputs(
            opts.input,
            pred.clinical_columns,
            opts.mpp,
            opts.input_kind,
            opts.cohort,
            names_file=opts.channel_names,
        )
    dup = pd.Series([p.patient_id for p in patients]).duplicated()
    if dup.any():
        raise ManifestError(
            f"{opts.input}: patient id {patients[int(dup.idxmax())].patient_id!r} appears twice"
        )
    expression = prepare_expression(
        pred, opts.expression, patients, opts.allow_missing_genes, opts.small_cohort
    )
    clinical = read_clinical_table(opts.clinical, pred.clinical_columns) if opts.clinical else {}
    if opts.treatment is not None:
        treatment_index(pred, opts.treatment)  # fail early on an unknown name
    cache = TileCache(opts.cache_dir or out_dir / "cache")
    features = prepare_table(pred, opts, patients, out_dir)  # cell stage first, when needed
    ctx = PatientContext(pred, opts, out_dir, cache, expression, clinical, features=features,
                         overlap=opts.overlap())  # fmt: skip
    log.info("predicting %d patient(s) with %s on %s", len(patients), pred.path, pred.device)
    from tqdm.auto import tqdm

    results = []
    n_skipped = 0
    keys = [patient_key(ctx, p) for p in patients]
    finished = [_finished(ctx, p, k) for p, k in zip(patients, keys, strict=True)]
    if not opts.explain and ctx.overlap:  # slide k+1 opened, statistics fitted meanwhile
        ctx.prefetch = SlidePrefetcher(lambda s: prepare_slide(pred, s), ahead=1)
        ctx.prefetch.schedule(
            s for p, f in zip(patients, finished, strict=True) if f is None for s in p.slides
        )
    try:
        it = zip(patients, keys, finished, strict=True)
        for p, key, done in tqdm(
            list(it), desc="immunoplex-predict", unit="patient", disable=not opts.progress
        ):
            if done is None:
                done = {"key": key, **predict_patient(ctx, p)}
                path = out_dir / "patients" / f"{safe_name(p.patient_id)}.json"
                write_json(path, done)
            else:
                n_skipped += 1
            results.append(done)
    finally:
        if ctx.prefetch is not None:
            ctx.prefetch.close()
            ctx.prefetch = None
    if n_skipped:
        log.info("%d patient(s) already finished in %s were not recomputed", n_skipped, out_dir)
    df = pd.DataFrame([r["row"] for r in results])
    df = _calibrate(pred, df)
    cols = [c for c in COLUMN_ORDER if c in df.columns]
    df = df[cols + [c for c in df.columns if c not in cols]]
    header = {
        "checkpoint": str(pred.path),
        "model": pred.meta.get("model", {}).get("name"),
        "markers": pred.markers,
        "required_markers": pred.required,
        "genes": len(pred.genes),
        "gene_report": expression.report.to_dict() if expression.report else None,
        "feature_report": (
            expression.feature_report.to_dict() if expression.feature_report else None
        ),
        "treatments": pred.treatments,
        "feature_table": features.source if features is not None else None,
        "threshold": pred.threshold,
        "calibrated": pred.calibration is not None,
        "device": str(pred.device),
        "n_recomputed": len(results) - n_skipped,
    }
    write_predictions(out_dir, df, header)
    if opts.explain:
        from immunoplex.inference.explain import write_explanations

        write_explanations(
            out_dir,
            {r["row"]["patient_id"]: r.get("explanation") for r in results},
            pred,
            top_genes=opts.top_genes,
        )
    return df


def predict_elastic_net(opts: PredictOptions, out_dir: Path) -> pd.DataFrame:
    """Score an expression table with an elastic-net model saved as JSON (scripts/loco_icb.py)."""
    from immunoplex.expression.io import read_expression
    from immunoplex.expression.linear import predict_expression
    from immunoplex.expression.transfer import is_transfer_model

    path = Path(opts.ckpt)
    if opts.expression is None:
        raise ConfigError(f"{path}: an elastic-net model needs expression=PATH")
    try:
        model = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the elastic-net model ({err})") from err
    table = read_expression(opts.expression)
    if is_transfer_model(model):
        return _predict_transfer(path, model, table.values, out_dir)
    prob = predict_expression(model, table, allow_missing=opts.allow_missing_genes)
    threshold = float(model.get("threshold", 0.5))
    df = pd.DataFrame(
        {
            "patient_id": [str(i) for i in table.values.index],
            "probability": prob,
            "predicted_class": np.where(prob >= threshold, "responder", "non-responder"),
            "modalities": "expression",
        }
    )
    header = {"checkpoint": str(path), "model": "elastic_net", "threshold": threshold}
    write_predictions(out_dir, df, header)
    return df


def _predict_transfer(path: Path, model: dict, values: pd.DataFrame, out_dir: Path) -> pd.DataFrame:
    """A transfer model (scripts/loco_features.py): within-sample features from the genes present,
    no gene filled in; the coverage of every feature goes into predictions.json."""
    from immunoplex.expression.transfer import predict_transfer

    prob, coverage = predict_transfer(model, values)
    df = pd.DataFrame(
        {
            "patient_id": [str(i) for i in values.index],
            "probability": prob,
            "predicted_class": np.where(prob >= 0.5, "responder", "non-responder"),
            "modalities": "expression",
        }
    )
    for rep in coverage:
        log.info("%s: %s", path, rep["summary"])
    header = {"checkpoint": str(path), "model": model["kind"], "threshold": 0.5,
              "coverage": coverage}  # fmt: skip
    write_predictions(out_dir, df, header)
    return df
