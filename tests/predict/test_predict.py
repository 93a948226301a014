"""immunoplex-predict on the tiny synthetic cohort: outputs, resume, panels, genes, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from immunoplex.errors import ConfigError, ExpressionError, PanelMismatchError, SlideReadError
from immunoplex.inference.options import PredictOptions
from immunoplex.inference.run import predict
from tests.predict.conftest import opts, sub_manifest

REPO = Path(__file__).resolve().parents[2]


def write_slide_without(src: Path, dst: Path, drop: str, mpp: float | None = 0.5) -> Path:
    """Copy a synthetic slide dropping one marker (channel names from its OME metadata)."""
    with tifffile.TiffFile(src) as tif:
        data = tif.series[0].asarray()
        names = [
            c.attrib["Name"]
            for c in __import__("xml.etree.ElementTree", fromlist=["x"])
            .fromstring(tif.ome_metadata)
            .iter()
            if c.tag.endswith("Channel")
        ]
    keep = [i for i, n in enumerate(names) if n != drop]
    meta: dict[str, object] = {"axes": "CYX", "Channel": {"Name": [names[i] for i in keep]}}
    if mpp is not None:
        meta.update(
            PhysicalSizeX=mpp, PhysicalSizeY=mpp, PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm"
        )
    dst.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(dst, data[keep], photometric="minisblack", metadata=meta, ome=True)
    return dst


def test_manifest_predictions_match_training(
    trained_ckpt: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    """Same preprocessing as training: logits equal the trainer's own test predictions."""
    ref = pd.read_csv(trained_ckpt.parent / "predictions_test.csv", dtype={"patient_id": str})
    ids = ref["patient_id"].tolist()[:4]
    manifest = sub_manifest(tiny_cohort, tmp_path / "m.csv", ids)
    df = predict(
        opts(
            trained_ckpt, manifest, tmp_path / "out", expression=str(tiny_cohort / "expression.csv")
        )
    )
    assert sorted(df["patient_id"]) == sorted(ids)
    got = df.set_index("patient_id").loc[ids]
    want = ref.set_index("patient_id").loc[ids]
    np.testing.assert_allclose(got["logit"], want["logit"], atol=1e-4)
    np.testing.assert_allclose(
        got["calibrated_probability"], want["calibrated_probability"], atol=1e-4
    )
    assert (got["predicted_class"] == want["predicted_class"]).all()
    assert (got["prediction_set"] == want["prediction_set"]).all()
    assert (got["modalities"].map(lambda v: "image" in v and "expression" in v)).all()
    assert not got["degraded"].any() and (got["genes_missing"] == 0).all()
    out = tmp_path / "out"
    csv = pd.read_csv(out / "predictions.csv")
    for col in (
        "patient_id",
        "slide_ids",
        "probability",
        "calibrated_probability",
        "predicted_class",
        "prediction_set",
        "modalities",
        "markers_used",
        "markers_missing",
        "genes_missing",
        "treatment",
    ):
        assert col in csv.columns, col
    assert any(c.startswith("counterfactual_probability[") for c in csv.columns)
    # the patient's own arm's counterfactual is its calibrated probability
    own = [csv.loc[i, f"counterfactual_probability[{t}]"] for i, t in enumerate(csv["treatment"])]
    np.testing.assert_allclose(own, csv["calibrated_probability"], atol=1e-6)
    js = json.loads((out / "predictions.json").read_text())
    assert js["calibrated"] and len(js["patients"]) == 4
    assert js["patients"][0]["markers_used"] == [
        "DAPI",
        "PanCK",
        "CD8",
        "CD68",
        "STAB1",
        "CD31",
        "CD66b",
    ]
    for sid in csv["slide_ids"].str.split(";").sum():
        d = out / "slides" / sid
        assert (d / "slide.json").is_file() and (d / "tiles.csv").is_file()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_rerun_skips_finished_patients(
    trained_ckpt: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    manifest = sub_manifest(tiny_cohort, tmp_path / "m.csv", ["P0001", "P0002", "P0003"])
    o = opts(trained_ckpt, manifest, tmp_path / "out", heatmaps=True, top_k=4)
    first = predict(o)
    pjson = tmp_path / "out" / "patients" / "P0002.json"
    stamp = pjson.stat().st_mtime_ns
    second = predict(o)
    js = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert js["n_recomputed"] == 0 and pjson.stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(first, second)
    # a lost per-slide file makes that patient (only) run again
    sid = first.set_index("patient_id").loc["P0002", "slide_ids"][0]
    (tmp_path / "out" / "slides" / sid / "heatmap.png").unlink()
    predict(o)
    js = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert js["n_recomputed"] == 1
    assert (tmp_path / "out" / "slides" / sid / "heatmap.png").is_file()
    # a different option (treatment) invalidates every patient
    predict(
        opts(
            trained_ckpt, manifest, tmp_path / "out", heatmaps=True, top_k=4, treatment="anti-PD-1"
        )
    )
    js = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert js["n_recomputed"] == 3
    assert {p["treatment"] for p in js["patients"]} == {"anti-PD-1"}


def test_single_slide_and_folder_inputs(
    trained_ckpt: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    slide = tiny_cohort / "slides" / "S0001.ome.tif"
    df = predict(opts(trained_ckpt, slide, tmp_path / "one"))
    assert df["patient_id"].tolist() == ["S0001"]
    row = df.iloc[0]
    assert row["modalities"] == ["image"] and pd.isna(row["genes_missing"])
    assert row["treatment_source"] == "default"
    folder = tmp_path / "folder"
    folder.mkdir()
    for sid in ("S0002", "S0003"):
        os.symlink(tiny_cohort / "slides" / f"{sid}.ome.tif", folder / f"{sid}.ome.tif")
    df = predict(opts(trained_ckpt, folder, tmp_path / "two"))
    assert sorted(df["patient_id"]) == ["S0002", "S0003"]
    assert ((df["probability"] > 0) & (df["probability"] < 1)).all()


def test_missing_required_marker_is_a_clear_error(
    trained_ckpt: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    slide = write_slide_without(
        tiny_cohort / "slides" / "S0001.ome.tif", tmp_path / "noCD8.ome.tif", "CD8"
    )
    with pytest.raises(PanelMismatchError) as err:
        predict(opts(trained_ckpt, slide, tmp_path / "out"))
    msg = str(err.value)
    assert "\n" not in msg and "noCD8.ome.tif" in msg
    assert "['CD8']" in msg and "'PanCK'" in msg  # what is missing and what the slide has
    # the CLI prints it on one line without a traceback and exits 2
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "immunoplex.cli.predict",
            f"ckpt={trained_ckpt}",
            f"input={slide}",
            f"out_dir={tmp_path / 'cli'}",
            "heatmaps=false",
            "progress=false",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in proc.stderr


def test_panel_agnostic_model_runs_degraded(
    agnostic_ckpt: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    slide = write_slide_without(
        tiny_cohort / "slides" / "S0001.ome.tif", tmp_path / "noCD8.ome.tif", "CD8"
    )
    df = predict(opts(agnostic_ckpt, slide, tmp_path / "out"))
    row = df.iloc[0]
    assert row["markers_missing"] == ["CD8"] and bool(row["degraded"])
    assert "CD8" not in row["markers_used"] and "PanCK" in row["markers_used"]
    full = predict(opts(agnostic_ckpt, tiny_cohort / "slides" / "S0001.ome.tif", tmp_path / "full"))
    assert full.iloc[0]["markers_missing"] == []
    assert row["logit"] != pytest.approx(full.iloc[0]["logit"], abs=1e-7)


def test_missing_genes_error_or_documented_fill(
    trained_ckpt: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    manifest = sub_manifest(tiny_cohort, tmp_path / "m.csv", ["P0001", "P0002", "P0003"])
    expr = pd.read_csv(tiny_cohort / "expression.csv", dtype={"patient_id": str})
    dropped = expr.columns[5]
    shuffled = expr.drop(columns=[dropped])
    shuffled = shuffled[["patient_id", *shuffled.columns[1:][::-1]]]  # order must not matter
    path = tmp_path / "expr_missing.csv"
    shuffled.to_csv(path, index=False)
    with pytest.raises(ExpressionError, match="1 required gene"):
        predict(opts(trained_ckpt, manifest, tmp_path / "a", expression=str(path)))
    df = predict(
        opts(trained_ckpt, manifest, tmp_path / "b", expression=str(path), allow_missing_genes=True)
    )
    assert (df["genes_missing"] == 1).all() and df["genes_filled"].all()
    js = json.loads((tmp_path / "b" / "predictions.json").read_text())
    assert dropped.upper() in js["gene_report"]["missing"]
    # reordered columns with all genes give the same result as the original table
    full = expr[["patient_id", *expr.columns[1:][::-1]]]
    full.to_csv(tmp_path / "expr_rev.csv", index=False)
    a = predict(
        opts(trained_ckpt, manifest, tmp_path / "c", expression=str(tmp_path / "expr_rev.csv"))
    )
    b = predict(
        opts(trained_ckpt, manifest, tmp_path / "d", expression=str(tiny_cohort / "expression.csv"))
    )
    np.testing.assert_allclose(a["logit"], b["logit"], atol=1e-6)


def test_bad_options_are_config_errors(
    trained_ckpt: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    slide = tiny_cohort / "slides" / "S0001.ome.tif"
    with pytest.raises(ConfigError, match="treatment 'chemo' is not one of"):
        predict(opts(trained_ckpt, slide, tmp_path / "a", treatment="chemo"))
    with pytest.raises(ConfigError, match="input not found"):
        predict(opts(trained_ckpt, tmp_path / "nope.tif", tmp_path / "b"))
    with pytest.raises(ConfigError, match="unknown option"):
        PredictOptions.from_config({"ckpt": "a", "input": "b", "out_dir": "c", "bogus": 1})


def test_explanations_per_patient_and_cohort(
    trained_ckpt: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    manifest = sub_manifest(tiny_cohort, tmp_path / "m.csv", ["P0001", "P0002"])
    out = tmp_path / "out"
    predict(
        opts(
            trained_ckpt,
            manifest,
            out,
            expression=str(tiny_cohort / "expression.csv"),
            explain=True,
            top_genes=5,
        )
    )
    js = json.loads((out / "explanations.json").read_text())
    assert set(js["patients"]) == {"P0001", "P0002"}
    p = js["patients"]["P0001"]
    assert set(p["markers"]) == {"DAPI", "PanCK", "CD8", "CD68", "STAB1", "CD31", "CD66b"}
    assert all(isinstance(v, float) for v in p["markers"].values())
    assert set(p["modalities"]) == {"image", "expression", "clinical"}
    assert len(p["genes"]["top"]) == 5
    # integrated gradients are complete: attributions sum to logit(x) - logit(baseline)
    top = max(abs(v) for _, v in p["genes"]["top"])
    assert abs(p["genes"]["ig_gap"]) < max(0.05 * top, 1e-3)
    table = pd.read_csv(out / "explanations.csv")
    assert set(table["kind"]) == {"marker", "modality", "gene"}
    assert set(table["scope"]) == {"patient", "cohort"}
    cohort = table.query("scope == 'cohort' and kind == 'marker'").sort_values("rank")
    assert len(cohort) == 7 and (cohort["value"].diff().dropna() <= 0).all()
    # occlusion Δ equals a prediction made with the marker really absent (zeroed + masked)
    pred = pd.read_csv(out / "predictions.csv").set_index("patient_id")
    assert p["logit"] == pytest.approx(pred.loc["P0001", "logit"], abs=1e-6)


def test_cli_writes_into_out_dir(trained_ckpt: Path, tiny_cohort: Path, tmp_path: Path) -> None:
    from immunoplex.cli.predict import rewrite_args

    assert rewrite_args(["expression=a.csv", "input=x"]) == ["expression_file=a.csv", "input=x"]
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "immunoplex.cli.predict",
            f"ckpt={trained_ckpt}",
            f"input={tiny_cohort / 'slides' / 'S0004.ome.tif'}",
            f"out_dir={out}",
            "heatmaps=false",
            "progress=false",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "S0004: p=" in proc.stdout
    assert (out / "predictions.csv").is_file() and not (out / ".hydra").exists()
    assert not (tmp_path / "outputs").exists()


def test_empty_slide_is_refused_or_skipped_to_expression(
    trained_ckpt: Path, tiny_cohort: Path, tmp_path: Path
) -> None:
    names = ["DAPI", "PanCK", "CD8", "CD68", "STAB1", "CD31", "CD66b"]
    blank = tmp_path / "blank.ome.tif"
    meta = {"axes": "CYX", "Channel": {"Name": names}, "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
    tifffile.imwrite(
        blank, np.zeros((7, 256, 256), np.uint16), photometric="minisblack", metadata=meta, ome=True
    )
    manifest = tmp_path / "m.csv"
    pd.DataFrame(
        {"slide_id": ["B1"], "patient_id": ["P0001"], "image": [str(blank)], "cohort": ["site_A"]}
    ).to_csv(manifest, index=False)
    kw = dict(heatmaps=True, expression=str(tiny_cohort / "expression.csv"), small_cohort="global")
    # An all-zero slide is a bad slide (issue 14), not "no tissue": refused by default ...
    with pytest.raises(SlideReadError, match="blank.ome.tif: empty slide"):
        predict(opts(trained_ckpt, manifest, tmp_path / "refused", **kw))
    # ... and with on_bad_slide=skip the patient falls back to expression, reported.
    df = predict(opts(trained_ckpt, manifest, tmp_path / "out", on_bad_slide="skip", **kw))
    row = df.iloc[0]
    assert row["n_tiles"] == 0 and row["modalities"] == ["expression"]
    assert 0.0 < row["probability"] < 1.0
    assert any("empty slide" in str(s) for s in row["skipped_slides"]), row["skipped_slides"]
