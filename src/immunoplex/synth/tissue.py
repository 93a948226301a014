"""Tissue architecture of one slide: tissue outline, tumour nests, stroma, vessels.

Fields are drawn on the coarse signal grid (``signal_mpp``) and upsampled, so the cost is
dominated by a handful of bilinear upsamplings at full resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage, special

from immunoplex.synth.fields import block_mean, sigmoid, smooth_field, upsample


@dataclass
class TissueLayout:
    """Masks and fields of one slide; full-resolution arrays are (H, W), coarse ones (h, w)."""

    mpp: float
    step: int  # base pixels per coarse pixel
    tissue: np.ndarray  # bool, full res
    tumour: np.ndarray  # bool, full res (inside tissue)
    tissue_soft: np.ndarray  # float32 0..1 (soft edge)
    tumour_soft: np.ndarray  # float32 0..1
    vessel_wall: np.ndarray  # float32 0..1, CD31+ endothelium
    vessel_lumen: np.ndarray  # float32 0..1
    vessel_stab1: np.ndarray  # float32 0..1, the STAB1+ (sinusoid-like) part of the vessels
    stroma_texture: np.ndarray  # float32 ~0..1, collagen-like autofluorescence
    illumination: np.ndarray  # float32 ~1, multiplicative
    coarse_tissue: np.ndarray  # float32 fraction per coarse pixel
    coarse_tumour: np.ndarray  # float32 fraction per coarse pixel
    dist_to_tumour_um: np.ndarray  # coarse, distance of stroma to the nearest nest (0 in nests)
    dist_in_tumour_um: np.ndarray  # coarse, depth inside nests (0 in stroma)
    vessel_length_mm: float  # total length of the kept vessel network

    @property
    def shape(self) -> tuple[int, int]:
        return self.tissue.shape  # type: ignore[return-value]

    @property
    def coarse_stroma(self) -> np.ndarray:
        return np.clip(self.coarse_tissue - self.coarse_tumour, 0.0, 1.0)


def build_layout(
    rng: np.random.Generator,
    shape: tuple[int, int],
    mpp: float,
    signal_mpp: float,
    tumour_burden: float,
    vessel_z: float,
    cfg: dict[str, Any],
) -> TissueLayout:
    """Draw the tissue architecture of one slide (``cfg`` is the ``tissue`` settings group)."""
    H, W = shape
    step = max(1, round(signal_mpp / mpp))
    h, w = -(-H // step), -(-W // step)
    um_low = mpp * step  # µm per coarse pixel

    # Tissue: a jittered, rotated ellipse with a noisy boundary (a crop of a larger section).
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    cy, cx = h * rng.uniform(0.4, 0.6), w * rng.uniform(0.4, 0.6)
    ry = h * rng.uniform(*cfg["ellipse_radius"])
    rx = w * rng.uniform(*cfg["ellipse_radius"])
    th = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = (dy * np.cos(th) + dx * np.sin(th)) / ry
    v = (-dy * np.sin(th) + dx * np.cos(th)) / rx
    r = np.sqrt(u * u + v * v)
    edge = smooth_field(rng, (h, w), cfg["boundary_scale"] * min(h, w), mode="reflect")
    score = 1.0 - r + cfg["boundary_noise"] * edge
    lo, hi = np.quantile(score, [0.10, 0.65])
    thr = float(np.clip(0.0, lo, hi))  # tissue covers 35-90% of the slide
    score_up = upsample(score - thr, shape)
    eps_t = 2.0 / (0.55 * min(H, W))  # ~2 px ramp at the edge
    tissue_soft = sigmoid(score_up / eps_t)
    tissue = score_up > 0

    # Tumour nests: thresholded smooth noise, threshold set by the tumour burden.
    sig_n = cfg["nest_scale_um"] / um_low
    nest = smooth_field(rng, (h, w), sig_n) + cfg["nest_detail"] * smooth_field(
        rng, (h, w), sig_n / 3
    )
    inside = (score - thr) > 0
    vals = nest[inside] if inside.any() else nest.ravel()
    nthr = float(np.quantile(vals, 1.0 - float(np.clip(tumour_burden, 0.02, 0.98))))
    nest_up = upsample(nest - nthr, shape)
    eps_n = 2.0 / (1.41 * sig_n * step)
    tumour_soft = sigmoid(nest_up / eps_n) * tissue_soft
    tumour = (nest_up > 0) & tissue

    coarse_tissue = block_mean(tissue, step)
    coarse_tumour = block_mean(tumour, step)
    t_low = coarse_tumour > 0.5
    dist_to = (
        ndimage.distance_transform_edt(~t_low) * um_low if t_low.any() else np.full((h, w), 1e4)
    )
    dist_in = ndimage.distance_transform_edt(t_low) * um_low

    # Vessels: a level-set band of a smooth field gives tubes; a second field prunes the network.
    sig_v = cfg["vessel_scale_um"] / um_low
    vf = smooth_field(rng, (h, w), sig_v)
    keep = smooth_field(rng, (h, w), 1.5 * sig_v)
    stab = smooth_field(rng, (h, w), 2.0 * sig_v)
    keep_frac = float(np.clip(cfg["vessel_keep"] * np.exp(0.5 * vessel_z), 0.05, 0.95))
    keep_thr = float(special.ndtri(1.0 - keep_frac))
    vf_up, keep_up, stab_up = upsample(np.stack([vf, keep - keep_thr, stab - 1.0]), shape)
    delta = (cfg["vessel_halfwidth_um"] / mpp) / (1.41 * sig_v * step)
    band = np.exp(-((vf_up / delta) ** 2))
    lumen = np.exp(-((vf_up / (0.45 * delta)) ** 2))
    where = sigmoid(keep_up / 0.15) * tissue_soft * (1.0 - 0.85 * tumour_soft)
    vessel_wall = np.clip(band - 0.8 * lumen, 0.0, 1.0) * where
    vessel_lumen = lumen * where
    vessel_stab1 = sigmoid(stab_up / 0.2) * vessel_wall
    band_um2 = float(np.count_nonzero(band * where > np.exp(-1.0))) * mpp * mpp
    vessel_length_mm = band_um2 / (2.0 * cfg["vessel_halfwidth_um"]) * 1e-3

    tex = smooth_field(rng, (h, w), cfg["stroma_texture_um"] / um_low)
    ill = smooth_field(rng, (h, w), 0.5 * min(h, w), mode="reflect")
    tex_up, ill_up = upsample(np.stack([tex, ill]), shape)
    stroma_texture = np.clip(0.6 + 0.3 * tex_up, 0.0, 1.5)
    return TissueLayout(
        mpp=mpp,
        step=step,
        tissue=tissue,
        tumour=tumour,
        tissue_soft=tissue_soft,
        tumour_soft=tumour_soft,
        vessel_wall=vessel_wall,
        vessel_lumen=vessel_lumen,
        vessel_stab1=vessel_stab1,
        stroma_texture=stroma_texture,
        illumination=ill_up,  # standardised; the renderer scales it
        coarse_tissue=coarse_tissue,
        coarse_tumour=coarse_tumour,
        dist_to_tumour_um=dist_to.astype(np.float32),
        dist_in_tumour_um=dist_in.astype(np.float32),
        vessel_length_mm=vessel_length_mm,
    )
