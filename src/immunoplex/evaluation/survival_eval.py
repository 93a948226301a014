"""The survival part of ``immunoplex-eval``: metrics, KM by predicted risk group, plots.

Used when the predictions table has a ``risk`` column (the model's log hazard; higher = earlier
event) and a time/event pair: ``survival_time`` / ``event_occurred`` (what ``immunoplex-train``
and ``immunoplex-predict`` write), else ``survival_time_os`` / ``event_occurred_os``, else the
``_pfs`` pair (names of the shared ICB cohorts). Optional ``survival_at_<h>`` columns (predicted
S(h), written when the checkpoint stores a Breslow baseline) are used for the calibration at
horizon h; without them S(h) comes from a Breslow baseline re-estimated on the evaluated
patients (a check of the ranking's shape, not of the model's absolute survival; said in the
report).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from immunoplex.errors import ManifestError
from immunoplex.evaluation import survival as S
from immunoplex.utils.atomic import atomic_path

RISK = "risk"
TIME_EVENT_PAIRS = (
    ("survival_time", "event_occurred"),
    ("survival_time_os", "event_occurred_os"),
    ("survival_time_pfs", "event_occurred_pfs"),
)
_AT = re.compile(r"^survival_at_(\d+(?:\.\d+)?)$")
COLORS = ["#2ca02c", "#ff7f0e", "#d62728", "#9467bd"]


def survival_columns(
    columns: Sequence[str], time_column: str | None = None, event_column: str | None = None
) -> tuple[str, str] | None:
    """The (time, event) pair to evaluate, or None when the table has no risk or no pair."""
    if RISK not in columns:
        return None
    if time_column and event_column:
        return time_column, event_column
    for t, e in TIME_EVENT_PAIRS:
        if t in columns and e in columns:
            return t, e
    return None


def _figure(w: float = 5.6, h: float = 4.6) -> Figure:
    fig = Figure(figsize=(w, h), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    return path.name


def plot_km(
    time: np.ndarray,
    event: np.ndarray,
    groups: np.ndarray,
    names: list[str],
    title: str,
    path: Path,
) -> str:
    """Kaplan-Meier curves per predicted risk group, 95% Greenwood bands, censoring ticks."""
    fig = _figure()
    ax = fig.add_subplot()
    for g, name in enumerate(names):
        m = groups == g
        if not m.any():
            continue
        km = S.kaplan_meier(time[m], event[m])
        x = np.r_[0.0, km.times]
        y = np.r_[1.0, km.survival]
        se = np.r_[0.0, km.se]
        c = COLORS[g % len(COLORS)]
        ax.step(x, y, where="post", color=c, label=f"{name} (n={int(m.sum())})")
        ax.fill_between(
            x, np.clip(y - 1.96 * se, 0, 1), np.clip(y + 1.96 * se, 0, 1), step="post",
            color=c, alpha=0.15, linewidth=0,
        )  # fmt: skip
        cens = time[m][event[m] == 0]
        ax.plot(cens, [km.at(t) for t in cens], "|", color=c, markersize=6)
    ax.set_xlabel("time")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def plot_horizon_calibration(rows: list[dict[str, float]], horizon: float, path: Path) -> str:
    fig = _figure(4.6, 4.4)
    ax = fig.add_subplot()
    p = [r["predicted"] for r in rows]
    o = [r["observed"] for r in rows]
    err = [1.96 * r["observed_se"] for r in rows]
    ax.plot([0, 1], [0, 1], "--", color="#888", linewidth=1)
    ax.errorbar(p, o, yerr=err, fmt="o", color="#1f77b4", capsize=3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"predicted S({horizon:g})")
    ax.set_ylabel(f"observed S({horizon:g}) (Kaplan-Meier)")
    ax.set_title(f"Calibration of survival at t = {horizon:g}", fontsize=9)
    return _save(fig, path)


def _risk(df: pd.DataFrame, source: str) -> np.ndarray:
    r = pd.to_numeric(df[RISK], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(r))
    if bad.size:
        i = int(bad[0])
        raise ManifestError(
            f"{source}: row {i + 1} (patient_id {df['patient_id'].iloc[i]!r}): risk "
            f"{df[RISK].iloc[i]!r} is not a finite number"
        )
    return r


def survival_section(
    df: pd.DataFrame,
    source: str,
    plots: Path | None,
    *,
    time_column: str | None = None,
    event_column: str | None = None,
    n_groups: int = 2,
    horizons: Sequence[float] | None = None,
    level: float = 0.95,
) -> dict[str, Any] | None:
    """Every survival figure for the report; None when the table has no survival columns."""
    cols = survival_columns(list(df.columns), time_column, event_column)
    if cols is None:
        return None
    tcol, ecol = cols
    where = [f"{source}: row {i + 1} (patient_id {p!r})" for i, p in enumerate(df["patient_id"])]
    t_all, e_all = S.parse_survival(df[tcol].tolist(), df[ecol].tolist(), where, tcol)
    r_all = _risk(df, source)
    ok = np.isfinite(t_all) & (e_all >= 0)
    t, e, r = t_all[ok], e_all[ok], r_all[ok]
    S.require_events(e, f"{source}: {tcol}")
    sec: dict[str, Any] = {
        "time_column": tcol,
        "event_column": ecol,
        "n": int(ok.sum()),
        "n_events": int(e.sum()),
        "n_without_time": int((~ok).sum()),
        "harrell_c": S.harrell_c(t, e, r),
        "notes": [],
    }
    tau = S.default_tau(t, e)
    sec["uno_c"], sec["uno_tau"] = S.uno_c(t, e, r, tau), tau
    hz = list(horizons) if horizons else S.default_horizons(t, e)
    sec["time_auc"] = [{"horizon": h, "auroc": v} for h, v in S.time_auc(t, e, r, hz).items()]
    bt, bh = S.breslow_baseline(t, e, r)
    grid = S.brier_grid(t)
    sec["integrated_brier"] = S.integrated_brier(t, e, S.survival_at(bt, bh, r, grid), grid)
    sec["brier_range"] = [float(grid[0]), float(grid[-1])]
    groups = S.risk_groups(r, n_groups)
    names = S.group_names(n_groups)
    lr = S.logrank(t, e, groups)
    sec["risk_groups"] = {
        "split": "median" if n_groups == 2 else f"{n_groups} quantile groups",
        "groups": [
            {
                "name": names[g],
                "n": int((groups == g).sum()),
                "events": int(e[groups == g].sum()),
                "median_survival": S.kaplan_meier(t[groups == g], e[groups == g]).median(),
            }
            for g in range(n_groups)
            if (groups == g).any()
        ],
        "logrank": {"statistic": lr.statistic, "df": lr.df, "p_value": lr.p_value},
        # HR of the high- vs low-risk group (median split) or per group step (quantile groups)
        "hazard_ratio": S.cox_hazard_ratio(t, e, groups, level),
    }
    sd = float(r.std())
    if sd > 0:
        sec["hazard_ratio_per_sd"] = S.cox_hazard_ratio(t, e, (r - r.mean()) / sd, level)
    # calibration at the middle horizon
    at = {float(m.group(1)): c for c in df.columns if (m := _AT.match(str(c)))}
    if at:
        h = sorted(at)[len(at) // 2]
        pred = pd.to_numeric(df[at[h]], errors="coerce").to_numpy(dtype=float)[ok]
        sec["calibration_source"] = f"model ({at[h]})"
    elif hz:
        h = hz[len(hz) // 2]
        pred = S.survival_at(bt, bh, r, [h])[:, 0]
        sec["calibration_source"] = "Breslow baseline re-estimated on these patients"
        sec["notes"].append(
            "no survival_at_<h> column: predicted S(h) uses a baseline hazard fitted on the "
            "evaluated patients (checks the shape of the risk score, not absolute survival)"
        )
    else:
        h, pred = None, None
    if h is not None and np.isfinite(pred).all():
        sec["calibration"] = {"horizon": h, "bins": S.horizon_calibration(t, e, pred, h)}
    sec["plots"] = {}
    if plots is not None:
        g = sec["risk_groups"]
        hr = g["hazard_ratio"]
        title = (
            f"{tcol}: log-rank p = {lr.p_value:.3g}; HR {hr['hr']:.2f} "
            f"[{hr['ci_low']:.2f}, {hr['ci_high']:.2f}]; C = {sec['harrell_c']:.3f}"
        )
        sec["plots"]["km"] = plot_km(t, e, groups, names, title, plots / "km_risk_groups.png")
        if "calibration" in sec:
            c = sec["calibration"]
            sec["plots"]["calibration"] = plot_horizon_calibration(
                c["bins"], c["horizon"], plots / "survival_calibration.png"
            )
    return sec


def evaluate_survival(
    df: pd.DataFrame,
    source: str,
    out: Path,
    title: str,
    make_plots: bool,
    name: str | None,
    **options: Any,
) -> dict[str, Any]:
    """Survival-only report (a ``risk`` but no ``probability`` column): metrics.json + reports."""
    import json

    from immunoplex.evaluation.report import write_reports
    from immunoplex.utils.atomic import write_text
    from immunoplex.utils.jsonsafe import to_json

    df = df.copy()
    df.columns = [str(c).strip() for c in df.columns]
    if "patient_id" not in df.columns:
        raise ManifestError(f"{source}: missing required column patient_id")
    plots = out / "plots"
    (plots if make_plots else out).mkdir(parents=True, exist_ok=True)
    sec = survival_section(df, source, plots if make_plots else None, **options)
    result = {
        "title": title,
        "input": {
            "predictions": source,
            "name": name or (Path(source).stem if source != "predictions" else "model"),
            "n_rows": int(len(df)),
        },
        "settings": {"ci_level": options.get("level", 0.95)},
        "survival": sec,
        "notes": [],
    }
    result = to_json(result)
    write_text(out / "metrics.json", json.dumps(result, indent=2) + "\n")
    write_reports(result, out)
    return result
