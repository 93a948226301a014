"""Evaluation figures as PNG: ROC, precision-recall, reliability, decision curve, confusion matrix.

Uses ``matplotlib.figure.Figure`` with the Agg canvas directly (no pyplot, no global backend
state), so it is safe in headless jobs and alongside other code that uses pyplot.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from immunoplex.evaluation.metrics import (
    Estimate,
    bootstrap_indices,
    net_benefit,
    net_benefit_treat_all,
    reliability_bins,
)
from immunoplex.utils.atomic import atomic_path

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
DPI = 120


def _figure(width: float = 5.2, height: float = 4.6) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI)
    return path


def _ci_text(est: Estimate | None) -> str:
    if est is None or est.estimate is None:
        return ""
    if est.ci_low is None:
        return f"{est.estimate:.3f}"
    return f"{est.estimate:.3f} [{est.ci_low:.3f}, {est.ci_high:.3f}]"


def roc_band(
    y: np.ndarray, p: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pointwise percentile band of bootstrap ROC curves on a fixed FPR grid: (fpr, lo, hi)."""
    grid = np.linspace(0, 1, 101)
    idx = bootstrap_indices(y, n_boot, seed)
    tprs = np.empty((n_boot, grid.size))
    for i, rows in enumerate(idx):
        fpr, tpr, _ = roc_curve(y[rows], p[rows])
        tprs[i] = np.interp(grid, fpr, tpr)
    lo, hi = np.percentile(tprs, [100 * (1 - level) / 2, 100 * (1 + level) / 2], axis=0)
    lo[0] = 0.0
    return grid, lo, hi


def plot_roc(
    y: np.ndarray,
    series: Mapping[str, np.ndarray],
    path: Path,
    estimates: Mapping[str, Estimate] | None = None,
    band_boot: int = 1000,
    seed: int = 0,
    title: str = "ROC curve",
    note: str = "",
) -> Path:
    """ROC curve per series with AUROC [95% CI] in the legend; bootstrap band for the first.

    ``note`` is a second title line (e.g. the DeLong test result).
    """
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance")
    for i, (name, p) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        fpr, tpr, _ = roc_curve(y, p)
        label = f"{name}: AUROC {_ci_text((estimates or {}).get(name))}"
        ax.plot(fpr, tpr, color=color, lw=2, label=label, drawstyle="steps-post")
        if i == 0 and band_boot > 0:
            grid, lo, hi = roc_band(y, p, band_boot, seed)
            ax.fill_between(grid, lo, hi, color=color, alpha=0.18, lw=0, label="95% bootstrap band")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="False-positive rate (1 - specificity)",
        ylabel="True-positive rate (sensitivity)",
        title=f"{title} (n={len(y)}, {int(np.sum(y))} responders)" + (f"\n{note}" if note else ""),
    )
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_pr(
    y: np.ndarray,
    series: Mapping[str, np.ndarray],
    path: Path,
    estimates: Mapping[str, Estimate] | None = None,
    title: str = "Precision-recall curve",
) -> Path:
    """Precision-recall curve per series with AUPRC [95% CI]; prevalence as the baseline."""
    fig = _figure()
    ax = fig.add_subplot()
    prev = float(np.mean(y))
    ax.axhline(prev, ls="--", color="0.6", lw=1, label=f"prevalence = {prev:.2f}")
    for i, (name, p) in enumerate(series.items()):
        prec, rec, _ = precision_recall_curve(y, p)
        label = f"{name}: AUPRC {_ci_text((estimates or {}).get(name))}"
        ax.plot(rec, prec, color=COLORS[i % len(COLORS)], lw=2, label=label, drawstyle="steps-post")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="Recall (sensitivity)",
        ylabel="Precision (positive predictive value)",
        title=title,
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def plot_calibration(
    y: np.ndarray,
    series: Mapping[str, np.ndarray],
    path: Path,
    n_bins: int = 15,
    ece_values: Mapping[str, Estimate] | None = None,
    title: str = "Reliability diagram",
) -> Path:
    """Reliability diagram (observed response rate vs mean predicted probability per bin).

    The lower panel shows the number of patients in each equal-width bin per series.
    """
    fig = _figure(5.2, 6.0)
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    top.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="perfect calibration")
    k = len(series)
    width = 1.0 / n_bins / max(k, 1)
    for i, (name, p) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        rb = reliability_bins(y, p, n_bins)
        ok = rb["count"] > 0
        label = name
        if ece_values and name in ece_values:
            label += f" (ECE {_ci_text(ece_values[name])})"
        top.plot(rb["mean_p"][ok], rb["frac_pos"][ok], marker="o", color=color, lw=1.5, label=label)
        left = rb["edges"][:-1] + i * width
        bars = bottom.bar(left, rb["count"], width=width, align="edge", color=color, alpha=0.8)
        if k == 1:
            bottom.bar_label(bars, labels=[str(c) if c else "" for c in rb["count"]], fontsize=7)
    top.set(xlim=(0, 1), ylim=(-0.02, 1.02), ylabel="Observed response rate", title=title)
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize=8)
    bottom.set(xlabel="Predicted probability of response", ylabel="Patients per bin")
    bottom.set_ylim(0, max(1.0, bottom.get_ylim()[1] * 1.15))
    bottom.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def decision_curve(
    y: np.ndarray, series: Mapping[str, np.ndarray], thresholds: np.ndarray | None = None
) -> dict[str, list[float]]:
    """Net benefit per threshold for each series, treat-all and treat-none."""
    pt = np.linspace(0.01, 0.99, 99) if thresholds is None else np.asarray(thresholds, float)
    out = {"threshold": pt.tolist()}
    for name, p in series.items():
        out[name] = net_benefit(y, p, pt).tolist()
    out["treat all"] = net_benefit_treat_all(float(np.mean(y)), pt).tolist()
    out["treat none"] = np.zeros_like(pt).tolist()
    return out


def plot_decision_curve(
    curves: Mapping[str, list[float]], path: Path, title: str = "Decision curve"
) -> Path:
    """Net benefit vs threshold probability, with treat-all and treat-none references."""
    fig = _figure(5.6, 4.4)
    ax = fig.add_subplot()
    pt = np.asarray(curves["threshold"])
    models = [k for k in curves if k not in ("threshold", "treat all", "treat none")]
    for i, name in enumerate(models):
        ax.plot(pt, curves[name], color=COLORS[i % len(COLORS)], lw=2, label=name)
    ax.plot(pt, curves["treat all"], color="0.35", lw=1.2, ls="--", label="treat all")
    ax.plot(pt, curves["treat none"], color="0.1", lw=1.2, ls=":", label="treat none")
    top = max(max(max(curves[k]) for k in models) if models else 0.0, max(curves["treat all"]))
    ax.set_ylim(-0.05 * max(top, 0.1), max(top, 0.05) * 1.15)
    ax.set(
        xlim=(0, 1),
        xlabel="Threshold probability",
        ylabel="Net benefit",
        title=title,
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def plot_confusion(
    tp: int, fp: int, tn: int, fn: int, threshold: float, path: Path, title: str = ""
) -> Path:
    """2x2 confusion matrix (rows = truth, columns = prediction) with counts and row %."""
    fig = _figure(4.2, 3.8)
    ax = fig.add_subplot()
    mat = np.array([[tn, fp], [fn, tp]], dtype=float)
    rows = mat.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(rows > 0, mat / rows, 0.0)
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(2):
        for j in range(2):
            color = "white" if frac[i, j] > 0.6 else "black"
            pct = f"{100 * frac[i, j]:.0f}%" if rows[i, 0] > 0 else "-"
            ax.text(j, i, f"{int(mat[i, j])}\n({pct})", ha="center", va="center", color=color)
    names = ["non-responder", "responder"]
    ax.set_xticks([0, 1], names)
    ax.set_yticks([0, 1], names)
    ax.set(
        xlabel="Predicted",
        ylabel="True",
        title=title or f"Confusion matrix (p >= {threshold:g})",
    )
    return _save(fig, path)
