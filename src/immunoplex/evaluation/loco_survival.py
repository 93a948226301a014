"""Leave-one-cohort-out survival benchmark on the public ICB cohorts: C-index per held-out cohort.

The survival counterpart of :mod:`immunoplex.evaluation.loco` (the response table), kept in its
own module. Per endpoint (OS, PFS) only the cohorts that record it take part, and only their
patients with a time (missing = unlabelled). For each held-out cohort:

- **signatures** (CD274, CD8A, CYT, IFNG6, TEFF, ...): risk = -score (oriented a priori: a
  responder signature predicts longer survival; nothing is fitted or flipped on the test data);
- ``cox_signatures``: a Cox model (lifelines, stratified by training cohort, ridge 0.1) on the
  within-cohort z-scored signature scores, fitted on the other cohorts;
- ``cox_ridge_genes``: a linear Cox model on within-cohort z-scored genes, trained with
  :func:`immunoplex.models.survival.cox_loss` (full batch = each training cohort its own risk
  set, i.e. stratified; L2 penalty ``ridge``), fitted on the other cohorts.

Harrell's C-index per held-out cohort with a percentile bootstrap CI; the pooled figure is the
**stratified** C-index (pairs compared only within a cohort: follow-up and baseline hazards
differ between studies) and the mean over cohorts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from immunoplex.evaluation.survival import harrell_c, parse_survival
from immunoplex.expression.icb import find_cohorts
from immunoplex.expression.signatures import SIGNATURES, score_signatures, zscore_within
from immunoplex.utils.tables import read_table

ENDPOINTS = ("os", "pfs")
POOLED = "pooled (stratified)"


def icb_survival(realdata: str | Path, patient_ids: Sequence[str]) -> pd.DataFrame:
    """survival_time_{os,pfs} / event_occurred_{os,pfs} per patient (ids as in
    :func:`immunoplex.expression.icb.load_icb_cohorts`: ``<cohort>_<sample>``); NaN / -1 where a
    cohort does not record it. Events recorded without a time are left out and counted in
    ``attrs["events_without_time"]``; any other bad cell is a one-line error naming the row."""
    rows = []
    incomplete: dict[str, int] = {}
    for name, (_, coldata) in find_cohorts(realdata).items():
        col = read_table(coldata, "sample table")
        col = col.set_index(col.columns[0])
        prefix = re.sub(r"\W+", "_", name)
        frame = pd.DataFrame(index=[f"{prefix}_{s.strip()}" for s in col.index])
        for ep in ENDPOINTS:
            tc, ec = f"survival_time_{ep}", f"event_occurred_{ep}"
            if tc not in col.columns or ec not in col.columns:
                frame[tc], frame[ec] = np.nan, -1
                continue
            where = [f"{coldata}:{i + 2}" for i in range(len(col))]
            # the published tables have a few events without a time: unusable, counted, left out
            no_time = col[tc].map(lambda v: str(v).strip().lower() in ("", "nan", "na"))
            incomplete[f"{name}/{ep}"] = int((no_time & col[ec].notna()).sum())
            ev = col[ec].where(~no_time, None)
            frame[tc], frame[ec] = parse_survival(col[tc].tolist(), ev.tolist(), where, tc)
        rows.append(frame)
    out = pd.concat(rows).reindex(list(patient_ids))
    for ep in ENDPOINTS:
        out[f"event_occurred_{ep}"] = out[f"event_occurred_{ep}"].fillna(-1).astype(int)
    out.attrs["events_without_time"] = {k: v for k, v in incomplete.items() if v}
    return out


def _fit_ridge_cox(x: np.ndarray, t: np.ndarray, e: np.ndarray, strata: np.ndarray, ridge: float):
    import torch

    from immunoplex.models.survival import cox_loss

    xt = torch.tensor(x, dtype=torch.float64)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    groups = [torch.tensor(np.flatnonzero(strata == s)) for s in np.unique(strata)]
    tt, et = torch.tensor(t), torch.tensor(e, dtype=torch.float64)
    n_events = float(e.sum())
    opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        risk = xt @ w
        loss = sum(cox_loss(risk[g], tt[g], et[g], reduction="sum") for g in groups) / n_events
        loss = loss + ridge * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy()


def _fit_cox_signatures(z: pd.DataFrame, t: np.ndarray, e: np.ndarray, strata: np.ndarray):
    from lifelines import CoxPHFitter

    df = z.reset_index(drop=True).assign(T=t, E=e, S=strata)
    cph = CoxPHFitter(penalizer=0.1).fit(df, "T", "E", strata=["S"])
    return cph.params_.reindex(z.columns).to_numpy()


@dataclass
class SurvivalLoco:
    """Held-out risks in long form: patient_id, cohort, endpoint, method, risk, time, event."""

    predictions: pd.DataFrame
    methods: list[str]


def run_loco_survival(
    values: pd.DataFrame,
    cohorts: pd.Series,
    survival: pd.DataFrame,
    baselines: Sequence[str] = tuple(SIGNATURES),
    ridge: float = 0.05,
    min_events: int = 5,
) -> SurvivalLoco:
    """Fit the Cox models once per (endpoint, held-out cohort) on the other cohorts that record
    the endpoint; score the signatures on the same held-out patients."""
    coh = cohorts.astype(str).reindex(values.index)
    sig = zscore_within(score_signatures(values, coh, names=baselines), coh.to_numpy())
    genes = zscore_within(values, coh.to_numpy())
    rows = []
    methods = ["cox_ridge_genes", "cox_signatures", *sig.columns]
    for ep in ENDPOINTS:
        t_all = survival[f"survival_time_{ep}"].reindex(values.index).to_numpy(dtype=float)
        e_all = survival[f"event_occurred_{ep}"].reindex(values.index).to_numpy(dtype=int)
        has = np.isfinite(t_all) & (e_all >= 0)
        recording = [c for c in pd.unique(coh) if (e_all[(coh == c).to_numpy() & has] == 1).sum()
                     >= min_events]  # fmt: skip
        for held in recording:
            test = np.flatnonzero(has & (coh == held).to_numpy())
            train = np.flatnonzero(has & coh.isin(recording).to_numpy() & (coh != held).to_numpy())
            t_tr, e_tr, s_tr = t_all[train], e_all[train], coh.to_numpy()[train]
            risks = {
                "cox_ridge_genes": genes.to_numpy()[test]
                @ _fit_ridge_cox(genes.to_numpy()[train], t_tr, e_tr, s_tr, ridge),
                "cox_signatures": sig.to_numpy()[test]
                @ _fit_cox_signatures(sig.iloc[train], t_tr, e_tr, s_tr),
            }
            for name in sig.columns:
                risks[name] = -sig[name].to_numpy()[test]
            frame = pd.DataFrame(
                {"patient_id": values.index[test], "cohort": held, "endpoint": ep,
                 "time": t_all[test], "event": e_all[test]}
            )  # fmt: skip
            rows += [frame.assign(method=m, risk=r) for m, r in risks.items()]
    return SurvivalLoco(pd.concat(rows, ignore_index=True), methods)


def _counts(t: np.ndarray, e: np.ndarray, r: np.ndarray) -> tuple[float, float]:
    ev = e == 1
    comp = ((t[None, :] > t[:, None]) | ((t[None, :] == t[:, None]) & (e[None, :] == 0))) & ev[
        :, None
    ]
    conc = ((r[None, :] < r[:, None]) & comp).sum() + 0.5 * (
        (r[None, :] == r[:, None]) & comp
    ).sum()
    return float(conc), float(comp.sum())


def summarise_survival(res: SurvivalLoco, n_boot: int = 500, seed: int = 0) -> pd.DataFrame:
    """C-index [CI] per (endpoint, method, cohort), plus pooled (stratified) and mean rows."""
    out = []
    p = res.predictions
    for ep in p["endpoint"].unique():
        pe = p[p["endpoint"] == ep]
        cohorts = list(pd.unique(pe["cohort"]))
        for m in res.methods:
            pm = pe[pe["method"] == m]
            per = {c: pm[pm["cohort"] == c] for c in cohorts}
            rng = np.random.default_rng(seed)
            boots = {c: [] for c in cohorts}
            for c, sub in per.items():
                t, e, r = (sub[k].to_numpy(float) for k in ("time", "event", "risk"))
                for _ in range(n_boot):
                    i = rng.integers(0, len(t), len(t))
                    boots[c].append(_counts(t[i], e[i], r[i]))
            for c, sub in per.items():
                b = np.array([n / d if d else np.nan for n, d in boots[c]])
                out.append(
                    _row(ep, m, c, sub, harrell_c(sub["time"], sub["event"], sub["risk"]), b)
                )
            num = sum(_counts(*(s[k].to_numpy(float) for k in ("time", "event", "risk")))[0]
                      for s in per.values())  # fmt: skip
            den = sum(_counts(*(s[k].to_numpy(float) for k in ("time", "event", "risk")))[1]
                      for s in per.values())  # fmt: skip
            bp = np.array(
                [sum(boots[c][k][0] for c in cohorts) / max(sum(boots[c][k][1] for c in cohorts), 1)
                 for k in range(n_boot)]
            )  # fmt: skip
            out.append(_row(ep, m, POOLED, pm, num / den, bp))
    return pd.DataFrame(out)


def _row(ep: str, m: str, c: str, sub: pd.DataFrame, c_index: float, boots: np.ndarray) -> dict:
    lo, hi = np.nanquantile(boots, [0.025, 0.975]) if boots.size else (np.nan, np.nan)
    return {"endpoint": ep, "method": m, "cohort": c, "c_index": float(c_index),
            "low": float(lo), "high": float(hi), "n": int(len(sub)),
            "events": int((sub["event"] == 1).sum())}  # fmt: skip


def survival_markdown(summary: pd.DataFrame, methods: Sequence[str]) -> str:
    """One table per endpoint: rows held-out cohorts (+ pooled, mean), columns methods."""
    parts = []
    for ep in summary["endpoint"].unique():
        s = summary[summary["endpoint"] == ep]
        lines = [f"### {ep.upper()}: C-index [95% CI] per held-out cohort", "",
                 "| held-out cohort | n (events) | " + " | ".join(methods) + " |",
                 "|" + " --- |" * (len(methods) + 2)]  # fmt: skip
        for c in [*[c for c in pd.unique(s["cohort"]) if c != POOLED], POOLED]:
            sc = s[s["cohort"] == c].set_index("method")
            first = sc.iloc[0]
            cells = [f"{sc.loc[m, 'c_index']:.2f} [{sc.loc[m, 'low']:.2f}, {sc.loc[m, 'high']:.2f}]"
                     for m in methods]  # fmt: skip
            name = f"**{c}**" if c == POOLED else c
            lines.append(
                f"| {name} | {first['n']} ({first['events']}) | " + " | ".join(cells) + " |"
            )
        means = [s[(s["method"] == m) & (s["cohort"] != POOLED)]["c_index"].mean() for m in methods]
        lines.append("| mean over cohorts | | " + " | ".join(f"{v:.3f}" for v in means) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)
