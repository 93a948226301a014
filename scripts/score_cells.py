"""Score the cell stage against the synthetic generator's cell truth (issue 15, "Done when").

    immunoplex-synth size=default seed=0 out_dir=/tmp/cohort
    .venv/bin/python scripts/score_cells.py --cohort /tmp/cohort --out /tmp/cohort_cells \
        [--every 1] [--offset 0] [--workers 1] [immunoplex-cells overrides ...]

Runs ``immunoplex-cells`` (resumable: finished slides are skipped) on the cohort's slides, or on
every ``--every``-th patient's slides (all slides of a chosen patient are kept, so patient
features pool the same slides as the truth), then prints and writes ``score.json``:

- nucleus detection F1: predicted centroids vs drawn centres (red blood cells have no nucleus
  and are left out), one-to-one within 4 µm;
- phenotype accuracy: among matched truth cells of a type, the share called that type (and the
  precision: among matched cells called that type, the share that are it);
- per-slide density (cells / mm² tissue) of CD8 T, Clever-1+ macrophage, neutrophil from
  ``slide_features.csv`` vs the truth counts over the generator's tissue area: Spearman;
- the patient table (``cell_features.csv``): intratumoural CD8 fraction and Clever-1+ macrophage
  density vs the latents in ``truth.csv``: Spearman; with the same statistic computed from the
  truth cells themselves (the ceiling the generator's sampling noise leaves);
- the pipeline's intratumoural CD8 fraction vs the truth cells' (``truth_cells_spearman``).

The truth cells' fraction uses the run's estimator (``spatial.fraction_pseudocount`` a, from
``cells_config.json``: (k + a) / (n + 2a)); ``latent_spearman_raw_fraction`` is the pipeline's
raw k / n against the latent.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from immunoplex.cells.metrics import match_points

TYPES = ("cd8_t", "clever1_macrophage", "neutrophil")
MATCH_UM = 4.0


def _spearman(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    return float(spearmanr(a[ok], b[ok])[0]) if ok.sum() > 2 else float("nan")


def run_cells(
    cohort: Path, out: Path, every: int, workers: int, overrides: list[str], offset: int = 0
) -> float:
    """Run immunoplex-cells on the chosen slides; return its wall time (s)."""
    from hydra import compose, initialize_config_dir

    from immunoplex.cli.cells import cells_cohort
    from immunoplex.paths import config_dir

    m = pd.read_csv(cohort / "manifest.csv")
    patients = sorted(m["patient_id"].unique())[offset::every]
    sub = m[m["patient_id"].isin(patients)][["slide_id", "patient_id", "image"]].copy()
    sub["image"] = [str((cohort / p).resolve()) for p in sub["image"]]
    out.mkdir(parents=True, exist_ok=True)
    sub.to_csv(out / "manifest.csv", index=False)
    args = [f"manifest={out / 'manifest.csv'}", f"out_dir={out}", f"workers={workers}",
            "outputs=[h5ad,parquet]", *overrides]  # fmt: skip
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("cells", overrides=args)
    t0 = time.perf_counter()
    res = cells_cohort(cfg)
    if res["skipped"]:
        raise SystemExit(f"{len(res['skipped'])} slide(s) skipped: {res['skipped'][:3]}")
    return time.perf_counter() - t0


def score(cohort: Path, out: Path) -> dict:
    m = pd.read_csv(out / "manifest.csv")
    ts = pd.read_csv(cohort / "truth_slides.csv").set_index("slide_id").loc[m["slide_id"]]
    sf = pd.read_csv(out / "slide_features.csv").set_index("slide_id").loc[m["slide_id"]]
    tp = n_pred = n_ref = 0
    hit = {t: [0, 0] for t in TYPES}  # matched truth cells of t called t, matched truth of t
    prec = {t: [0, 0] for t in TYPES}  # matched cells called t that are t, matched called t
    truth_in = {}  # per slide: (n truth cd8, n intratumoural truth cd8)
    for sid in m["slide_id"]:
        truth = pd.read_parquet(cohort / ts.loc[sid, "cells"])
        truth_in[sid] = (
            int((truth["type"] == "cd8_t").sum()),
            int(((truth["type"] == "cd8_t") & truth["intratumoural"]).sum()),
        )
        truth = truth[truth["nucleus"]]
        pred = pd.read_parquet(out / "slides" / sid / "cells.parquet")
        s, match = match_points(
            pred[["x_um", "y_um"]].to_numpy(), truth[["x_um", "y_um"]].to_numpy(), MATCH_UM
        )
        tp, n_pred, n_ref = tp + s.true_positives, n_pred + s.n_predicted, n_ref + s.n_reference
        ok = match >= 0
        ttype = truth["type"].to_numpy()[ok]
        ptype = pred["phenotype"].astype(str).to_numpy()[match[ok]]
        for t in TYPES:
            hit[t][0] += int(((ttype == t) & (ptype == t)).sum())
            hit[t][1] += int((ttype == t).sum())
            prec[t][0] += int(((ttype == t) & (ptype == t)).sum())
            prec[t][1] += int((ptype == t).sum())
    p, r = tp / max(n_pred, 1), tp / max(n_ref, 1)
    res: dict = {
        "n_slides": len(m),
        "n_patients": int(m["patient_id"].nunique()),
        "n_truth_nuclei": n_ref,
        "n_predicted": n_pred,
        "detection": {"f1": 2 * p * r / max(p + r, 1e-12), "precision": p, "recall": r},
        "accuracy": {t: hit[t][0] / max(hit[t][1], 1) for t in TYPES},
        "precision": {t: prec[t][0] / max(prec[t][1], 1) for t in TYPES},
        "n_matched_truth": {t: hit[t][1] for t in TYPES},
    }
    truth_n = {"cd8_t": "n_cd8", "clever1_macrophage": "n_clever1_macrophage",
               "neutrophil": "n_neutrophil"}  # fmt: skip
    res["density_spearman"] = {
        t: _spearman(sf[f"density_{t}_tissue_per_mm2"], ts[truth_n[t]] / ts["tissue_mm2"])
        for t in TYPES
    }
    # patient level: the pipeline's table vs the latents, and the truth cells' own statistic
    pf = pd.read_csv(out / "cell_features.csv").set_index("patient_id")
    lat = pd.read_csv(cohort / "truth.csv").set_index("patient_id").loc[pf.index]
    g = ts.assign(**{"cd8": [truth_in[s][0] for s in ts.index],
                     "cd8_in": [truth_in[s][1] for s in ts.index]}).groupby("patient_id")  # fmt: skip
    tsum = g[["cd8", "cd8_in", "n_clever1_macrophage", "tissue_mm2"]].sum().loc[pf.index]
    res["latent_spearman"] = {
        "frac_intratumoural_cd8_t": _spearman(
            pf["frac_intratumoural_cd8_t"], lat["cd8_intratumoural_fraction"]
        ),
        "density_clever1_macrophage_tissue_per_mm2": _spearman(
            pf["density_clever1_macrophage_tissue_per_mm2"], lat["clever1_density"]
        ),
    }
    # the run's fraction estimator (spatial.fraction_pseudocount a: (k + a) / (n + 2a)), applied
    # to the truth cells for the ceiling, and the pipeline's raw k / n beside it
    cfg_path = out / "cells_config.json"
    spatial = json.loads(cfg_path.read_text()).get("spatial", {}) if cfg_path.is_file() else {}
    a = float(spatial.get("fraction_pseudocount", 0.0))
    n_cd8 = np.rint(pf["density_cd8_t_tissue_per_mm2"] * pf["area_tissue_mm2"])
    k_in = np.rint(pf["frac_intratumoural_cd8_t"] * (n_cd8 + 2 * a) - a)
    res["fraction_pseudocount"] = a
    res["latent_spearman_raw_fraction"] = _spearman(
        k_in / n_cd8.replace(0, np.nan), lat["cd8_intratumoural_fraction"]
    )
    res["latent_spearman_truth_cells"] = {
        "frac_intratumoural_cd8_t": _spearman(
            (tsum["cd8_in"] + a) / (tsum["cd8"] + 2 * a).where(tsum["cd8"] > 0),
            lat["cd8_intratumoural_fraction"],
        ),
        "density_clever1_macrophage_tissue_per_mm2": _spearman(
            tsum["n_clever1_macrophage"] / tsum["tissue_mm2"], lat["clever1_density"]
        ),
    }
    # how closely the pipeline's fraction follows the truth cells' own (sampling noise aside)
    res["truth_cells_spearman"] = {
        "frac_intratumoural_cd8_t": _spearman(
            pf["frac_intratumoural_cd8_t"],
            (tsum["cd8_in"] + a) / (tsum["cd8"] + 2 * a).where(tsum["cd8"] > 0),
        ),
    }
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--every", type=int, default=1, help="score every k-th patient's slides")
    ap.add_argument(
        "--offset",
        type=int,
        default=0,
        help="start at this patient (0..every-1): tune on one subset, report another",
    )
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--score-only", action="store_true", help="do not run immunoplex-cells")
    ap.add_argument("overrides", nargs="*", help="immunoplex-cells overrides, e.g. mpp=0.5")
    a = ap.parse_args()
    seconds = None
    if not a.score_only:
        seconds = run_cells(a.cohort, a.out, a.every, a.workers, a.overrides, a.offset)
    res = score(a.cohort, a.out)
    if seconds is not None:
        res["seconds"] = round(seconds, 1)
        res["cells_per_s"] = round(res["n_predicted"] / seconds, 1)
        res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    res["overrides"] = a.overrides
    res["every"], res["offset"] = a.every, a.offset
    (a.out / "score.json").write_text(json.dumps(res, indent=1))
    json.dump(res, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
