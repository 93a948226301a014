"""Issue 18 "done when": IMC files predicted end to end by the panel-agnostic model.

The model is trained on the synthetic panel (DAPI, PanCK, CD8, CD68, STAB1, CD31, CD66b) with
16 px tiles at 1 µm/px, IMC's resolution, and every tile kept (the mock IMC fields of view are
sparse counts that tissue detection rejects), so that the small fields of view hold tiles. The
missing-marker report follows from the names: the steinbock panel's (no panel marker: H3K27Ac
is not a nuclear stain for the alias table), the raw .txt's parsed targets, and the cytomapper
crop's names from a manifest ``channels`` column (H3 -> DAPI, CD8a -> CD8).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from immunoplex.inference.options import PredictOptions
from immunoplex.inference.run import predict
from tests.predict.conftest import train_checkpoint

pytestmark = [pytest.mark.realdata, pytest.mark.slow]
ALL = ["DAPI", "PanCK", "CD8", "CD68", "STAB1", "CD31", "CD66b"]


@pytest.fixture(scope="module")
def imc_ckpt(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_checkpoint(
        tiny_cohort,
        tmp_path_factory.mktemp("run_agnostic_imc"),
        epochs=1,
        extra=[
            "model=panel_agnostic",
            "tiling.tile_size=16",
            "tiling.mpp=1.0",
            "tiling.min_tissue=0.0",
        ],
    )


def _predict(ckpt: Path, inp: Path, out: Path) -> pd.Series:
    df = predict(
        PredictOptions(
            ckpt=str(ckpt), input=str(inp), out_dir=str(out), heatmaps=False, progress=False
        )
    )
    assert len(df) == 1
    return df.iloc[0]


def test_predict_steinbock_and_raw_txt(realdata: Path, imc_ckpt: Path, tmp_path: Path) -> None:
    img = realdata / "imc_steinbock" / "img" / "20210305_NE_mockData2_s0_a1_ac_fullFiltered.tiff"
    row = _predict(imc_ckpt, img, tmp_path / "steinbock")
    assert row["markers_missing"] == ALL and bool(row["degraded"])
    txt = next((realdata / "imc_raw_txt").glob("*.txt"))
    row = _predict(imc_ckpt, txt, tmp_path / "txt")
    assert row["markers_missing"] == ALL and bool(row["degraded"])
    assert 0.0 <= row["probability"] <= 1.0


def test_predict_cytomapper_named_by_manifest(
    realdata: Path, imc_ckpt: Path, tmp_path: Path
) -> None:
    img = realdata / "imc_cytomapper" / "E34_imc.tiff"
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(
        {
            "slide_id": ["E34"],
            "patient_id": ["P1"],
            "image": [str(img)],
            "mpp": ["1.0"],
            "channels": ["H3;CD99;PIN;CD8a;CDH"],
        }
    ).to_csv(manifest, index=False)
    row = _predict(imc_ckpt, manifest, tmp_path / "out")
    assert row["markers_missing"] == ["PanCK", "CD68", "STAB1", "CD31", "CD66b"]
    assert "DAPI" in row["markers_used"] and "CD8" in row["markers_used"]
    assert 0.0 < row["probability"] < 1.0
