"""The images and the expression show the latent biology; the truth has the promised signal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage, stats

from immunoplex.evaluation.metrics import auroc_score as auroc
from immunoplex.evaluation.metrics import expected_auroc
from immunoplex.synth import signal
from immunoplex.synth.settings import resolve_settings
from immunoplex.synth.truth import COMBO, MONO, oracle_aurocs, sample_truth

PANEL = resolve_settings("tiny")["image"]["panel"]


def _slides(out):
    s = pd.read_csv(out / "truth_slides.csv")
    for row in s.itertuples():
        img = tifffile.imread(out / row.image).astype(np.float32)
        mask = np.load(out / row.signal)
        step = round(row.signal_mpp / row.mpp)
        tissue = np.kron((mask & signal.TISSUE) > 0, np.ones((step, step), bool))
        yield row, img, tissue[: img.shape[1], : img.shape[2]]


def _cd8_measures(img: np.ndarray, tissue: np.ndarray) -> tuple[float, float]:
    """(fraction of CD8+ pixels inside PanCK+ regions, CD8+ pixel fraction of tissue)."""
    cd8 = img[PANEL.index("CD8")]
    panck = ndimage.uniform_filter(img[PANEL.index("PanCK")], 15)
    med = np.median(cd8[tissue])
    mad = np.median(np.abs(cd8[tissue] - med)) + 1.0
    cd8_pos = (cd8 > med + 15 * mad) & tissue
    p_in, p_out = (
        np.median(panck[tissue]),
        np.percentile(panck[~tissue], 50) if (~tissue).any() else 0,
    )
    tumour = (panck > 0.5 * (np.percentile(panck[tissue], 90) + p_out)) & tissue
    inside = cd8_pos[tumour].sum() / max(cd8_pos.sum(), 1)
    del p_in
    return float(inside), float(cd8_pos.sum() / tissue.sum())


def test_tissue_brighter_than_background(synth_tiny):
    out, _ = synth_tiny
    for row, img, tissue in _slides(out):
        if tissue.all():
            continue
        dapi = img[PANEL.index("DAPI")]
        assert dapi[tissue].mean() > 3 * dapi[~tissue].mean(), row.slide_id


def test_cd8_sits_inside_tumour_in_inflamed_not_excluded(synth_tiny):
    out, _ = synth_tiny
    inside: dict[str, list[float]] = {"inflamed": [], "excluded": []}
    for row, img, tissue in _slides(out):
        if row.phenotype in inside and row.n_cd8 >= 3:
            inside[row.phenotype].append(_cd8_measures(img, tissue)[0])
    assert len(inside["inflamed"]) >= 3 and len(inside["excluded"]) >= 3
    assert np.mean(inside["inflamed"]) > np.mean(inside["excluded"]) + 0.25
    assert np.median(inside["inflamed"]) > 0.4 > np.median(inside["excluded"])


def test_expression_cd8a_tracks_image_cd8_density(synth_tiny):
    out, _ = synth_tiny
    density = {}
    for row, img, tissue in _slides(out):
        density.setdefault(row.patient_id, []).append(_cd8_measures(img, tissue)[1])
    img_density = pd.Series({k: np.mean(v) for k, v in density.items()})
    expr = pd.read_csv(out / "expression.csv", index_col="patient_id")["CD8A"]
    both = pd.concat([img_density.rename("img"), expr], axis=1, join="inner")
    rho = stats.spearmanr(both["img"], both["CD8A"]).statistic
    assert rho > 0.6, rho


def test_labels_follow_p_response(synth_tiny):
    out, _ = synth_tiny
    t = pd.read_csv(out / "truth.csv")
    assert (
        t.loc[t["label_true"] == 1, "p_response"].mean()
        > t.loc[t["label_true"] == 0, "p_response"].mean()
    )
    big = sample_truth(20_000, 5, resolve_settings("tiny")["truth"])
    assert auroc(big["label_true"].to_numpy(), big["p_response"].to_numpy()) > 0.85
    # calibration: observed response rate within each decile of p matches p
    bins = pd.qcut(big["p_response"], 10)
    by = big.groupby(bins, observed=True)[["p_response", "label_true"]].mean()
    assert np.abs(by["p_response"] - by["label_true"]).max() < 0.04


def test_oracle_aurocs_ordered():
    truth_cfg = resolve_settings("default")["truth"]
    big = sample_truth(40_000, 11, truth_cfg)
    expected = oracle_aurocs(big)
    with_labels = oracle_aurocs(big, use_labels=True)
    for auc in (expected, with_labels):
        assert 0.85 <= auc["bayes"] <= 0.90
        assert auc["bayes"] > auc["image_only"] + 0.03
        assert auc["bayes"] > auc["expression_only"] + 0.03
        assert auc["image_only"] > 0.7 and auc["expression_only"] > 0.7


def test_clever1_resistance_only_without_bexmarilimab():
    big = sample_truth(40_000, 12, resolve_settings("default")["truth"])
    for arm, sign in ((MONO, -1), (COMBO, 0)):
        sub = big[big["treatment"] == arm]
        x = np.column_stack([np.ones(len(sub)), sub["clever1_z"], sub["sclever1_z"]])
        coef = np.linalg.lstsq(x, sub["logit"] - sub["logit_image_only"]
                               - sub["logit_expression_only"], rcond=None)[0]  # fmt: skip
        if sign < 0:
            assert coef[1] < -0.5 and coef[2] < -0.3
        else:
            assert abs(coef[1]) < 0.2 and abs(coef[2]) < 0.05


def test_expression_oracle_cannot_see_cd8_location():
    """Inflamed and excluded patients have the same CD8 density, so the same CD8A."""
    big = sample_truth(20_000, 13, resolve_settings("default")["truth"])
    sub = big[big["phenotype"].isin(["inflamed", "excluded"])]
    y = (sub["phenotype"] == "inflamed").to_numpy(int)
    assert abs(auroc(y, sub["cd8_density"].to_numpy()) - 0.5) < 0.03


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expected_auroc_matches_sklearn(seed):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # with ties
    assert expected_auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert np.isnan(auroc(np.ones(5), np.arange(5)))
