"""Issue 6 "done when": attention finds the signal, marker importance finds the causal markers,
predict runs on real multiplex files with a model trained on the synthetic panel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from immunoplex.inference.options import PredictOptions
from immunoplex.inference.run import predict
from immunoplex.utils.names import safe_name
from tests.predict.conftest import train_checkpoint

CAUSAL = ["CD8", "PanCK", "STAB1", "CD68", "CD66b"]
UNINFORMATIVE = "CD31"


def tile_signal_pixels(
    tiles: pd.DataFrame, mask: np.ndarray, level0_per_signal_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per tile box (level-0 pixels): signal-grid pixels set in ``mask``, and all it covers."""
    ii = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1))
    ii[1:, 1:] = np.cumsum(np.cumsum(mask, 0), 1)
    s = level0_per_signal_px
    y0 = np.clip(np.floor(tiles["y0_level0"] / s).astype(int), 0, mask.shape[0])
    y1 = np.clip(np.ceil(tiles["y1_level0"] / s).astype(int), 0, mask.shape[0])
    x0 = np.clip(np.floor(tiles["x0_level0"] / s).astype(int), 0, mask.shape[1])
    x1 = np.clip(np.ceil(tiles["x1_level0"] / s).astype(int), 0, mask.shape[1])
    tot = ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]
    return tot, np.maximum((y1 - y0) * (x1 - x0), 1)


def tile_signal_fraction(
    tiles: pd.DataFrame, mask: np.ndarray, level0_per_signal_px: float
) -> np.ndarray:
    """Fraction of each tile's box (level-0 pixels) covered by response-relevant signal."""
    tot, area = tile_signal_pixels(tiles, mask, level0_per_signal_px)
    return tot / area


def attention_overlap(
    out_dir: Path, cohort: Path, preds: pd.DataFrame, k: int = 3
) -> tuple[float, float, int, float, float]:
    """Responders only: mean relevant fraction of the top-k attended tiles vs of random tiles,
    the number of slides, (a diagnostic) how much denser intratumoural CD8 cells are in the
    tumour of the top-k tiles than in the tumour of the whole slide (1 = no enrichment), and the
    one-sided Wilcoxon signed-rank p-value of top-k > random over slides."""
    from immunoplex.synth.signal import CD8_INTRATUMOURAL, TUMOUR, relevant_regions

    truth = pd.read_csv(cohort / "truth_slides.csv", dtype={"slide_id": str}).set_index("slide_id")
    top, rand, cd8_top, cd8_all = [], [], [], []
    for row in preds[preds["label"] == 1].itertuples():
        for sid in row.slide_ids:
            tiles = pd.read_csv(out_dir / "slides" / safe_name(sid) / "tiles.csv")
            if len(tiles) <= k:
                continue
            t = truth.loc[sid]
            signal = np.load(cohort / t["signal"])
            scale = float(t["signal_mpp"]) / float(t["mpp"])
            frac = tile_signal_fraction(tiles, relevant_regions(signal), scale)
            order = np.argsort(-tiles["attention"].to_numpy(), kind="stable")
            top.append(frac[order[:k]].mean())
            rand.append(frac.mean())  # expectation of k tiles drawn at random
            cd8, _ = tile_signal_pixels(tiles, (signal & CD8_INTRATUMOURAL) > 0, scale)
            tumour, _ = tile_signal_pixels(tiles, (signal & TUMOUR) > 0, scale)
            cd8_top.append(cd8[order[:k]].sum() / max(tumour[order[:k]].sum(), 1.0))
            cd8_all.append(cd8.sum() / max(tumour.sum(), 1.0))
    cd8_enrichment = float(np.mean(cd8_top) / max(np.mean(cd8_all), 1e-12))
    from scipy.stats import wilcoxon

    # one-sided paired test over slides: top-k tiles cover more signal than the slide's average
    p = float(wilcoxon(np.subtract(top, rand), alternative="greater").pvalue)
    return float(np.mean(top)), float(np.mean(rand)), len(top), cd8_enrichment, p


@pytest.fixture(scope="module")
def signal_predictions(
    image_signal_cohort: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, pd.DataFrame]:
    """An image model trained on the image-signal cohort, run over every patient + explanations."""
    cohort = image_signal_cohort
    ckpt = train_checkpoint(
        cohort, tmp_path_factory.mktemp("run_signal"), epochs=25, extra=["model=image_only"]
    )
    out = tmp_path_factory.mktemp("pred_signal")
    df = predict(
        PredictOptions(
            ckpt=str(ckpt),
            input=str(cohort / "manifest.csv"),
            out_dir=str(out),
            heatmaps=False,
            explain=True,
            progress=False,
        )
    )
    return out, df


@pytest.mark.slow
def test_top_attended_tiles_of_responders_overlap_the_signal(
    signal_predictions: tuple[Path, pd.DataFrame], image_signal_cohort: Path
) -> None:
    out, df = signal_predictions
    top, rand, n, cd8, p = attention_overlap(out, image_signal_cohort, df, k=3)
    print(
        f"responder slides {n}: relevant fraction top-3 {top:.3f} vs random {rand:.3f} "
        f"(ratio {top / rand:.2f}, one-sided Wilcoxon p {p:.1e}); intratumoural CD8 per "
        f"tumour area top-3 / slide {cd8:.2f}"
    )
    assert n >= 10
    assert top > 1.25 * rand
    assert p < 1e-4  # not a few lucky slides: consistently above chance


@pytest.mark.slow
def test_marker_importance_ranks_causal_markers_above_cd31(
    signal_predictions: tuple[Path, pd.DataFrame],
) -> None:
    out, _ = signal_predictions
    cohort = json.loads((out / "explanations.json").read_text())["cohort"]
    score = {m["feature"]: m["mean_abs"] for m in cohort["markers"]}
    print("marker importance (mean |Δlogit|):", sorted(score.items(), key=lambda kv: -kv[1]))
    above = [m for m in CAUSAL if score[m] > score[UNINFORMATIVE]]
    assert len(above) >= 4, (above, score)
    assert score["CD8"] > score[UNINFORMATIVE]
    table = pd.read_csv(out / "explanations.csv")
    assert set(table.query("scope == 'cohort' and kind == 'marker'")["feature"]) == set(score)
    assert "image" in set(table.query("kind == 'modality'")["feature"])


REAL_FILES = [
    (
        "csm_multiplex_if/CSM_ABCM22001_B09_MiniCrop.ome.tif",
        0.5,
        ["CD68", "STAB1", "CD31", "CD66b"],
    ),
    (
        "mibitiff/fov8_RowNumber0_Depth_Profile0-MassCorrected-Filtered.tiff",
        None,
        ["CD68", "STAB1", "CD31", "CD66b"],
    ),
    ("vectra_qptiff/small_vectra.qptiff", None, ["PanCK", "CD8", "CD68", "STAB1", "CD31", "CD66b"]),
]


@pytest.mark.realdata
@pytest.mark.parametrize(("rel", "mpp", "missing"), REAL_FILES, ids=["csm", "mibitiff", "vectra"])
def test_predict_on_real_multiplex_files(
    realdata: Path,
    agnostic_ckpt: Path,
    tmp_path: Path,
    rel: str,
    mpp: float | None,
    missing: list[str],
) -> None:
    """A panel-agnostic model trained on the synthetic panel, markers matched via aliases."""
    path = realdata / "images" / rel
    if not path.exists():
        pytest.skip(f"{path} not present")
    df = predict(
        PredictOptions(
            ckpt=str(agnostic_ckpt),
            input=str(path),
            out_dir=str(tmp_path),
            mpp=mpp,
            progress=False,
            top_k=4,
        )
    )
    row = df.iloc[0]
    assert row["markers_missing"] == missing and bool(row["degraded"])
    assert "DAPI" in row["markers_used"]
    assert 0.0 < row["probability"] < 1.0
    d = tmp_path / "slides" / safe_name(row["patient_id"])
    for name in ("heatmap.png", "top_tiles.png", "heatmap.ome.tif", "tiles.geojson"):
        assert (d / name).is_file(), name
    info = json.loads((d / "heatmap.json").read_text())
    if "csm" in rel:  # CK-EPCAM -> PanCK and CD8a -> CD8 through the alias table
        assert any("CK-EPCAM" in m for m in info["composite"]["markers"])
        assert any("CD8a" in m for m in info["composite"]["markers"])


@pytest.mark.realdata
def test_real_file_without_pixel_size_needs_mpp(
    realdata: Path, agnostic_ckpt: Path, tmp_path: Path
) -> None:
    from immunoplex.errors import ResolutionError

    path = realdata / "images" / "csm_multiplex_if" / "CSM_ABCM22001_B14_MiniCrop.ome.tif"
    if not path.exists():
        pytest.skip(f"{path} not present")
    with pytest.raises(ResolutionError, match="mpp"):
        predict(
            PredictOptions(
                ckpt=str(agnostic_ckpt),
                input=str(path),
                out_dir=str(tmp_path),
                heatmaps=False,
                progress=False,
            )
        )
