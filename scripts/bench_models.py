"""Model comparison on a synthetic cohort: shipped model configs x seeds of the fixed split.

    .venv/bin/python scripts/bench_models.py --data data/synthetic \
        --models cell_features multimodal image_only expression_only --seeds 0 1 2 3 4

Each (model, seed) is one ``immunoplex-train`` run (the shipped config, ``seed`` changes the
validation draw and the initialisation; the test split is the manifest's), scored on its test
patients. ``logreg`` is a plain scikit-learn baseline (L2 logistic regression, C by 5-fold CV on
the training patients, temperature-calibrated on validation) on the feature model's raw features
plus feature x treatment interactions, with the same split; ``logreg_cells`` the same on the
``cell_table`` run's features. The ``cell_table*`` rows read the cell stage's patient table
(``make cells`` first: ``<data>/cell_stage/cell_features.csv``); ``cell_table_cells_only`` and
``cell_table_expression_only`` are that model without its expression or its cell inputs.

Columns: test AUROC; the Bayes AUROC (the generator's p_response) of the same patients and the
ratio; ECE (15 equal-width bins) of the calibrated probabilities; the Spearman correlation of
the predicted benefit p(combo) - p(mono) with the truth's benefit (from the latents and
effects); wall time.
Results append to ``--results`` (JSONL, one line per run, re-runs skip finished runs) and the
table is written to ``--table`` (markdown) and printed.

``--task survival`` (issue 20): every run is ``task=survival`` (the Cox head on
``data.survival.endpoint``); columns are the test C-index (Harrell), the oracle C-index of the
generator's true log hazard on the same patients and their ratio (target >= 0.95).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import special, stats

REPO = Path(__file__).resolve().parents[1]
COMBO, MONO = "bexmarilimab+anti-PD-1", "anti-PD-1"
#: rows run as an experiment config (its model plus training settings) instead of model=<row>,
#: with the row's own overrides: the feature model on the cell table, and that model with one
#: of its two measured modalities removed (the fusion check of issue 16)
EXPERIMENTS: dict[str, tuple[str, list[str]]] = {
    "cell_features": ("cell_features", []),
    "cell_table": ("cell_table", []),
    "cell_table_cells_only": ("cell_table", ["model.modalities=[]"]),
    "cell_table_expression_only": ("cell_table", ["data.features.table=null"]),
    # fitted on train + val, calibrated on 5-fold out-of-fold logits (training.crossfit)
    "cell_table_crossfit": ("cell_table", ["data.split.crossfit_folds=5"]),
}
#: simple-baseline rows: sklearn's L2 logistic regression (C by 5-fold CV on the training
#: patients) on the raw features of the feature-model run of the same seed
LOGREG = {"logreg": "cell_features", "logreg_cells": "cell_table",
          "logreg_cells_crossfit": "cell_table"}  # fmt: skip
#: baselines fitted on train + val and calibrated on 5-fold out-of-fold logits (as *_crossfit)
CROSSFIT_LOGREG = {"logreg_cells_crossfit"}


def true_benefit(truth: pd.DataFrame, effects: dict) -> pd.Series:
    """p(response | combo) - p(response | mono) per patient, from the latents and effects."""
    from immunoplex.synth.truth import logit_parts

    p = {}
    for arm in (COMBO, MONO):
        lat = truth.copy()
        lat["treatment"] = arm
        p[arm] = special.expit(logit_parts(lat, effects).sum(axis=1))
    return p[COMBO] - p[MONO]


def score(pred: pd.DataFrame, truth: pd.DataFrame, benefit: pd.Series) -> dict:
    from immunoplex.evaluation.metrics import auroc_score, ece

    pred = pred[pred["label"] >= 0]
    ids = pred["patient_id"].astype(str)
    y = pred["label"].to_numpy(int)
    out = {
        "n_test": int(len(pred)),
        "auroc": float(auroc_score(y, pred["probability"].to_numpy(float))),
        "bayes": float(auroc_score(y, truth.loc[ids, "p_response"].to_numpy(float))),
    }
    prob = pred.get("calibrated_probability", pred["probability"]).to_numpy(float)
    out["ece"] = float(np.asarray(ece(y, prob)).reshape(-1)[0])
    # the same ECE of the generator's true probabilities on the same patients and labels: the
    # floor that sampling noise leaves at this test size (a calibrated model cannot beat it on
    # average)
    truth_p = truth.loc[ids, "p_response"].to_numpy(float)
    out["bayes_ece"] = float(np.asarray(ece(y, truth_p)).reshape(-1)[0])
    cols = [f"logit[{MONO}]", f"logit[{COMBO}]"]
    if all(c in pred for c in cols):
        # calibrated under each arm: sigmoid((logit - offset) / T), as calibrated_probability
        t, b = float(pred.attrs.get("temperature", 1.0)), float(pred.attrs.get("offset", 0.0))
        pm = special.expit((pred[cols[0]].to_numpy(float) - b) / t)
        pc = special.expit((pred[cols[1]].to_numpy(float) - b) / t)
        out["benefit_spearman"] = float(
            stats.spearmanr(pc - pm, benefit.loc[ids].to_numpy(float))[0]
        )
    return out


def recalibrate(run: Path, pred: pd.DataFrame) -> None:
    """``--recalibrate``: refit a finished run's calibration with today's rule (configs/train.yaml
    ``module.calibration``: prior shift, temperature test) from its held-out logits
    (predictions_val.csv, or the cross-fit's out-of-fold logits), without retraining; the test
    predictions' calibrated_probability and the attrs the benefit uses are replaced. The
    checkpoint is not touched."""

    from omegaconf import OmegaConf

    from immunoplex.evaluation.calibration import calibration_rule, fit_calibration
    from immunoplex.paths import config_dir
    from immunoplex.training.checkpoint import load_checkpoint

    def pos_weight(ckpt: Path) -> float:
        return float(load_checkpoint(ckpt)["hyper_parameters"]["pos_weight"])

    settings = OmegaConf.load(config_dir() / "train.yaml").module.calibration
    rule = calibration_rule(settings, pos_weight(run / "model.ckpt"))
    oof = run / "crossfit" / "oof_predictions.csv"
    if oof.is_file():
        held = pd.read_csv(oof, dtype={"patient_id": str})
        if "crossfit_offset" not in held:  # written before the offset existed: the folds'
            folds = sorted(held["crossfit_fold"].unique())
            shift = {k: calibration_rule(settings, pos_weight(
                run / "crossfit" / f"fold{k}" / "model.ckpt"))["offset"] for k in folds}  # fmt: skip
            held["crossfit_offset"] = held["crossfit_fold"].map(shift)
        fit_offset = held["crossfit_offset"].to_numpy(float)
    else:
        held, fit_offset = pd.read_csv(run / "predictions_val.csv", dtype={"patient_id": str}), None
    cal = fit_calibration(held["logit"].to_numpy(float), held["label"].to_numpy(float), alpha=None,
                          fit_offset=fit_offset, **rule)  # fmt: skip
    pred["calibrated_probability"] = cal.probabilities(pred["logit"].to_numpy(float))
    pred.attrs["temperature"], pred.attrs["offset"] = cal.temperature, cal.offset


def run_model(
    model: str, seed: int, data: Path, runs: Path, extra: list[str], recal: bool = False
) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from immunoplex.paths import config_dir
    from immunoplex.training.run import train

    out = runs / model / f"seed{seed}"
    exp, row_overrides = EXPERIMENTS.get(model, (None, []))
    overrides = [
        f"experiment={exp}" if exp else f"model={model}",
        *row_overrides,
        f"seed={seed}",
        f"data.root={data}",
        "trainer.enable_progress_bar=false",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    t0 = time.perf_counter()
    done = out / "summary.json"
    if done.is_file():  # a finished run (e.g. the table was interrupted): score it again
        summary = json.loads(done.read_text())
        wall = float(summary.get("wall_s", float("nan")))
    else:
        summary = train(cfg)
        wall = time.perf_counter() - t0
        done.write_text(json.dumps({**summary, "wall_s": wall}, default=str))
    pred = pd.read_csv(out / "predictions_test.csv", dtype={"patient_id": str})
    pred.attrs["temperature"] = summary.get("temperature", 1.0)
    pred.attrs["offset"] = (summary.get("calibration") or {}).get("offset", 0.0)
    if recal:
        recalibrate(out, pred)
    best = Path(summary["best_checkpoint"]).name
    return {"wall_s": wall, "best": best, "run_dir": str(out), "pred": pred}


def logreg_baseline(run_dir: Path, data: Path, crossfit: bool = False) -> dict:
    """sklearn L2 logistic regression on the feature model's raw features (same split);
    ``crossfit``: fitted on train + val, temperature from 5-fold out-of-fold logits."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from immunoplex.data.datamodule import ResponseDataModule, data_config_from
    from immunoplex.evaluation.calibration import calibration_rule, fit_calibration
    from immunoplex.training.checkpoint import load_checkpoint, model_from_checkpoint
    from immunoplex.training.embed import attach_embeddings, build_encoder
    from immunoplex.training.inference import eval_loader

    t0 = time.perf_counter()
    ckpt = load_checkpoint(run_dir / "model.ckpt")
    cfg = ckpt["immunoplex"]["config"]
    model = model_from_checkpoint(ckpt)
    dm = ResponseDataModule(data_config_from(dict(cfg["data"]), int(cfg["seed"])))
    dm.setup()
    attach_embeddings(dm, build_encoder(cfg["model"], dm.dims["markers"]))
    frames = {}
    for stage in ("train", "val", "test"):
        ds = dm.dataset(stage)
        xs, ws, ts, ys, ids = [], [], [], [], []
        for batch in eval_loader(ds, 16):
            raw, w, _ = model.features(batch)
            xs.append(raw.detach().numpy())
            ws.append(w.numpy())
            ts.append(batch["treatment"].numpy())
            ys.append(batch["label"].numpy())
            ids += [ds.records[int(i)].patient_id for i in batch["index"]]
        frames[stage] = (np.concatenate(xs), np.concatenate(ws), np.concatenate(ts),
                         np.concatenate(ys), ids)  # fmt: skip
    x_tr, w_tr = frames["train"][0], frames["train"][1]
    mean = (x_tr * w_tr).sum(0) / np.maximum(w_tr.sum(0), 1)
    sd = np.sqrt(((x_tr - mean) ** 2 * w_tr).sum(0) / np.maximum(w_tr.sum(0) - 1, 1)) + 1e-6
    combo = dm.treatments.index(COMBO)

    def design(x: np.ndarray, w: np.ndarray, t: np.ndarray) -> np.ndarray:
        z = np.where(w > 0, (x - mean) / sd, 0.0)
        c = (t == combo).astype(float)[:, None]
        return np.concatenate([z, z * c, c], axis=1)

    # the training run's temperature rule; sklearn's fit is unweighted, so no prior shift
    rule = calibration_rule((cfg.get("module") or {}).get("calibration"))
    x, w, t, y, _ = frames["train"]
    clf = LogisticRegressionCV(Cs=12, cv=5, scoring="neg_log_loss", max_iter=5000)
    if crossfit:  # standardised on train as above; the pool is train + val
        xs, ys = zip(*[(design(*frames[s][:3]), frames[s][3]) for s in ("train", "val")])
        xp, yp = np.concatenate(xs), np.concatenate(ys).astype(int)
        folds = StratifiedKFold(5, shuffle=True, random_state=int(cfg["seed"]) + 2)
        oof = cross_val_predict(clf, xp, yp, cv=folds, method="decision_function")
        clf.fit(xp, yp)
        cal = fit_calibration(oof, yp, **rule)
    else:
        clf.fit(design(x, w, t), y.astype(int))
        val_logit = clf.decision_function(design(*frames["val"][:3]))
        cal = fit_calibration(val_logit, frames["val"][3].astype(int), **rule)
    logit = {"test": clf.decision_function(design(*frames["test"][:3]))}
    x, w, t, y, ids = frames["test"]
    pred = pd.DataFrame({"patient_id": ids, "label": y.astype(int), "logit": logit["test"]})
    pred["probability"] = special.expit(pred["logit"])
    pred["calibrated_probability"] = cal.probabilities(pred["logit"].to_numpy())
    for name, arm in ((MONO, 1 - combo), (COMBO, combo)):
        pred[f"logit[{name}]"] = clf.decision_function(design(x, w, np.full_like(t, arm)))
    pred.attrs["temperature"] = cal.temperature
    return {"wall_s": time.perf_counter() - t0, "best": "-", "run_dir": str(run_dir), "pred": pred}


def survival_table(rows: list[dict]) -> str:
    df = pd.DataFrame(rows)
    lines = [
        "| model | seeds | test C-index | oracle C-index (same patients) | ratio to oracle | "
        "wall time / run |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for model, g in df.groupby("model", sort=False):
        cells = []
        for col in ("c_index", "oracle_c_index", "ratio"):
            v = g[col].dropna().to_numpy(float)
            sd = v.std(ddof=1) if len(v) > 1 else 0.0
            cells.append(f"{v.mean():.3f} ± {sd:.3f}")
        seeds = ",".join(str(s) for s in g["seed"])
        lines.append(
            f"| {model} | {seeds} | " + " | ".join(cells) + f" | {g['wall_s'].mean():.0f} s |"
        )
    return "\n".join(lines)


def mean_sd(g: pd.DataFrame, col: str, fmt: str = "{:.3f}") -> str:
    """``mean ± sd`` (sample sd; 0 for one run) of a column over a row's runs, ``-`` if none."""
    if col not in g or g[col].isna().all():
        return "-"
    v = g[col].dropna().to_numpy(float)
    sd = v.std(ddof=1) if len(v) > 1 else 0.0
    return f"{fmt.format(v.mean())} ± {fmt.format(sd)}"


def table(rows: list[dict]) -> str:
    df = pd.DataFrame(rows)
    lines = [
        "| model | seeds | test AUROC | Bayes AUROC (same patients) | ratio to Bayes | "
        "ECE (calibrated) | ECE of the true p (same patients) | benefit Spearman | best epoch | "
        "wall time / run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model, g in df.groupby("model", sort=False):

        def ms(col: str, fmt: str = "{:.3f}", g: pd.DataFrame = g) -> str:
            return mean_sd(g, col, fmt)

        seeds = ",".join(str(s) for s in g["seed"])
        lines.append(
            f"| {model} | {seeds} | {ms('auroc')} | {ms('bayes')} | {ms('ratio')} | {ms('ece')} "
            f"| {ms('bayes_ece')} | {ms('benefit_spearman', '{:.2f}')} | {', '.join(map(str, g['best']))} "
            f"| {g['wall_s'].mean():.0f} s |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO / "data" / "synthetic")
    ap.add_argument("--models", nargs="+", default=["cell_table_crossfit", "logreg_cells_crossfit",
                                                    "cell_features", "logreg", "cell_table",
                                                    "logreg_cells", "cell_table_cells_only",
                                                    "cell_table_expression_only", "multimodal",
                                                    "image_only", "expression_only"])  # fmt: skip
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--runs", type=Path, default=REPO / "runs" / "bench_models")
    ap.add_argument("--results", type=Path, default=None, help="JSONL (default: <runs>/results)")
    ap.add_argument("--table", type=Path, default=None, help="markdown table output")
    ap.add_argument("--table-only", action="store_true", help="only rebuild the table")
    ap.add_argument("--task", choices=["binary", "survival"], default="binary")
    ap.add_argument("--recalibrate", action="store_true",
                    help="finished runs: refit the calibration with today's rule before scoring "
                    "(no retraining; the checkpoints are untouched)")  # fmt: skip
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = ap.parse_args(argv)
    data = args.data.resolve()
    results = args.results or args.runs / "results.jsonl"
    results.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(x) for x in results.read_text().splitlines()] if results.exists() else []
    if not args.table_only:
        truth = pd.read_csv(data / "truth.csv", dtype={"patient_id": str}).set_index("patient_id")
        settings = json.loads((data / "synth_summary.json").read_text())
        effects = settings.get("settings", settings)["truth"]["effects"]
        benefit = true_benefit(truth, effects)
        for model in args.models:
            for seed in args.seeds:
                if any(r["model"] == model and r["seed"] == seed for r in done):
                    continue
                if args.task == "survival":
                    extra = ["task=survival", *args.overrides]
                    res = run_model(model, seed, data, args.runs, extra)
                    summary = json.loads((Path(res["run_dir"]) / "summary.json").read_text())
                    row = {"model": model, "seed": seed, "wall_s": res["wall_s"], "task": "survival",
                           "c_index": summary["test_c_index"],
                           "oracle_c_index": summary["test_oracle_c_index"]}  # fmt: skip
                    row["ratio"] = row["c_index"] / row["oracle_c_index"]
                    print(json.dumps(row), flush=True)
                    with results.open("a") as fh:
                        fh.write(json.dumps(row) + "\n")
                    done.append(row)
                    continue
                if model in LOGREG:  # the baseline on the features of that row's run
                    res = logreg_baseline(
                        args.runs / LOGREG[model] / f"seed{seed}", data, model in CROSSFIT_LOGREG
                    )
                else:
                    res = run_model(model, seed, data, args.runs, list(args.overrides),
                                    args.recalibrate)  # fmt: skip
                row = {"model": model, "seed": seed, "wall_s": res["wall_s"], "best": res["best"]}
                row.update(score(res.pop("pred"), truth, benefit))
                row["ratio"] = row["auroc"] / row["bayes"]
                print(json.dumps(row), flush=True)
                with results.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                done.append(row)
    rows = [r for r in done if r["model"] in args.models] or done
    text = survival_table(rows) if args.task == "survival" else table(rows)
    print(text)
    if args.table:
        args.table.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
