"""Where the feature model loses to the Bayes limit: each measured feature against its latent.

    .venv/bin/python scripts/feature_ceiling.py --run runs/bench_models/cell_features/seed0 \
        [--data data/synthetic] [--out docs/feature_ceiling.json]

``--run`` is a finished ``experiment=cell_features`` run (its ``model.ckpt``). The script reads
the model's raw patient features (the same ``FeatureModel.features`` the model and the
``logreg`` row of ``scripts/bench_models.py`` use) for the run's train / val / test patients and
the generator's latents (``truth.csv``), then reports:

- per feature, the Spearman correlation with the latent it estimates (how well the image or
  expression measurement recovers the biology);
- the test AUROC of one compact L2 logistic regression (the feature of each biology axis,
  treatment and its interactions on the Clever-1 axis; C by 5-fold CV on the fitting patients),
  fitted on the training patients and on training + validation patients;
- the same regression with one measured feature swapped for its latent at a time, and with the
  latents alone: the AUROC a perfect measurement of that axis would buy;
- the same with the image features replaced by the generator's drawn cells (``truth_slides.csv``
  counts, slides pooled): the ceiling of a perfect cell detector, sampling noise left in;
- the Bayes AUROC (the generator's ``p_response``) of the same test patients.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]

#: measured feature -> the generator's latent it estimates (truth.csv columns)
AXES = {
    "image:cd8_t_intratumoural_logit": "itf_z",
    "image:cd8_t_area_tissue_log": "cd8_z",
    "image:clever1_macrophage_area_tissue_log": "clever1_z",
    "image:neutrophil_area_tissue_log": "neutrophil_z",
    "image:tumour_fraction_logit": "tumour_z",
    "expression:ifn_gamma": "ifn_z",
    "expression:clever1_macrophage": "clever1_z",
    "expression:neutrophil_dkk1": "neutrophil_z",
    "clinical:sclever1": "sclever1_z",
}
#: features that get a per-treatment interaction (the Clever-1 axis, as the shipped model)
INTERACT = (
    "image:clever1_macrophage_area_tissue_log",
    "expression:clever1_macrophage",
    "clinical:sclever1",
    "clever1_z",
    "sclever1_z",
)
COMBO = "bexmarilimab+anti-PD-1"
#: measured image feature -> the same statistic from the generator's drawn cells
DRAWN = {
    "image:cd8_t_intratumoural_logit": "drawn:cd8_intratumoural_logit",
    "image:cd8_t_area_tissue_log": "drawn:cd8_density_log",
    "image:clever1_macrophage_area_tissue_log": "drawn:clever1_macrophage_density_log",
    "image:neutrophil_area_tissue_log": "drawn:neutrophil_density_log",
}


def drawn_cells(slides: pd.DataFrame) -> pd.DataFrame:
    """Per patient, the image statistics of the drawn cells (``truth_slides.csv``), slides pooled.

    What a perfect cell detector and phenotyper would measure: the generator's sampling noise
    (a slide holds tens of CD8 T cells) is left in, unlike the latents.
    """
    g = slides.groupby("patient_id")[
        ["tissue_mm2", "n_cd8", "n_cd8_intratumoural", "n_clever1_macrophage", "n_neutrophil"]
    ].sum()
    frac = (g["n_cd8_intratumoural"] + 0.5) / (g["n_cd8"] + 1.0)
    return pd.DataFrame(
        {
            "drawn:cd8_intratumoural_logit": np.log(frac / (1 - frac)),
            "drawn:cd8_density_log": np.log((g["n_cd8"] + 0.5) / g["tissue_mm2"]),
            "drawn:clever1_macrophage_density_log": np.log(
                (g["n_clever1_macrophage"] + 0.5) / g["tissue_mm2"]
            ),
            "drawn:neutrophil_density_log": np.log((g["n_neutrophil"] + 0.5) / g["tissue_mm2"]),
        }
    )


def patient_features(run: Path) -> pd.DataFrame:
    """The run's raw patient features, one row per patient, with its stage, label and arm."""
    from immunoplex.data.datamodule import ResponseDataModule, data_config_from
    from immunoplex.training.checkpoint import load_checkpoint, model_from_checkpoint
    from immunoplex.training.embed import attach_embeddings, build_encoder
    from immunoplex.training.inference import eval_loader

    ckpt = load_checkpoint(run / "model.ckpt")
    cfg = ckpt["immunoplex"]["config"]
    model = model_from_checkpoint(ckpt)
    if not hasattr(model, "features"):
        raise SystemExit(f"{run}: not a feature-model run (experiment=cell_features)")
    dm = ResponseDataModule(data_config_from(dict(cfg["data"]), int(cfg["seed"])))
    dm.setup()
    attach_embeddings(dm, build_encoder(cfg["model"], dm.dims["markers"]))
    combo = dm.treatments.index(COMBO)
    rows = []
    for stage in ("train", "val", "test"):
        ds = dm.dataset(stage)
        for batch in eval_loader(ds, 16):
            raw, _, _ = model.features(batch)
            for i, idx in enumerate(batch["index"]):
                row = dict(zip(model.feature_names, raw[i].detach().numpy().tolist()))
                row.update(
                    patient_id=ds.records[int(idx)].patient_id,
                    stage=stage,
                    label=int(batch["label"][i]),
                    combo=float(int(batch["treatment"][i]) == combo),
                )
                rows.append(row)
    return pd.DataFrame(rows)


def fit_auroc(df: pd.DataFrame, cols: list[str], fit_stages: tuple[str, ...]) -> float:
    from sklearn.linear_model import LogisticRegressionCV

    from immunoplex.evaluation.metrics import auroc_score

    ref = df[df["stage"] == "train"]
    x = (df[cols] - ref[cols].mean()) / ref[cols].std()
    for c in cols:
        if c in INTERACT:
            x[f"combo x {c}"] = x[c] * df["combo"]
    x["combo"] = df["combo"]
    fit = df["stage"].isin(fit_stages) & (df["label"] >= 0)
    test = (df["stage"] == "test") & (df["label"] >= 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's deprecation notices about its own defaults
        clf = LogisticRegressionCV(Cs=12, cv=5, max_iter=5000, scoring="neg_log_loss")
        clf.fit(x[fit], df.loc[fit, "label"])
    return float(auroc_score(df.loc[test, "label"], clf.decision_function(x[test])))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--run", type=Path, required=True, help="a finished experiment=cell_features run"
    )
    ap.add_argument("--data", type=Path, default=REPO / "data" / "synthetic")
    ap.add_argument("--out", type=Path, default=None, help="JSON with every figure")
    args = ap.parse_args(argv)
    from immunoplex.evaluation.metrics import auroc_score

    truth = pd.read_csv(args.data / "truth.csv", dtype={"patient_id": str}).set_index("patient_id")
    df = patient_features(args.run)
    df = df.join(truth[sorted(set(AXES.values())) + ["p_response"]], on="patient_id")
    slides = pd.read_csv(args.data / "truth_slides.csv", dtype={"patient_id": str})
    df = df.join(drawn_cells(slides), on="patient_id")
    measured = [c for c in AXES if c in df]
    out: dict = {"run": str(args.run), "n": df.groupby("stage").size().to_dict()}
    out["spearman"] = {c: float(spearmanr(df[c], df[AXES[c]])[0]) for c in measured}
    out["spearman_drawn"] = {
        d: float(spearmanr(df[d], df[AXES[c]])[0]) for c, d in DRAWN.items() if c in df
    }
    test = (df["stage"] == "test") & (df["label"] >= 0)
    out["bayes_auroc"] = float(auroc_score(df.loc[test, "label"], df.loc[test, "p_response"]))
    auc: dict[str, float] = {}
    for stages, tag in ((("train",), "train"), (("train", "val"), "train+val")):
        auc[f"measured ({tag})"] = fit_auroc(df, measured, stages)
        for c in measured:
            swapped = [AXES[c] if m == c else m for m in measured]
            auc[f"{c} -> {AXES[c]} ({tag})"] = fit_auroc(df, swapped, stages)
        drawn = [DRAWN.get(m, m) for m in measured]
        auc[f"image features -> drawn cells ({tag})"] = fit_auroc(df, drawn, stages)
        auc[f"intratumoural CD8 -> drawn cells ({tag})"] = fit_auroc(
            df,
            [DRAWN[m] if m == "image:cd8_t_intratumoural_logit" else m for m in measured],
            stages,
        )
        lat = sorted({AXES[c] for c in measured})
        auc[f"latents alone ({tag})"] = fit_auroc(df, lat, stages)
    out["test_auroc"] = auc
    print(f"Bayes AUROC (test, n={int(test.sum())}): {out['bayes_auroc']:.3f}")
    print("| measured feature | latent | Spearman |\n| --- | --- | --- |")
    for c, r in out["spearman"].items():
        print(f"| {c} | {AXES[c]} | {r:.3f} |")
    for c, d in DRAWN.items():
        if d in out["spearman_drawn"]:
            print(f"| {d} | {AXES[c]} | {out['spearman_drawn'][d]:.3f} |")
    print("| logistic regression on | test AUROC | ratio to Bayes |\n| --- | --- | --- |")
    for k, v in auc.items():
        print(f"| {k} | {v:.3f} | {v / out['bayes_auroc']:.3f} |")
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
