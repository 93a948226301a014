"""Cross-fitting: fit on training + validation patients, calibrated out of fold.

A fixed split holds out validation patients to calibrate the model (and, for ``best``
checkpoint selection, to pick the epoch). A model whose settings are chosen and which keeps its
last epoch (the feature models) needs validation only for the temperature. With
``data.split.crossfit_folds=K`` (K >= 2) the run instead

1. trains K models, each on K-1 of K stratified folds of the training + validation patients,
   and predicts the fold it left out (``crossfit/fold<k>/``): an out-of-fold logit for every
   one of those patients;
2. fits the calibration (temperature, conformal sets) on those out-of-fold logits, each less
   its fold model's prior shift (``crossfit_offset``, log pos_weight; see
   :mod:`immunoplex.evaluation.calibration`);
3. trains the final model on all training + validation patients (no validation step), gives it
   that calibration, and scores the test patients once, as a plain run does.

The test patients never enter a fit. K + 1 fits: worth it for models that train in seconds.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict

from immunoplex.errors import ConfigError
from immunoplex.utils.tables import read_table

log = logging.getLogger(__name__)


def crossfit_folds(cfg: DictConfig) -> int:
    """K when this run is a cross-fit driver (K >= 2 and no fold chosen yet), else 0."""
    sc = cfg.data.get("split") or {}
    k = int(sc.get("crossfit_folds") or 0)
    return k if k >= 2 and sc.get("crossfit_fold") is None else 0


def _fold_config(cfg: DictConfig, fold: int, out_dir: Path) -> DictConfig:
    fc = cfg.copy()
    OmegaConf.set_struct(fc, False)
    fc.data.split.crossfit_fold = fold
    fc.paths.output_dir = str(out_dir)
    if fold == -1:  # no validation patient: nothing may monitor a validation metric
        with open_dict(fc):
            fc.trainer.limit_val_batches = 0
            for name, cb in list((fc.get("callbacks") or {}).items()):
                if cb is not None and cb.get("monitor") is not None:
                    fc.callbacks[name] = None
    return fc


def check(cfg: DictConfig, k: int) -> None:
    """Refuse settings that need validation patients in the final fit."""
    if str(cfg.get("select_checkpoint", "best")) != "last":
        raise ConfigError(
            f"data.split.crossfit_folds={k} trains the final model with no validation patient, "
            "so it cannot pick the best epoch: set select_checkpoint=last"
        )
    sched = cfg.get("scheduler")
    if sched is not None and sched.get("monitor") is not None:
        raise ConfigError(
            f"data.split.crossfit_folds={k}: scheduler monitors {sched.get('monitor')!r}, which "
            "the final fit (no validation patient) does not log; use a scheduler without monitor"
        )
    if str(cfg.data.get("task") or cfg.get("task") or "binary") != "binary":
        raise ConfigError(f"data.split.crossfit_folds={k} calibrates a response model: task=binary")


def train_crossfit(cfg: DictConfig, train_one: Any) -> dict[str, Any]:
    """The three steps above; ``train_one`` is :func:`immunoplex.training.run.train`."""
    k = crossfit_folds(cfg)
    check(cfg, k)
    out = Path(str(cfg.paths.output_dir))
    oof = []
    for fold in range(k):
        d = out / "crossfit" / f"fold{fold}"
        log.info("cross-fit: fold %d of %d -> %s", fold + 1, k, d)
        fold_summary = train_one(_fold_config(cfg, fold, d))
        pred = read_table(d / "predictions_val.csv", "out-of-fold predictions")
        # the fold model's own prior shift (log pos_weight of its training patients)
        offset = float((fold_summary.get("calibration") or {}).get("offset", 0.0))
        oof.append(pred.assign(crossfit_fold=fold, crossfit_offset=offset))
    table = pd.concat(oof, ignore_index=True)
    if table["patient_id"].duplicated().any():  # each pooled patient is left out exactly once
        raise RuntimeError("cross-fit: a patient was predicted out of fold twice")
    from immunoplex.utils.atomic import write_csv

    write_csv(out / "crossfit" / "oof_predictions.csv", table)
    log.info("cross-fit: final fit on all %d pooled patients", len(table))
    summary = train_one(
        _fold_config(cfg, -1, out),
        calibration_data=(
            table["logit"].to_numpy(float),
            table["label"].to_numpy(int),
            table["crossfit_offset"].to_numpy(float),
        ),
    )
    summary["crossfit"] = {"folds": k, "n_out_of_fold": len(table)}
    return summary
