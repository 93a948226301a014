"""Time-to-event metrics: C-indices, time-dependent AUROC, Brier score, KM, log-rank, Cox HR.

Conventions (all functions): ``time`` >= 0 (any unit; the shared ICB cohorts use months),
``event`` 1 = the event (progression / death) was observed, 0 = censored at ``time``; ``risk``:
higher = earlier event (a Cox log-hazard, ``-survival time``, ...). Patients without a time for
an endpoint are *unlabelled* for it and must be dropped before (``survival_arrays`` does).

Ours (numpy, tested equal to lifelines to 1e-6): Harrell's C-index, Kaplan-Meier, the
(multi-group) log-rank test, the Breslow baseline hazard. From the libraries: Uno's C-index,
cumulative/dynamic AUROC and the integrated Brier score (scikit-survival), the Cox hazard ratio
with its CI (lifelines ``CoxPHFitter``, Efron ties). Uno's C and the AUROC weight by the inverse
probability of censoring estimated on ``train`` (``None``: on the evaluated patients themselves).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from immunoplex.data.survival import EVENT_VALUES, parse_survival, require_events

__all__ = ["EVENT_VALUES", "parse_survival", "require_events"]  # re-exported (one parser)


def survival_arrays(
    time: Any, event: Any, risk: Any | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Float/int arrays with the unlabelled (NaN time or event < 0) patients removed."""
    t = np.asarray(time, dtype=np.float64)
    e = np.asarray(event, dtype=np.float64)
    ok = np.isfinite(t) & (e >= 0)
    r = None if risk is None else np.asarray(risk, dtype=np.float64)[ok]
    return t[ok], e[ok].astype(np.int64), r


# ---- concordance ---------------------------------------------------------------------------
def harrell_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray, chunk: int = 2048) -> float:
    """Harrell's C-index (lifelines' convention; ``risk`` higher = earlier event).

    Comparable pairs: i had the event and t_i < t_j, or t_i == t_j with i an event and j
    censored. Tied risks count 1/2. NaN when no pair is comparable.
    """
    t, e, r = (np.asarray(a, dtype=np.float64) for a in (time, event, risk))
    num = den = 0.0
    ev = np.flatnonzero(e == 1)
    for s in range(0, ev.size, chunk):
        i = ev[s : s + chunk]
        ti, ri = t[i, None], r[i, None]
        comp = (t[None, :] > ti) | ((t[None, :] == ti) & (e[None, :] == 0))
        den += comp.sum()
        num += ((r[None, :] < ri) & comp).sum() + 0.5 * ((r[None, :] == ri) & comp).sum()
    return float(num / den) if den else float("nan")


def _structured(time: np.ndarray, event: np.ndarray) -> np.ndarray:
    from sksurv.util import Surv

    return Surv.from_arrays(event=np.asarray(event).astype(bool), time=np.asarray(time, float))


def default_tau(time: np.ndarray, event: np.ndarray, q: float = 0.9) -> float:
    """Truncation time for Uno's C / IBS: the q-quantile of observed times (where the censoring
    survival is still positive)."""
    return float(np.quantile(np.asarray(time, float), q))


def uno_c(
    time: np.ndarray,
    event: np.ndarray,
    risk: np.ndarray,
    tau: float | None = None,
    train: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """Uno's IPCW C-index truncated at ``tau`` (scikit-survival ``concordance_index_ipcw``)."""
    from sksurv.metrics import concordance_index_ipcw

    tr = train if train is not None else (time, event)
    tau = default_tau(time, event) if tau is None else float(tau)
    return float(
        concordance_index_ipcw(
            _structured(*tr), _structured(time, event), np.asarray(risk, float), tau=tau
        )[0]
    )


def default_horizons(time: np.ndarray, event: np.ndarray) -> list[float]:
    """Quartiles (25/50/75%) of the event times, rounded to 2 significant digits."""
    te = np.asarray(time, float)[np.asarray(event) == 1]
    if te.size == 0:
        return []
    return sorted({float(f"{h:.2g}") for h in np.quantile(te, [0.25, 0.5, 0.75]) if h > 0})


def time_auc(
    time: np.ndarray,
    event: np.ndarray,
    risk: np.ndarray,
    horizons: Sequence[float],
    train: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[float, float]:
    """Cumulative/dynamic AUROC at each horizon (scikit-survival ``cumulative_dynamic_auc``).

    Horizons outside the follow-up (no case before, or no one at risk after) are NaN."""
    from sksurv.metrics import cumulative_dynamic_auc

    tr = train if train is not None else (time, event)
    t, e = np.asarray(time, float), np.asarray(event)
    out: dict[float, float] = {}
    for h in horizons:
        if not ((t <= h) & (e == 1)).any() or not (t > h).any() or h >= np.max(tr[0]):
            out[float(h)] = float("nan")
            continue
        auc, _ = cumulative_dynamic_auc(
            _structured(*tr), _structured(t, e), np.asarray(risk, float), [float(h)]
        )
        out[float(h)] = float(auc[0])
    return out


# ---- Kaplan-Meier, log-rank, Breslow ---------------------------------------------------------
@dataclass
class KaplanMeier:
    """Step function: S(t) = survival[k] for times[k] <= t < times[k+1] (S = 1 before)."""

    times: np.ndarray
    survival: np.ndarray
    at_risk: np.ndarray
    events: np.ndarray
    #: Greenwood standard error of S at each step
    se: np.ndarray

    def at(self, t: float) -> float:
        k = np.searchsorted(self.times, t, side="right") - 1
        return 1.0 if k < 0 else float(self.survival[k])

    def median(self) -> float:
        below = np.flatnonzero(self.survival <= 0.5)
        return float(self.times[below[0]]) if below.size else float("nan")


def kaplan_meier(time: np.ndarray, event: np.ndarray) -> KaplanMeier:
    """Kaplan-Meier estimate at every distinct observed time (events and censorings)."""
    t, e = np.asarray(time, float), np.asarray(event)
    ut, inv = np.unique(t, return_inverse=True)
    d = np.bincount(inv, weights=(e == 1).astype(float), minlength=ut.size)
    c = np.bincount(inv, minlength=ut.size).astype(float)
    n = c[::-1].cumsum()[::-1]
    s = np.cumprod(1.0 - d / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.cumsum(np.where(n > d, d / (n * (n - d)), 0.0))
    return KaplanMeier(ut, s, n, d, s * np.sqrt(g))


@dataclass
class LogRank:
    statistic: float
    df: int
    p_value: float
    observed: list[float]
    expected: list[float]


def logrank(time: np.ndarray, event: np.ndarray, groups: np.ndarray) -> LogRank:
    """The (multi-group) log-rank test: chi-square with G - 1 degrees of freedom."""
    t, e, g = np.asarray(time, float), np.asarray(event), np.asarray(groups)
    labels = np.unique(g)
    if labels.size < 2:
        return LogRank(float("nan"), 0, float("nan"), [], [])
    gi = np.searchsorted(labels, g)
    ut = np.unique(t[e == 1])
    # n[k, j]: at risk in group j at event time k; d[k, j]: events
    n = np.stack([(t[None, gi == j] >= ut[:, None]).sum(1) for j in range(labels.size)], 1)
    d = np.stack(
        [(t[None, (gi == j) & (e == 1)] == ut[:, None]).sum(1) for j in range(labels.size)], 1
    ).astype(float)
    n = n.astype(float)
    nt, dt = n.sum(1), d.sum(1)
    exp = (dt / nt)[:, None] * n
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(nt > 1, dt * (nt - dt) / (nt - 1), 0.0) / nt
    v = np.einsum("k,kj,jl->jl", f, n, np.eye(labels.size)) - np.einsum("k,kj,kl->jl", f / nt, n, n)
    u = (d - exp).sum(0)
    stat = float(u[:-1] @ np.linalg.solve(v[:-1, :-1], u[:-1]))
    dof = labels.size - 1
    return LogRank(
        stat, dof, float(stats.chi2.sf(stat, dof)), d.sum(0).tolist(), exp.sum(0).tolist()
    )


def breslow_baseline(
    time: np.ndarray, event: np.ndarray, risk: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Breslow cumulative baseline hazard H0 at each distinct event time: (times, H0).

    S(t | risk) = exp(-H0(t) * exp(risk)); ``risk`` is the model's log-hazard (any offset)."""
    t, e = np.asarray(time, float), np.asarray(event)
    r = np.asarray(risk, float)
    shift = r.max() if r.size else 0.0
    w = np.exp(r - shift)
    ut = np.unique(t[e == 1])
    order = np.argsort(t)
    ts, ws = t[order], w[order]
    tail = ws[::-1].cumsum()[::-1]  # sum of w over t_j >= ts[k]
    at_risk = tail[np.searchsorted(ts, ut, side="left")]
    d = np.array([np.sum((t == u) & (e == 1)) for u in ut], float)
    return ut, np.cumsum(d / at_risk) * np.exp(-shift)


def survival_at(
    base_times: np.ndarray, base_cumhaz: np.ndarray, risk: np.ndarray, times: Sequence[float]
) -> np.ndarray:
    """S(t | risk) at ``times`` from a Breslow baseline: array (n_patients, n_times)."""
    k = np.searchsorted(np.asarray(base_times), np.asarray(times, float), side="right") - 1
    h0 = np.where(k >= 0, np.asarray(base_cumhaz)[np.clip(k, 0, None)], 0.0)
    return np.exp(-np.exp(np.asarray(risk, float))[:, None] * h0[None, :])


def integrated_brier(
    time: np.ndarray,
    event: np.ndarray,
    surv: np.ndarray,
    grid: np.ndarray,
    train: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """Integrated Brier score over ``grid`` (scikit-survival); ``surv`` is (n, len(grid))."""
    from sksurv.metrics import integrated_brier_score

    tr = train if train is not None else (time, event)
    return float(integrated_brier_score(_structured(*tr), _structured(time, event), surv, grid))


def brier_grid(time: np.ndarray, n: int = 50) -> np.ndarray:
    """Evaluation grid between the 10th and 80th percentile of the observed times."""
    lo, hi = np.quantile(np.asarray(time, float), [0.1, 0.8])
    return np.linspace(lo, hi, n) if hi > lo else np.array([lo])


# ---- risk groups, hazard ratio, calibration ----------------------------------------------------
def risk_groups(risk: np.ndarray, n_groups: int = 2) -> np.ndarray:
    """0 (lowest risk) .. n_groups-1 by quantiles of ``risk`` (median split for 2, tertiles 3)."""
    r = np.asarray(risk, float)
    if n_groups < 2:
        raise ValueError("n_groups must be >= 2")
    cuts = np.quantile(r, np.arange(1, n_groups) / n_groups)
    return np.searchsorted(cuts, r, side="right")


def group_names(n_groups: int) -> list[str]:
    if n_groups == 2:
        return ["low risk", "high risk"]
    if n_groups == 3:
        return ["low risk", "intermediate risk", "high risk"]
    return [f"risk group {k + 1}" for k in range(n_groups)]


def cox_hazard_ratio(
    time: np.ndarray, event: np.ndarray, covariate: np.ndarray, level: float = 0.95
) -> dict[str, float]:
    """Univariable Cox model (lifelines, Efron ties): HR per unit of ``covariate`` with CI, p."""
    from lifelines import CoxPHFitter

    df = pd.DataFrame({"T": time, "E": event, "x": np.asarray(covariate, float)})
    cph = CoxPHFitter(alpha=1 - level).fit(df, "T", "E")
    coef, se = float(cph.params_["x"]), float(cph.standard_errors_["x"])
    z = stats.norm.ppf(0.5 + level / 2)
    return {
        "hr": math.exp(coef),
        "ci_low": math.exp(coef - z * se),
        "ci_high": math.exp(coef + z * se),
        "p_value": float(cph.summary.loc["x", "p"]),
        "log_hr": coef,
        "se": se,
    }


def horizon_calibration(
    time: np.ndarray, event: np.ndarray, predicted: np.ndarray, horizon: float, n_bins: int = 4
) -> list[dict[str, float]]:
    """Per quantile bin of predicted S(horizon): mean predicted vs Kaplan-Meier observed (±SE)."""
    p = np.asarray(predicted, float)
    bins = risk_groups(p, n_bins) if len(np.unique(p)) >= n_bins else np.zeros(len(p), int)
    rows = []
    for b in np.unique(bins):
        m = bins == b
        km = kaplan_meier(np.asarray(time)[m], np.asarray(event)[m])
        k = np.searchsorted(km.times, horizon, side="right") - 1
        rows.append(
            {
                "bin": int(b),
                "n": int(m.sum()),
                "predicted": float(p[m].mean()),
                "observed": km.at(horizon),
                "observed_se": float(km.se[k]) if k >= 0 else 0.0,
            }
        )
    return rows
