"""``train(cfg)``: the whole training run as a plain function (tests call it; the CLI wraps it)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from immunoplex.data.datamodule import ResponseDataModule, data_config_from
from immunoplex.errors import ConfigError
from immunoplex.evaluation.calibration import calibration_rule, fit_calibration
from immunoplex.evaluation.metrics import auroc_score
from immunoplex.training.checkpoint import atomic_save, load_checkpoint
from immunoplex.training.inference import infer
from immunoplex.training.module import ResponseModule
from immunoplex.training.schema import set_calibration
from immunoplex.training.survival_fit import finalize_survival
from immunoplex.utils.atomic import atomic_path, fsync_file, write_csv, write_text
from immunoplex.utils.tables import read_table

log = logging.getLogger(__name__)


def _instantiate_group(node: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a dict-of-configs group (callbacks, loggers)."""
    if not node:
        return []
    return [instantiate(v) for v in node.values() if v is not None and "_target_" in v]


def _auroc(y: np.ndarray, p: np.ndarray) -> float | None:
    ok = y >= 0
    y, p = y[ok], p[ok]
    a = auroc_score(y, p)
    return None if np.isnan(a) else a


def bayes_optimal_auroc(truth_csv: Path, predictions: pd.DataFrame) -> float | None:
    """AUROC of the generator's true response probability on the same labelled patients."""
    if not truth_csv.is_file():
        return None
    truth = read_table(truth_csv, "truth table").set_index("patient_id")
    ids = predictions["patient_id"].astype(str)
    if not ids.isin(truth.index).all():
        return None
    p = pd.to_numeric(truth.loc[ids, "p_response"]).to_numpy(dtype=float)
    return _auroc(predictions["label"].to_numpy(dtype=int), p)


def build(cfg: DictConfig) -> tuple[ResponseDataModule, ResponseModule, L.Trainer]:
    """Data module (prepared and set up), LightningModule and Trainer from a composed config."""
    mods = cfg.model.get("modalities")
    reads_image = mods is None or "image" in list(mods)
    if (
        reads_image
        and cfg.model.get("frozen_tile_features")
        and not cfg.data.embeddings.get("enabled")
    ):
        # fixed tile features (model=cell_features): computed once per slide, cached
        log.info("model.frozen_tile_features: tile features are computed once and cached")
        cfg.data.embeddings.enabled = True
    dm = ResponseDataModule(data_config_from(cfg.data, int(cfg.seed)))
    dm.use_tiles = reads_image  # a model without an image branch is given no pixels
    dm.prepare_data()
    dm.setup()
    if dm.feature_table is not None and not str(cfg.model.get("_target_", "")).endswith(
        "FeatureModel"
    ):
        raise ConfigError(
            f"data.features.table is set but model {cfg.model.get('name')!r} reads no patient "
            "feature table; use model=cell_features (experiment=cell_table)"
        )
    if dm.embedding_mode:
        from immunoplex.training.embed import attach_embeddings, build_encoder

        emb = cfg.data.embeddings
        encoder = build_encoder(
            cfg.model, dm.dims["markers"], emb.get("encoder_checkpoint"), seed=int(cfg.seed)
        )
        device = "cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu"
        attach_embeddings(dm, encoder, device=device, progress=True)
    mod_cfg = cfg.module
    pos_weight = dm.pos_weight() if mod_cfg.pos_weight == "auto" else float(mod_cfg.pos_weight)
    task = str(cfg.data.get("task") or cfg.get("task") or "binary")
    module = ResponseModule(
        model=cfg.model,
        dims=dm.dims if task == "binary" else {**dm.dims, "risk_head": True},
        optimizer=cfg.optimizer,
        scheduler=cfg.get("scheduler"),
        pos_weight=pos_weight,
        threshold=float(mod_cfg.threshold),
        augment=mod_cfg.augment,
        channels_last=bool(mod_cfg.channels_last),
        compile=bool(mod_cfg.compile),
        seed=int(cfg.seed),
        metadata=dm.metadata(),
        config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
        task=task,
        survival=cfg.module.get("survival"),
    )
    if dm.embedding_encoder is not None:
        # The checkpoint must embed new slides exactly as the cache did: same frozen encoder.
        module.model.encoder.load_state_dict(dm.embedding_encoder.encoder.state_dict())
        module.model.encoder.requires_grad_(False)
    callbacks = _instantiate_group(cfg.get("callbacks"))
    loggers = _instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return dm, module, trainer


def finalize(
    dm: ResponseDataModule,
    module: ResponseModule,
    best: Path,
    out_dir: Path,
    cfg: DictConfig,
    calibration_data: tuple[np.ndarray, ...] | None = None,
) -> dict[str, Any]:
    """Calibrate on validation patients (or on ``calibration_data``, (logits, labels[, the log
    pos_weight of the models that made each logit]) from elsewhere: the cross-fit's out-of-fold
    logits), predict the test patients, write the summary."""
    ckpt = load_checkpoint(best)
    module.load_state_dict(ckpt["state_dict"])
    device = module.device

    def prepare(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        return module.prepare_batch(batch, train=False)

    treatments = dm.treatments
    frames = {}
    for stage in ("val", "test"):
        if not dm.patient_ids(stage):
            continue
        df = infer(prepare, module.model, dm.dataset(stage), device=device)
        df["treatment"] = [treatments[i] for i in df.pop("treatment_index")]
        if "counterfactual_logits" in df:  # one column per treatment: logit[<treatment>]
            cf = np.asarray(df.pop("counterfactual_logits").tolist(), dtype=float)
            for j, name in enumerate(treatments[: cf.shape[1]]):
                df[f"logit[{name}]"] = cf[:, j]
        df["split"] = stage
        frames[stage] = df
    # task=survival|both: risk, time/event, survival_at_<h>; Breslow baseline into the checkpoint
    surv = finalize_survival(dm, module, prepare, frames, ckpt, best, cfg)
    alpha = cfg.module.get("conformal_alpha", 0.1)
    calib = None
    if calibration_data is not None or ("val" in frames and "logit" in frames["val"]):
        if calibration_data is not None:  # (logits, labels[, the models' log pos_weight])
            logits, labels, *rest = calibration_data
            fit_offset = rest[0] if rest else None
        else:
            logits, labels = frames["val"]["logit"].to_numpy(), frames["val"]["label"].to_numpy()
            fit_offset = None
        calib = fit_calibration(
            logits,
            labels,
            alpha=alpha,
            fit_offset=fit_offset,
            **calibration_rule(cfg.module.get("calibration"), float(module.pos_weight)),
        )
        module.calibration = calib.to_dict()
        set_calibration(ckpt, calib.to_dict())
        atomic_save(ckpt, best)
    final_ckpt = out_dir / "model.ckpt"
    with atomic_path(final_ckpt) as tmp:
        shutil.copyfile(best, tmp)
        fsync_file(tmp)
    summary: dict[str, Any] = {
        "run_dir": str(out_dir),
        "checkpoint": str(final_ckpt),
        "best_checkpoint": str(best),
        "split": dm.split.name if dm.split else None,
        "model": cfg.model.get("name", None),
        "n_patients": {s: len(dm.patient_ids(s)) for s in ("train", "val", "test")},
        "skipped_slides": dm.skipped,
    }
    for stage, df in frames.items():
        if calib is not None:
            df["calibrated_probability"] = calib.probabilities(df["logit"].to_numpy())
            if calib.conformal is not None:
                df["prediction_set"] = calib.predict_sets(df["logit"].to_numpy())
        prob_col = "calibrated_probability" if calib is not None else "probability"
        if prob_col in df:  # task=survival: no response output
            df["predicted_class"] = np.where(
                df[prob_col] >= float(cfg.module.threshold), "responder", "non-responder"
            )
        path = out_dir / f"predictions_{stage}.csv"
        write_csv(path, df)
        if "probability" not in df:
            continue
        summary[f"{stage}_auroc"] = _auroc(df["label"].to_numpy(), df["probability"].to_numpy())
        truth = cfg.data.get("truth")
        if truth:
            summary[f"{stage}_bayes_auroc"] = bayes_optimal_auroc(Path(truth), df)
    if calib is not None:
        summary["temperature"] = calib.temperature
        summary["calibration"] = {k: v for k, v in calib.to_dict().items() if k != "conformal"}
    summary.update(surv)
    write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary


def train(
    cfg: DictConfig, calibration_data: tuple[np.ndarray, ...] | None = None
) -> dict[str, Any]:
    """Train, pick the best (or last) checkpoint, calibrate on validation, score the test split.

    ``data.split.crossfit_folds`` >= 2: fit on train + val, calibrated out of fold
    (:mod:`immunoplex.training.crossfit`)."""
    from immunoplex.training.crossfit import crossfit_folds, train_crossfit

    if crossfit_folds(cfg):
        return train_crossfit(cfg, train)
    L.seed_everything(int(cfg.seed), workers=True)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("prepare_only"):
        # Tile every slide into the cache and stop (run once before a multi-GPU job).
        ResponseDataModule(data_config_from(cfg.data, int(cfg.seed))).prepare_data()
        return {}
    if cfg.get("float32_matmul_precision"):
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    dm, module, trainer = build(cfg)
    write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    # weights_only: resuming never unpickles arbitrary objects from the checkpoint file.
    trainer.fit(module, datamodule=dm, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    select = cfg.get("select_checkpoint", "best")
    if select not in ("best", "last"):
        raise ConfigError(f"select_checkpoint={select!r}: use 'best' or 'last'")
    chosen = ""
    for cb in trainer.checkpoint_callbacks:
        monitored = getattr(cb, "monitor", None) is not None
        path = cb.best_model_path if monitored else cb.last_model_path or cb.best_model_path
        if path and (monitored == (select == "best") or not chosen):
            chosen = path
    best = Path(chosen) if chosen else None
    if best is None or not best.is_file():
        best = out_dir / "checkpoints" / "last.ckpt"
        trainer.save_checkpoint(best)
    if not trainer.is_global_zero:
        return {}
    summary = finalize(dm, module, best, out_dir, cfg, calibration_data)
    summary["metrics"] = {
        k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/"))
    }
    write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary
