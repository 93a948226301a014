"""Evaluate a predictions table: metrics with CIs, per-group breakdown, paired comparison, report.

``evaluate_predictions(df_or_path, out_dir, ...)`` is the plain function behind
``immunoplex-eval``; it writes ``metrics.json``, ``report.html`` (self-contained), ``report.md``,
``metrics.csv``, ``confusion_matrix.csv`` and ``plots/*.png`` into ``out_dir`` and returns the
``metrics.json`` content as a dict.

Predictions table: ``patient_id``, ``label`` (1 / 0 / empty or -1 = unlabelled), ``probability``;
optional ``calibrated_probability``, ``prediction_set``, and grouping columns (``cohort``,
``treatment``, ...). Bad input raises ``ManifestError`` naming the file, row and reason; rows are
counted from 1 = the first data row after the header.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from immunoplex.errors import ConfigError, ManifestError
from immunoplex.evaluation.calibration import SET_LABELS, conformal_summary
from immunoplex.evaluation.compare import delong_auc_ci, delong_test, paired_bootstrap
from immunoplex.evaluation.inputs import (
    CAL_PROB,
    PROB,
    load_predictions,
    pair_predictions,
    read_predictions_csv,
    resolve_prob_column,
)
from immunoplex.evaluation.metrics import (
    DEFAULT_ECE_BINS,
    METRIC_LABELS,
    NEEDS_BOTH,
    Estimate,
    compute_metrics,
)
from immunoplex.evaluation.plots import (
    decision_curve,
    plot_calibration,
    plot_confusion,
    plot_decision_curve,
    plot_pr,
    plot_roc,
)
from immunoplex.evaluation.survival_eval import (
    evaluate_survival,
    survival_columns,
    survival_section,
)
from immunoplex.utils.atomic import write_csv, write_text
from immunoplex.utils.jsonsafe import to_json


def _est_dict(est: dict[str, Estimate]) -> dict[str, dict[str, float | None]]:
    return {k: v.to_dict() for k, v in est.items()}


def _class_note(n_pos: int, n_neg: int) -> str | None:
    if n_pos + n_neg == 0:
        return "no labelled patients: no metrics"
    if n_neg == 0:
        return "only responders: AUROC, AUPRC, balanced accuracy and specificity are undefined"
    if n_pos == 0:
        return "only non-responders: AUROC, AUPRC, balanced accuracy and sensitivity are undefined"
    return None


def metrics_block(
    y: np.ndarray,
    p: np.ndarray,
    threshold: float,
    n_boot: int,
    seed: int,
    level: float,
    ece_bins: int,
) -> dict[str, Any]:
    """Counts, metrics with bootstrap CIs, and a note when a class is absent."""
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    block: dict[str, Any] = {"n": int(y.size), "n_responders": n_pos, "n_non_responders": n_neg}
    block["prevalence"] = float(n_pos / y.size) if y.size else None
    if y.size == 0:
        block["metrics"] = {k: Estimate(None).to_dict() for k in METRIC_LABELS}
    else:
        est = compute_metrics(y, p, threshold, n_boot, seed, level, ece_bins)
        if n_pos == 0 or n_neg == 0:
            for k in NEEDS_BOTH:
                est[k] = Estimate(None)
        block["metrics"] = _est_dict(est)
    block["note"] = _class_note(n_pos, n_neg)
    return block


def _confusion(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    pred = p >= threshold
    return {
        "threshold": float(threshold),
        "tp": int((pred & (y == 1)).sum()),
        "fp": int((pred & (y == 0)).sum()),
        "tn": int((~pred & (y == 0)).sum()),
        "fn": int((~pred & (y == 1)).sum()),
    }


def _group_values(col: pd.Series) -> list[tuple[str, np.ndarray]]:
    text = col.map(lambda v: "(missing)" if pd.isna(v) or str(v).strip() == "" else str(v))
    return [(g, (text == g).to_numpy()) for g in sorted(text.unique())]


def evaluate_predictions(
    predictions: pd.DataFrame | str | Path,
    out_dir: str | Path,
    *,
    threshold: float = 0.5,
    group_by: Sequence[str] = ("cohort", "treatment"),
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    ece_bins: int = DEFAULT_ECE_BINS,
    prob_column: str = "auto",
    compare: pd.DataFrame | str | Path | None = None,
    compare_prob_column: str = "auto",
    intersect: bool = False,
    name: str | None = None,
    compare_name: str | None = None,
    source: str | None = None,
    compare_source: str | None = None,
    roc_band_boot: int | None = None,
    title: str = "immunoplex evaluation",
    make_plots: bool = True,
    survival_groups: int = 2,
    survival_horizons: Sequence[float] | None = None,
    survival_time_column: str | None = None,
    survival_event_column: str | None = None,
) -> dict[str, Any]:
    """Evaluate one predictions table (optionally against a second) and write the report.

    ``make_plots=False`` skips the PNGs (the report then has tables only). Returns the content
    of ``out_dir/metrics.json``.
    """
    if not 0 < threshold < 1:
        raise ConfigError(f"eval: threshold must be in (0, 1), got {threshold}")
    if n_boot < 0:
        raise ConfigError(f"eval: n_boot must be >= 0, got {n_boot}")
    if not 0 < level < 1:
        raise ConfigError(f"eval: level must be in (0, 1), got {level}")
    if int(survival_groups) < 2:
        raise ConfigError(f"eval: survival_groups must be >= 2, got {survival_groups}")
    surv_opts = dict(
        time_column=survival_time_column, event_column=survival_event_column,
        n_groups=int(survival_groups), horizons=survival_horizons, level=level,
    )  # fmt: skip
    raw = (
        predictions if isinstance(predictions, pd.DataFrame) else read_predictions_csv(predictions)
    )
    if survival_columns(list(raw.columns), survival_time_column, survival_event_column) and (
        resolve_prob_column(list(raw.columns), prob_column) not in raw.columns
    ):  # a survival-only model (task=survival): no probability to evaluate
        src = source or (
            "predictions" if isinstance(predictions, pd.DataFrame) else str(predictions)
        )
        return evaluate_survival(raw, src, Path(out_dir), title, make_plots, name, **surv_opts)
    df, src = load_predictions(
        raw, prob_column, source or (None if raw is predictions else str(predictions))
    )
    col = df.attrs["prob_column"]
    name = name or (
        Path(src).stem if source is None and not isinstance(predictions, pd.DataFrame) else "model"
    )
    lab = df[df["label"] >= 0]
    y = lab["label"].to_numpy(dtype=np.float64)
    p = lab[col].to_numpy(dtype=np.float64)
    if not len(lab):
        raise ManifestError(f"{src}: no labelled rows (label 1 or 0): nothing to evaluate")
    pairing = None
    if compare is not None:  # validate the second table before any heavy work
        other, csrc = load_predictions(compare, compare_prob_column, compare_source)
        cname = compare_name or (
            Path(csrc).stem
            if compare_source is None and not isinstance(compare, pd.DataFrame)
            else "comparison"
        )
        if cname == name:
            cname = f"{cname} (compare)"
        pairing = (other, csrc, cname, pair_predictions(df, other, src, csrc, intersect))
    out = Path(out_dir)
    plots = out / "plots"
    (plots if make_plots else out).mkdir(parents=True, exist_ok=True)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    both = n_pos > 0 and n_neg > 0
    band = min(n_boot, 1000) if roc_band_boot is None else roc_band_boot
    stats = dict(threshold=threshold, n_boot=n_boot, seed=seed, level=level, ece_bins=ece_bins)

    result: dict[str, Any] = {
        "title": title,
        "input": {
            "predictions": src,
            "name": name,
            "prob_column": col,
            "n_rows": int(len(df)),
            "n_labelled": int(len(lab)),
            "n_unlabelled": int(len(df) - len(lab)),
        },
        "settings": {
            "threshold": threshold,
            "n_boot": n_boot,
            "seed": seed,
            "ci_level": level,
            "ece_bins": ece_bins,
            "bootstrap": "stratified percentile bootstrap over patients",
        },
        "overall": metrics_block(y, p, **stats),
        "notes": [],
        "plots": {},
    }
    if both and n_pos >= 2 and n_neg >= 2:
        result["overall"]["auroc_delong"] = delong_auc_ci(y, p, level)
    result["confusion_matrix"] = _confusion(y, p, threshold)
    confusion = pd.DataFrame(
        [
            [result["confusion_matrix"]["tn"], result["confusion_matrix"]["fp"]],
            [result["confusion_matrix"]["fn"], result["confusion_matrix"]["tp"]],
        ],
        index=["true non-responder", "true responder"],
        columns=["predicted non-responder", "predicted responder"],
    )
    write_csv(out / "confusion_matrix.csv", confusion, index=True)

    # calibration before / after
    cal_series = {name: p}
    cal_ece = {name: Estimate(**result["overall"]["metrics"]["ece"])}
    if col == CAL_PROB and PROB in df.columns:
        raw = lab[PROB].to_numpy(dtype=np.float64)
        raw_block = metrics_block(y, raw, **stats)
        result["calibration"] = {
            "uncalibrated": {k: raw_block["metrics"][k] for k in ("brier", "ece", "log_loss")},
            "calibrated": {
                k: result["overall"]["metrics"][k] for k in ("brier", "ece", "log_loss")
            },
        }
        cal_series = {"uncalibrated": raw, "calibrated": p}
        cal_ece = {
            "uncalibrated": Estimate(**raw_block["metrics"]["ece"]),
            "calibrated": cal_ece[name],
        }
    if "prediction_set" in df.columns:
        result["conformal"] = conformal_summary(
            lab["prediction_set"].tolist(), lab["label"].to_numpy()
        )
        result["conformal"]["set_frequency_all_rows"] = {
            k: int((df["prediction_set"] == k).sum()) for k in SET_LABELS
        }

    result["decision_curve"] = decision_curve(y, {name: p})
    if make_plots:
        _overall_plots(result, y, p, name, cal_series, cal_ece, plots, band, seed)
    if not both:
        result["notes"].append("one class only: ROC and precision-recall curves are not drawn")

    # per-group breakdown
    result["groups"] = {}
    for gcol in group_by or ():
        if gcol not in df.columns:
            result["notes"].append(f"group_by column {gcol!r} is not in the predictions: skipped")
            continue
        groups = {}
        for value, mask in _group_values(df[gcol]):
            sub = df[mask]
            sl = sub[sub["label"] >= 0]
            block = metrics_block(
                sl["label"].to_numpy(dtype=np.float64), sl[col].to_numpy(dtype=np.float64), **stats
            )
            block["n_unlabelled"] = int(len(sub) - len(sl))
            groups[value] = block
        result["groups"][gcol] = groups

    # paired comparison
    if pairing is not None:
        result["comparison"] = _compare(
            df, src, name, *pairing, n_boot, seed, level, plots if make_plots else None
        )
        if "plot" in result["comparison"]:
            result["plots"]["roc_compare"] = result["comparison"]["plot"]

    surv = survival_section(df, src, plots if make_plots else None, **surv_opts)
    if surv is not None:
        result["survival"] = surv

    result = to_json(result)
    _write_tables(result, out)
    write_text(out / "metrics.json", json.dumps(result, indent=2) + "\n")
    from immunoplex.evaluation.report import write_reports

    write_reports(result, out)
    return result


def _overall_plots(
    result: dict[str, Any],
    y: np.ndarray,
    p: np.ndarray,
    name: str,
    cal_series: dict[str, np.ndarray],
    cal_ece: dict[str, Estimate],
    plots: Path,
    band: int,
    seed: int,
) -> None:
    """ROC, PR (both classes only), reliability, decision curve, confusion matrix PNGs."""
    st = result["settings"]
    est = {k: Estimate(**v) for k, v in result["overall"]["metrics"].items()}
    out = result["plots"]
    if 0 < y.sum() < y.size:
        out["roc"] = plot_roc(
            y, {name: p}, plots / "roc.png", {name: est["auroc"]}, band, seed
        ).name
        out["pr"] = plot_pr(y, {name: p}, plots / "pr.png", {name: est["auprc"]}).name
    out["calibration"] = plot_calibration(
        y, cal_series, plots / "calibration.png", st["ece_bins"], cal_ece
    ).name
    out["decision_curve"] = plot_decision_curve(
        result["decision_curve"], plots / "decision_curve.png"
    ).name
    cm = result["confusion_matrix"]
    out["confusion_matrix"] = plot_confusion(
        cm["tp"], cm["fp"], cm["tn"], cm["fn"], st["threshold"], plots / "confusion_matrix.png"
    ).name


def _compare(
    df: pd.DataFrame,
    src: str,
    name: str,
    other: pd.DataFrame,
    csrc: str,
    cname: str,
    paired: pd.DataFrame,
    n_boot: int,
    seed: int,
    level: float,
    plots: Path | None,
) -> dict[str, Any]:
    """DeLong test + paired bootstrap on the labelled patients both tables share."""
    n_shared = len(paired)
    paired = paired[paired["label"] >= 0]
    y = paired["label"].to_numpy(dtype=np.float64)
    a, b = paired["p_a"].to_numpy(), paired["p_b"].to_numpy()
    res: dict[str, Any] = {
        "a": {"name": name, "source": src, "prob_column": df.attrs["prob_column"]},
        "b": {"name": cname, "source": csrc, "prob_column": other.attrs["prob_column"]},
        "n_shared": n_shared,
        "n_paired_labelled": int(y.size),
        "n_excluded_a": int(len(df) - n_shared),
        "n_excluded_b": int(len(other) - n_shared),
    }
    if (y == 1).sum() < 2 or (y == 0).sum() < 2:
        res["note"] = "fewer than two patients of a class among shared labelled patients"
        return res
    res["delong"] = delong_test(y, a, b, level).to_dict()
    res["paired_bootstrap"] = paired_bootstrap(y, a, b, n_boot, seed, level) if n_boot else {}
    est = {
        name: Estimate(res["delong"]["auroc_a"]),
        cname: Estimate(res["delong"]["auroc_b"]),
    }
    if plots is None:
        return res
    d = res["delong"]
    res["plot"] = plot_roc(
        y,
        {name: a, cname: b},
        plots / "roc_compare.png",
        est,
        0,
        seed,
        title="ROC: paired comparison",
        note=f"ΔAUROC {d['difference']:+.3f}, DeLong p = {d['p_value']:.3g}",
    ).name
    return res


def _write_tables(result: dict[str, Any], out: Path) -> None:
    """metrics.csv: one row per (grouping, group, metric)."""
    rows = []

    def add(gcol: str, group: str, block: dict[str, Any]) -> None:
        for k, v in block["metrics"].items():
            rows.append(
                {
                    "group_by": gcol,
                    "group": group,
                    "metric": k,
                    "estimate": v["estimate"],
                    "ci_low": v["ci_low"],
                    "ci_high": v["ci_high"],
                    "n": block["n"],
                    "n_responders": block["n_responders"],
                    "note": block.get("note") or "",
                }
            )

    add("all", "all", result["overall"])
    for gcol, groups in result.get("groups", {}).items():
        for g, block in groups.items():
            add(gcol, g, block)
    write_csv(out / "metrics.csv", pd.DataFrame(rows))
