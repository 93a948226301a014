"""Trained benchmark runs scored on an independent, larger synthetic draw (external validation).

    immunoplex-synth size=default seed=7 n_patients=1000 out_dir=EXT
    immunoplex-cells manifest=EXT/manifest.csv out_dir=EXT/cell_stage workers=2 'outputs=[h5ad]'
    .venv/bin/python scripts/bench_external.py --cohort EXT --runs runs/bench_models \
        --models cell_table cell_table_crossfit --seeds 0 1 2 3 4

The default cohort's test split has 92 patients: too few to judge calibration (a perfectly
calibrated model's ECE averages ~0.1 there) and a spread of ~0.02 in AUROC from the split
alone. Here each checkpoint that ``scripts/bench_models.py`` trained (``<runs>/<model>/seed<k>/
model.ckpt``, fitted and calibrated on the default cohort) predicts every labelled patient of a
fresh draw of the same generator with ``immunoplex-predict`` (the cell table given as
``features_table``, the draw's expression and clinical values), untouched by any fit.

Columns: patients; test AUROC; the Bayes AUROC (the generator's ``p_response``) on the same
patients and the ratio; ECE of the calibrated probabilities (``evaluation.metrics.ece``, 15
equal-width bins); the ECE of the true ``p_response`` with the draw's labels; the floor, the
mean ECE of perfectly calibrated probabilities at this many patients (labels simulated from
``p_response``, 200 draws, with its 5-95% range); the Spearman correlation of the predicted
benefit p(combo) - p(mono) with the truth's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import special, stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from bench_models import COMBO, MONO, mean_sd, true_benefit  # noqa: E402


def ece_floor(p: np.ndarray, draws: int = 200, seed: int = 0) -> tuple[float, float, float]:
    """Mean (5%, 95%) ECE of the calibrated probabilities ``p`` against labels drawn from them."""
    from immunoplex.evaluation.metrics import ece

    rng = np.random.default_rng(seed)
    y = (rng.random((draws, len(p))) < p).astype(float)
    e = np.asarray(ece(y, np.broadcast_to(p, y.shape)))
    return float(e.mean()), float(np.quantile(e, 0.05)), float(np.quantile(e, 0.95))


def predict_run(ckpt: Path, cohort: Path, table: Path, manifest: Path, out: Path) -> pd.DataFrame:
    from immunoplex.inference.options import PredictOptions
    from immunoplex.inference.run import predict

    done = out / "predictions.csv"
    if done.is_file():
        return pd.read_csv(done, dtype={"patient_id": str})
    opts = PredictOptions(ckpt=str(ckpt), input=str(manifest), out_dir=str(out),
                          expression=str(cohort / "expression.csv"), features_table=str(table),
                          heatmaps=False, progress=False)  # fmt: skip
    df = predict(opts)
    df.to_csv(done, index=False)
    return df


def score(pred: pd.DataFrame, truth: pd.DataFrame, benefit: pd.Series, temperature: float) -> dict:
    from immunoplex.evaluation.metrics import auroc_score, ece

    ids = pred["patient_id"].astype(str)
    y = truth.loc[ids, "label"].to_numpy(int)
    p_true = truth.loc[ids, "p_response"].to_numpy(float)
    out = {
        "n": int(len(ids)),
        "auroc": float(auroc_score(y, pred["probability"].to_numpy(float))),
        "bayes": float(auroc_score(y, p_true)),
        "ece": float(np.asarray(ece(y, pred["calibrated_probability"].to_numpy(float)))[0]),
        "bayes_ece": float(np.asarray(ece(y, p_true))[0]),
    }
    out["ratio"] = out["auroc"] / out["bayes"]
    cols = [f"logit[{MONO}]", f"logit[{COMBO}]"]
    cf = [f"counterfactual_probability[{MONO}]", f"counterfactual_probability[{COMBO}]"]
    if all(c in pred for c in cf):  # immunoplex-predict: calibrated p under each arm
        pm, pc = pred[cf[0]].to_numpy(float), pred[cf[1]].to_numpy(float)
    elif all(c in pred for c in cols):
        pm = special.expit(pred[cols[0]].to_numpy(float) / temperature)
        pc = special.expit(pred[cols[1]].to_numpy(float) / temperature)
    else:
        return out
    out["benefit_spearman"] = float(stats.spearmanr(pc - pm, benefit.loc[ids])[0])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", type=Path, required=True, help="the independent synthetic draw")
    ap.add_argument("--table", type=Path, default=None,
                    help="its cell table (default <cohort>/cell_stage/cell_features.csv)")  # fmt: skip
    ap.add_argument("--runs", type=Path, default=REPO / "runs" / "bench_models")
    ap.add_argument("--models", nargs="+", default=["cell_table", "cell_table_crossfit"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--out", type=Path, default=None, help="default <runs>/external")
    args = ap.parse_args(argv)
    cohort = args.cohort.resolve()
    table = (args.table or cohort / "cell_stage" / "cell_features.csv").resolve()
    out = args.out or args.runs / "external"
    out.mkdir(parents=True, exist_ok=True)
    truth = pd.read_csv(cohort / "truth.csv", dtype={"patient_id": str}).set_index("patient_id")
    settings = json.loads((cohort / "synth_summary.json").read_text())
    benefit = true_benefit(truth, settings.get("settings", settings)["truth"]["effects"])
    m = pd.read_csv(cohort / "manifest.csv", dtype={"patient_id": str})
    labelled = set(truth.index[truth["label"] >= 0])
    manifest = out / "manifest.csv"
    sub = m[m["patient_id"].isin(labelled)].copy()
    sub["image"] = [str((cohort / p).resolve()) for p in sub["image"]]
    sub.to_csv(manifest, index=False)
    floor = ece_floor(truth.loc[sorted(labelled), "p_response"].to_numpy(float))
    rows = []
    for model in args.models:
        for seed in args.seeds:
            run = args.runs / model / f"seed{seed}"
            summary = json.loads((run / "summary.json").read_text())
            pred = predict_run(run / "model.ckpt", cohort, table, manifest,
                               out / model / f"seed{seed}")  # fmt: skip
            row = {"model": model, "seed": seed,
                   **score(pred, truth, benefit, float(summary.get("temperature", 1.0)))}  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
    df = pd.DataFrame(rows)
    lines = [
        "| model | seeds | patients | AUROC | Bayes AUROC | ratio to Bayes | ECE (calibrated) | "
        "ECE of the true p | ECE floor at this n (5-95%) | benefit Spearman |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model, g in df.groupby("model", sort=False):

        def ms(col: str, g: pd.DataFrame = g) -> str:
            return mean_sd(g, col)

        lines.append(
            f"| {model} | {','.join(map(str, g['seed']))} | {int(g['n'].iloc[0])} | {ms('auroc')} "
            f"| {ms('bayes')} | {ms('ratio')} | {ms('ece')} | {ms('bayes_ece')} "
            f"| {floor[0]:.3f} ({floor[1]:.3f}-{floor[2]:.3f}) | {ms('benefit_spearman')} |"
        )
    text = "\n".join(lines)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"rows": rows, "ece_floor": floor}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
