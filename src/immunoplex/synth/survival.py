"""Synthetic time to event: overall and progression-free survival from a known hazard.

Both endpoints are proportional-hazards Weibull models sharing one log-hazard ``eta`` that is
built from the same latents as the response (docs/synthetic_cohort.md, "Survival")::

    eta = sum_k b_k * z_k  (+ combo arm effect)
    T_death ~ Weibull PH:  H(t) = (t / scale_os)^shape * exp(eta)
    T_prog  ~ Weibull PH:  H(t) = (t / scale_prog)^shape * exp(eta)
    PFS = min(T_prog, T_death)   (progression or death; same shape, so PFS is PH in eta too)
    C = min(administrative censoring U(follow_up), dropout ~ Exp(dropout_rate))
    observed time = min(T, C), event = T <= C       (times in months)

So ``eta`` is the true risk of both endpoints and its C-index is the oracle. What one modality
shows: ``eta_image_only = E[eta | image + clinical]`` drops the IFN term (independent, mean 0),
``eta_expression_only = E[eta | expression + clinical]`` replaces z_itf by its expectation under
the phenotype posterior given the CD8 density. Both are exact conditional expectations of the
log hazard. Draws use their own random stream, so nothing else in the cohort changes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from immunoplex.evaluation.survival import harrell_c
from immunoplex.synth.truth import COMBO, PHENOTYPES, reference_stats

ENDPOINTS = ("os", "pfs")
#: latent column of the truth table for each log-hazard coefficient in ``survival.effects``
EFFECT_LATENTS = {
    "cd8_intratumoural": "itf_z",
    "ifn": "ifn_z",
    "cd8_density": "cd8_z",
    "clever1": "clever1_z",
    "neutrophil": "neutrophil_z",
    "tumour_burden": "tumour_z",
}


def time_column(endpoint: str) -> str:
    return f"survival_time_{endpoint}"


def event_column(endpoint: str) -> str:
    return f"event_occurred_{endpoint}"


SURVIVAL_COLUMNS = [c for ep in ENDPOINTS for c in (time_column(ep), event_column(ep))]


def log_hazard(truth: pd.DataFrame, effects: dict[str, Any]) -> np.ndarray:
    """The true log-hazard ``eta`` of both endpoints."""
    eta = np.zeros(len(truth))
    for name, col in EFFECT_LATENTS.items():
        eta += float(effects.get(name, 0.0)) * truth[col].to_numpy(dtype=float)
    combo = (truth["treatment"].to_numpy() == COMBO).astype(float)
    return eta + float(effects.get("combo", 0.0)) * combo


def _expected_itf_z(truth: pd.DataFrame, truth_cfg: dict[str, Any]) -> np.ndarray:
    """E[z_itf | CD8 density]: Beta means under the phenotype posterior given the density."""
    ref = reference_stats(truth_cfg)["itf"]
    logd = np.log(truth["cd8_density"].to_numpy(dtype=float))
    prior = np.array([truth_cfg["phenotypes"][k] for k in PHENOTYPES], dtype=float)
    post = np.empty((len(truth), len(PHENOTYPES)))
    means = np.empty(len(PHENOTYPES))
    for k, ph in enumerate(PHENOTYPES):
        c = truth_cfg["cd8_density"][ph]
        post[:, k] = prior[k] * stats.norm.pdf(logd, np.log(c["median"]), c["sdlog"])
        a, b = truth_cfg["cd8_intratumoural_fraction"][ph]
        means[k] = (a / (a + b) - ref[0]) / ref[1]
    post /= post.sum(axis=1, keepdims=True)
    return post @ means


def oracle_log_hazards(
    truth: pd.DataFrame, truth_cfg: dict[str, Any], surv_cfg: dict[str, Any]
) -> pd.DataFrame:
    """``log_hazard`` (the truth) and the best image-only / expression-only log hazards."""
    eff = surv_cfg["effects"]
    eta = log_hazard(truth, eff)
    b_ifn, b_itf = float(eff.get("ifn", 0.0)), float(eff.get("cd8_intratumoural", 0.0))
    itf = truth["itf_z"].to_numpy(dtype=float)
    return pd.DataFrame(
        {
            "log_hazard": eta,
            "log_hazard_image_only": eta - b_ifn * truth["ifn_z"].to_numpy(dtype=float),
            "log_hazard_expression_only": eta - b_itf * (itf - _expected_itf_z(truth, truth_cfg)),
        },
        index=truth.index,
    )


def _weibull(u: np.ndarray, scale: float, shape: float, eta: np.ndarray) -> np.ndarray:
    """Inverse of H(t) = (t/scale)^shape exp(eta) at -log(u)."""
    return scale * (-np.log(u) * np.exp(-eta)) ** (1.0 / shape)


def sample_survival(
    truth: pd.DataFrame,
    truth_cfg: dict[str, Any],
    surv_cfg: dict[str, Any],
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Per patient: oracle log hazards, latent event/censoring times and the observed columns
    ``survival_time_{os,pfs}`` / ``event_occurred_{os,pfs}`` (NaN / <NA> = not recorded)."""
    n = len(truth)
    out = oracle_log_hazards(truth, truth_cfg, surv_cfg)
    eta = out["log_hazard"].to_numpy()
    shape = float(surv_cfg["weibull_shape"])
    # fixed draw order (determinism): death, progression, follow-up, dropout, missingness
    t_death = _weibull(rng.random(n), float(surv_cfg["scale_os"]), shape, eta)
    t_prog = _weibull(rng.random(n), float(surv_cfg["scale_progression"]), shape, eta)
    lo, hi = surv_cfg["follow_up"]
    censor = np.minimum(
        rng.uniform(float(lo), float(hi), n),
        rng.exponential(1.0 / float(surv_cfg["dropout_rate"]), n),
    )
    missing = {ep: rng.random(n) < float(surv_cfg["frac_missing"][ep]) for ep in ENDPOINTS}
    latent = {"os": t_death, "pfs": np.minimum(t_prog, t_death)}
    out["time_death"], out["time_progression"], out["time_censoring"] = t_death, t_prog, censor
    for ep in ENDPOINTS:
        t_obs = np.round(np.minimum(latent[ep], censor), 3)
        ev = (latent[ep] <= censor).astype(int)
        out[time_column(ep)] = np.where(missing[ep], np.nan, t_obs)
        out[event_column(ep)] = pd.array(np.where(missing[ep], -1, ev), dtype="Int64")
        out.loc[missing[ep], event_column(ep)] = pd.NA
    return out


def oracle_cindices(surv: pd.DataFrame, endpoint: str) -> dict[str, float]:
    """Harrell's C of the true / image-only / expression-only log hazards on observed times."""
    t = surv[time_column(endpoint)].to_numpy(dtype=float)
    e = surv[event_column(endpoint)].fillna(-1).to_numpy(dtype=int)
    ok = np.isfinite(t) & (e >= 0)
    return {
        k: harrell_c(t[ok], e[ok], surv[col].to_numpy(dtype=float)[ok])
        for k, col in (
            ("bayes", "log_hazard"),
            ("image_only", "log_hazard_image_only"),
            ("expression_only", "log_hazard_expression_only"),
        )
    }
