"""The cell stage on every real third-party layout in ../shared/realdata/images (README there):
CSM OME-TIFFs, the MIBItiff and the same field of view as a folder of TIFFs (identical tables),
the Vectra QPTIFF, the inForm component file and the IMC crop. Each must give cells and a QC
overlay. Skipped with a reason when the data are absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from immunoplex.cells import run_slide
from immunoplex.cells.phenotype import PhenotypeScheme
from immunoplex.cells.segment import SegmentParams
from immunoplex.io import open_slide
from immunoplex.paths import config_dir

MIBI_FILE = "mibitiff/fov8_RowNumber0_Depth_Profile0-MassCorrected-Filtered.tiff"
MIBI_MPP = 0.390625  # from the MIBItiff's metadata; the folder of TIFFs carries none
IMC = ["H3", "CD99", "PIN", "CD8a", "CDH"]

# (case, path under images/, mpp to give, channel names to give). The inForm component file's
# DAPI component sits on a background: its Otsu classes differ 2.3x, under the 3x guard that
# keeps noise-only slides empty, so it is run with min_contrast 2 (INFORM_PARAMS).
INFORM_PARAMS = {"min_contrast": 2.0}
CASES = [
    ("csm_b09", "csm_multiplex_if/CSM_ABCM22001_B09_MiniCrop.ome.tif", 0.5, None),
    ("csm_b14", "csm_multiplex_if/CSM_ABCM22001_B14_MiniCrop.ome.tif", 0.5, None),
    ("mibitiff", MIBI_FILE, None, None),
    ("mibi_folder", "mibi_fov_folder/fov8", MIBI_MPP, None),
    ("vectra", "vectra_qptiff/small_vectra.qptiff", None, None),
    ("inform", "inform_component/FIHC4__0929309_HP_IM3_2_component_data.tif", None, None),
    ("imc_e34", "imc_cytomapper/E34_imc.tiff", 1.0, IMC),
]


def _images(realdata: Path) -> Path:
    d = realdata / "images"
    if not d.is_dir():
        pytest.skip(f"{d} not found (the real third-party images)")
    return d


def _run(path: Path, mpp, channels, out: Path):
    scheme = PhenotypeScheme.load(config_dir() / "cells" / "phenotypes" / "default.yaml")
    params = SegmentParams(backend_params=INFORM_PARAMS if "component" in path.name else {})
    with open_slide(path, mpp=mpp) as slide:
        if channels:
            slide.channels = list(channels)
        return run_slide(slide, path.name.split(".")[0], out, segment=params, scheme=scheme,
                         aliases={"ECadherin": ["CDH"]}, outputs=["parquet", "qc"])  # fmt: skip


@pytest.mark.realdata
@pytest.mark.parametrize("case,rel,mpp,channels", CASES, ids=[c[0] for c in CASES])
def test_real_file_segments(realdata, tmp_path, case, rel, mpp, channels):
    path = _images(realdata) / rel
    if not path.exists():
        pytest.skip(f"{path} not found")
    res = _run(path, mpp, channels, tmp_path / case)
    assert len(res.table) > 0, f"{case}: no cells"
    assert res.files["qc"].stat().st_size > 0
    obs = res.table.obs
    assert np.isfinite(obs[["x_um", "y_um", "area_um2"]].to_numpy()).all()
    assert (obs["phenotype"].astype(str) != "").all()


@pytest.mark.realdata
def test_mibitiff_and_folder_give_identical_tables(realdata, tmp_path):
    d = _images(realdata)
    if not (d / MIBI_FILE).is_file() or not (d / "mibi_fov_folder" / "fov8").is_dir():
        pytest.skip("the MIBI field of view (both layouts) is not in the real data")
    a = _run(d / MIBI_FILE, None, None, tmp_path / "a")
    b = _run(d / "mibi_fov_folder" / "fov8", MIBI_MPP, None, tmp_path / "b")
    ta = pd.read_parquet(a.files["parquet"]).drop(columns="slide_id")
    tb = pd.read_parquet(b.files["parquet"]).drop(columns="slide_id")
    assert len(ta) > 0
    pd.testing.assert_frame_equal(ta, tb)
