"""Bulk expression (log2(TPM+1)-like) driven by the same latents as the images.

value = log2(2^x + 1) with x = baseline + sum(loading * latent) + gene-set module noise
        + per-sample library effect + per-site gene shift + gene noise.
Driven gene sets follow the latents (``expression.drivers``); background genes follow random
uninformative modules, so they are correlated with each other but not with response.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pandas as pd

#: Latent name in ``drivers`` -> column of the truth table.
LATENT_COLUMNS = {
    "cd8": "cd8_z",
    "ifn": "ifn_z",
    "macrophage": "macrophage_z",
    "clever1": "clever1_z",
    "neutrophil": "neutrophil_z",
    "tumour": "tumour_z",
    "vessel": "vessel_z",
}

#: Gene properties (baselines, loadings, modules) are a fixed "platform", the same for every seed.
_PLATFORM_SEED = 4242


def gene_list(cfg: dict[str, Any]) -> list[str]:
    """All genes in output order: driven sets (config order), then background genes."""
    genes: list[str] = []
    for name in cfg["drivers"]:
        genes.extend(cfg["gene_sets"][name])
    for name, members in cfg["gene_sets"].items():
        if name not in cfg["drivers"]:
            genes.extend(members)
    genes.extend(cfg["background_genes"])
    return list(dict.fromkeys(genes))


def _platform(cfg: dict[str, Any], genes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per gene: baseline, loadings on the latents (G x L), background module index (-1: none)."""
    rng = np.random.default_rng(_PLATFORM_SEED)
    g_index = {g: i for i, g in enumerate(genes)}
    latents = list(LATENT_COLUMNS)
    base = rng.uniform(1.5, 8.0, len(genes))
    load = np.zeros((len(genes), len(latents)))
    module = np.full(len(genes), -1)
    jitter = rng.uniform(0.7, 1.3, len(genes))
    base_jitter = rng.normal(0.0, 0.7, len(genes))
    for name, drivers in cfg["drivers"].items():
        for g in cfg["gene_sets"][name]:
            i = g_index[g]
            base[i] = cfg["baseline"][name] + base_jitter[i]
            for latent, w in drivers.items():
                load[i, latents.index(latent)] += float(w) * jitter[i]
    n_mod = int(cfg["n_background_modules"])
    for g in cfg["background_genes"]:
        i = g_index[g]
        if n_mod > 0 and (load[i] == 0).all():
            module[i] = zlib.crc32(g.encode()) % n_mod
    return base, load, module


def simulate_expression(
    truth: pd.DataFrame, sites: pd.Series, cfg: dict[str, Any], rng: np.random.Generator
) -> pd.DataFrame:
    """Expression for every patient in ``truth`` (index = patient_id); caller drops the missing."""
    genes = gene_list(cfg)
    n, G = len(truth), len(genes)
    base, load, module = _platform(cfg, genes)
    lat = np.column_stack([truth[c].to_numpy(float) for c in LATENT_COLUMNS.values()])
    x = base[None, :] + lat @ load.T

    # Correlated noise: one factor per driven gene set and per background module.
    set_noise = np.zeros((n, G))
    g_index = {g: i for i, g in enumerate(genes)}
    for name in cfg["drivers"]:
        f = rng.normal(0.0, cfg["module_sd"], n)
        idx = [g_index[g] for g in cfg["gene_sets"][name]]
        set_noise[:, idx] += f[:, None]
    n_mod = int(cfg["n_background_modules"])
    if n_mod > 0:
        factors = rng.standard_normal((n, n_mod))
        bg = module >= 0
        strength = np.random.default_rng(_PLATFORM_SEED + 1).uniform(0.3, 0.8, G)
        set_noise[:, bg] += factors[:, module[bg]] * strength[bg]
    library = rng.normal(0.0, cfg["library_sd"], n)[:, None]
    site_names = sorted(set(sites))
    site_shift = {s: rng.normal(0.0, cfg["site_sd"], G) for s in site_names}
    shift = np.stack([site_shift[s] for s in sites])
    noise = rng.normal(0.0, cfg["noise_sd"], (n, G))
    x = x + set_noise + library + shift + noise
    values = np.log2(np.exp2(x) + 1.0)
    out = pd.DataFrame(np.round(values, 4), columns=genes)
    out.insert(0, "patient_id", truth.index.to_numpy())
    return out
