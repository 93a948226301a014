"""Patient latent biology and the known truth: response probability and its parts.

Everything here is per patient and cheap (no images), so large truth tables can be drawn to check
the effect sizes (``sample_truth``). The images and the expression table are rendered from the
same latents elsewhere.

Truth model (z = standardised by the population reference, see docs/synthetic_cohort.md)::

    logit = intercept
          + image_only       b_itf * z(cd8 intratumoural fraction)
          + expression_only  b_ifn * ifn
          + shared           b_clever * z(log Clever-1+ macrophage density) + b_neut * neutrophil
          + treatment        combo * (b_combo + b_combo_clever * z_clever)
                             + mono * (b_mono_clever * z_clever + b_mono_sclever * z(log sClever-1))
    p_response = sigmoid(logit);  label ~ Bernoulli(p_response)
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
from scipy import special, stats

from immunoplex.evaluation.metrics import expected_auroc

PHENOTYPES = ("inflamed", "excluded", "desert")
MONO = "anti-PD-1"
COMBO = "bexmarilimab+anti-PD-1"
ARMS = (MONO, COMBO)

#: Reference sample used to standardise latents; fixed so the truth does not depend on the cohort.
_REFERENCE_N = 200_000
_REFERENCE_SEED = 20240917


def _raw_latents(n: int, rng: np.random.Generator, t: dict[str, Any]) -> dict[str, np.ndarray]:
    """Latents that need no standardisation constants (drawn in a fixed order: determinism)."""
    probs = np.array([t["phenotypes"][k] for k in PHENOTYPES], dtype=float)
    ph = rng.choice(len(PHENOTYPES), size=n, p=probs / probs.sum())
    med = np.array([t["cd8_density"][k]["median"] for k in PHENOTYPES])
    sdl = np.array([t["cd8_density"][k]["sdlog"] for k in PHENOTYPES])
    cd8_density = med[ph] * np.exp(sdl[ph] * rng.standard_normal(n))
    ab = np.array([t["cd8_intratumoural_fraction"][k] for k in PHENOTYPES], dtype=float)
    itf = rng.beta(ab[ph, 0], ab[ph, 1])
    ifn = rng.standard_normal(n)
    mac = t["macrophage_density"]
    macrophage_density = mac["median"] * np.exp(mac["sdlog"] * rng.standard_normal(n))
    cf = t["clever1_fraction"]
    clever1_fraction = special.expit(cf["mean_logit"] + cf["sd_logit"] * rng.standard_normal(n))
    neutrophil_z = rng.standard_normal(n)
    neu = t["neutrophil_density"]
    neutrophil_density = neu["median"] * np.exp(neu["sdlog"] * neutrophil_z)
    lo, hi = t["tumour_burden"]
    tumour_burden = rng.uniform(lo, hi, n)
    vessel_z = rng.standard_normal(n)
    sclever_noise = rng.standard_normal(n)
    return {
        "phenotype_idx": ph,
        "cd8_density": cd8_density,
        "cd8_intratumoural_fraction": itf,
        "ifn_z": ifn,
        "macrophage_density": macrophage_density,
        "clever1_fraction": clever1_fraction,
        "clever1_density": macrophage_density * clever1_fraction,
        "neutrophil_z": neutrophil_z,
        "neutrophil_density": neutrophil_density,
        "tumour_burden": tumour_burden,
        "vessel_z": vessel_z,
        "_sclever_noise": sclever_noise,
    }


@lru_cache(maxsize=8)
def _reference_stats_cached(key: str) -> dict[str, tuple[float, float]]:
    t = json.loads(key)
    raw = _raw_latents(_REFERENCE_N, np.random.default_rng(_REFERENCE_SEED), t)
    out = {"itf": raw["cd8_intratumoural_fraction"]}
    for name in ("cd8_density", "macrophage_density", "clever1_density", "tumour_burden"):
        out[name] = np.log(raw[name])
    return {k: (float(v.mean()), float(v.std())) for k, v in out.items()}


def reference_stats(truth_cfg: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Population mean and SD used to standardise each latent (log scale for densities)."""
    return _reference_stats_cached(json.dumps(truth_cfg, sort_keys=True))


def _z(values: np.ndarray, ref: tuple[float, float]) -> np.ndarray:
    return (values - ref[0]) / ref[1]


def sample_latents(
    n: int, rng: np.random.Generator, truth_cfg: dict[str, Any], arm_probs: dict[str, float]
) -> pd.DataFrame:
    """Draw ``n`` patients' latent biology, plasma sClever-1 and treatment arm."""
    t = truth_cfg
    raw = _raw_latents(n, rng, t)
    ref = reference_stats(t)
    clever_z = _z(np.log(raw["clever1_density"]), ref["clever1_density"])
    s = t["sclever1"]
    log_s = (
        np.log(s["median"])
        + s["clever1_loading"] * clever_z
        + s["noise_sdlog"] * raw["_sclever_noise"]
    )
    arms = list(arm_probs)
    ap = np.array([arm_probs[a] for a in arms], dtype=float)
    arm = np.asarray(arms, dtype=object)[rng.choice(len(arms), size=n, p=ap / ap.sum())]
    df = pd.DataFrame(
        {
            "phenotype": np.asarray(PHENOTYPES, dtype=object)[raw["phenotype_idx"]],
            "treatment": arm,
            "cd8_density": raw["cd8_density"],
            "cd8_intratumoural_fraction": raw["cd8_intratumoural_fraction"],
            "ifn_z": raw["ifn_z"],
            "macrophage_density": raw["macrophage_density"],
            "clever1_fraction": raw["clever1_fraction"],
            "clever1_density": raw["clever1_density"],
            "neutrophil_z": raw["neutrophil_z"],
            "neutrophil_density": raw["neutrophil_density"],
            "tumour_burden": raw["tumour_burden"],
            "vessel_z": raw["vessel_z"],
            "sclever1": np.exp(log_s),
        }
    )
    df["cd8_z"] = _z(np.log(df["cd8_density"].to_numpy()), ref["cd8_density"])
    df["itf_z"] = _z(df["cd8_intratumoural_fraction"].to_numpy(), ref["itf"])
    df["macrophage_z"] = _z(np.log(df["macrophage_density"].to_numpy()), ref["macrophage_density"])
    df["clever1_z"] = clever_z
    df["tumour_z"] = _z(np.log(df["tumour_burden"].to_numpy()), ref["tumour_burden"])
    sd_s = float(np.hypot(s["clever1_loading"], s["noise_sdlog"]))
    df["sclever1_z"] = (log_s - np.log(s["median"])) / sd_s
    return df


def logit_parts(latents: pd.DataFrame, effects: dict[str, Any]) -> pd.DataFrame:
    """The four additive parts of the true logit (plus the intercept)."""
    e = effects
    combo = (latents["treatment"].to_numpy() == COMBO).astype(float)
    mono = 1.0 - combo
    cz = latents["clever1_z"].to_numpy()
    return pd.DataFrame(
        {
            "logit_intercept": np.full(len(latents), float(e["intercept"])),
            "logit_image_only": e["image_only"]["cd8_intratumoural"] * latents["itf_z"].to_numpy(),
            "logit_expression_only": e["expression_only"]["ifn"] * latents["ifn_z"].to_numpy(),
            "logit_shared": e["shared"]["clever1"] * cz
            + e["shared"]["neutrophil"] * latents["neutrophil_z"].to_numpy(),
            "logit_treatment": combo
            * (e["treatment"]["combo"] + e["treatment"]["combo_x_clever1"] * cz)
            + mono
            * (
                e["treatment"]["mono_x_clever1"] * cz
                + e["treatment"]["mono_x_sclever1"] * latents["sclever1_z"].to_numpy()
            ),
        },
        index=latents.index,
    )


def _image_only_probability(parts: pd.DataFrame, b_ifn: float) -> np.ndarray:
    """E[p | everything the images + clinical data show]: integrate the IFN program out."""
    known = parts.drop(columns=["logit_expression_only"]).sum(axis=1).to_numpy()
    nodes, weights = np.polynomial.hermite_e.hermegauss(48)
    weights = weights / weights.sum()
    return special.expit(known[:, None] + b_ifn * nodes[None, :]) @ weights


def _expression_only_probability(
    latents: pd.DataFrame, parts: pd.DataFrame, truth_cfg: dict[str, Any], n_quad: int = 128
) -> np.ndarray:
    """E[p | everything expression + clinical data show]: integrate CD8 location out.

    Expression measures total CD8 density, so the phenotype is only known through its posterior
    given that density; the intratumoural fraction is then drawn from that phenotype's Beta.
    """
    t = truth_cfg
    b_itf = t["effects"]["image_only"]["cd8_intratumoural"]
    ref = reference_stats(t)["itf"]
    known = parts.drop(columns=["logit_image_only"]).sum(axis=1).to_numpy()
    logd = np.log(latents["cd8_density"].to_numpy())
    prior = np.array([t["phenotypes"][k] for k in PHENOTYPES], dtype=float)
    prior = prior / prior.sum()
    post = np.empty((len(latents), len(PHENOTYPES)))
    expect = np.empty_like(post)
    u = (np.arange(n_quad) + 0.5) / n_quad
    for k, ph in enumerate(PHENOTYPES):
        c = t["cd8_density"][ph]
        post[:, k] = prior[k] * stats.norm.pdf(logd, np.log(c["median"]), c["sdlog"])
        a, b = t["cd8_intratumoural_fraction"][ph]
        itf_q = stats.beta.ppf(u, a, b)
        term = b_itf * (itf_q - ref[0]) / ref[1]
        expect[:, k] = special.expit(known[:, None] + term[None, :]).mean(axis=1)
    post /= post.sum(axis=1, keepdims=True)
    return np.sum(post * expect, axis=1)


def sample_truth(
    n_patients: int,
    seed: int,
    truth_cfg: dict[str, Any] | None = None,
    arm_probs: dict[str, float] | None = None,
    rng: np.random.Generator | None = None,
) -> pd.DataFrame:
    """Latents, logit parts, true/oracle probabilities and a sampled label per patient.

    ``p_image_only`` / ``p_expression_only`` are the best possible predictors for a model that sees
    only the images (+ clinical: arm, sClever-1) or only the expression (+ clinical).
    ``truth_cfg`` defaults to the ``truth`` group of the shipped configs/synth.yaml.
    """
    if truth_cfg is None:
        from immunoplex.synth.settings import resolve_settings

        truth_cfg = resolve_settings("default")["truth"]
    if rng is None:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
    arm_probs = arm_probs or {MONO: 0.5, COMBO: 0.5}
    lat = sample_latents(n_patients, rng, truth_cfg, arm_probs)
    parts = logit_parts(lat, truth_cfg["effects"])
    logit = parts.sum(axis=1).to_numpy()
    out = pd.concat([lat, parts], axis=1)
    out["logit"] = logit
    out["p_response"] = special.expit(logit)
    out["p_image_only"] = _image_only_probability(
        parts, truth_cfg["effects"]["expression_only"]["ifn"]
    )
    out["p_expression_only"] = _expression_only_probability(lat, parts, truth_cfg)
    out["label_true"] = (rng.random(n_patients) < out["p_response"].to_numpy()).astype(int)
    return out


def oracle_aurocs(truth: pd.DataFrame, use_labels: bool = False) -> dict[str, float]:
    """AUROC of the Bayes, image-only and expression-only oracles.

    By default the expectation over label draws (no label noise); with ``use_labels`` against the
    sampled ``label_true`` column.
    """
    target = truth["label_true"] if use_labels else truth["p_response"]
    t = target.to_numpy(dtype=float)
    return {
        "bayes": expected_auroc(truth["p_response"].to_numpy(), t),
        "image_only": expected_auroc(truth["p_image_only"].to_numpy(), t),
        "expression_only": expected_auroc(truth["p_expression_only"].to_numpy(), t),
    }
