"""The files of a generated cohort: presence, columns, paths, splits, multi-slide patients."""

from __future__ import annotations

import numpy as np
import pandas as pd

from immunoplex.synth.cohort import MANIFEST_COLUMNS
from immunoplex.synth.settings import resolve_settings


def test_files_exist_and_no_leftovers(synth_tiny):
    out, summary = synth_tiny
    for name in ("manifest.csv", "expression.csv", "truth.csv", "truth_slides.csv",
                 "synth_summary.json"):  # fmt: skip
        assert (out / name).is_file(), name
    slides = sorted((out / "slides").glob("*.ome.tif"))
    assert len(slides) == summary.n_slides
    assert len(list((out / "signal").glob("*.npy"))) == summary.n_slides
    assert len(list((out / "cells").glob("*.parquet"))) == summary.n_slides
    leftovers = [p for p in out.rglob("*") if ".tmp" in p.name or p.name == ".hydra"]
    assert leftovers == []


def test_manifest_contract(synth_tiny):
    out, summary = synth_tiny
    m = pd.read_csv(out / "manifest.csv", dtype={"label": "Int64"})
    assert list(m.columns) == MANIFEST_COLUMNS
    assert len(m) == summary.n_slides and m["slide_id"].is_unique
    for rel in m["image"]:
        assert not rel.startswith("/") and rel.startswith("slides/")
        assert (out / rel).is_file()
    assert set(m["split"]) == {"train", "test"}
    assert set(m["label"].dropna()) <= {0, 1}
    assert set(m["treatment"]) <= {"anti-PD-1", "bexmarilimab+anti-PD-1"}
    assert m["cohort"].str.startswith("site_").all()
    assert np.isfinite(m["sclever1"]).all() and (m["sclever1"] > 0).all()
    # each patient has one label / split / arm across its slides
    per_patient = m.groupby("patient_id")[["label", "split", "treatment", "cohort"]].nunique(
        dropna=False
    )
    assert (per_patient <= 1).all().all()


def test_unlabelled_never_in_test_and_split_stratified(synth_tiny):
    out, _ = synth_tiny
    m = pd.read_csv(out / "manifest.csv", dtype={"label": "Int64"})
    patients = m.drop_duplicates("patient_id")
    unlabelled = patients[patients["label"].isna()]
    assert len(unlabelled) >= 1
    assert (unlabelled["split"] == "train").all()
    test = patients[patients["split"] == "test"]
    assert set(test["label"]) == {0, 1}
    labelled = patients[patients["label"].notna()]
    assert 0.15 <= len(test) / len(labelled) <= 0.35


def test_some_patients_have_two_slides(synth_tiny):
    out, _ = synth_tiny
    m = pd.read_csv(out / "manifest.csv")
    counts = m.groupby("patient_id").size()
    assert (counts == 2).sum() >= 2
    assert counts.max() == 2


def test_expression_table(synth_tiny):
    out, summary = synth_tiny
    e = pd.read_csv(out / "expression.csv")
    assert e.columns[0] == "patient_id" and e["patient_id"].is_unique
    genes = list(e.columns[1:])
    assert len(genes) >= 200 and len(set(genes)) == len(genes)
    vals = e[genes].to_numpy()
    assert np.isfinite(vals).all() and vals.min() >= 0 and vals.max() < 20
    assert len(e) == summary.n_with_expression < summary.n_patients  # some patients lack it
    cfg = resolve_settings("tiny")["expression"]
    for name, members in cfg["gene_sets"].items():
        assert set(members) <= set(genes), name
    assert len(cfg["gene_sets"]["macrophage_response_signature"]) == 5
    for g in ("CD8A", "IFNG", "CXCL9", "STAB1", "CD163", "MRC1", "DKK1", "CHI3L1", "CXCR2"):
        assert g in genes


def test_truth_tables(synth_tiny):
    out, summary = synth_tiny
    t = pd.read_csv(out / "truth.csv")
    assert len(t) == summary.n_patients
    parts = ["logit_intercept", "logit_image_only", "logit_expression_only", "logit_shared",
             "logit_treatment"]  # fmt: skip
    assert np.allclose(t[parts].sum(axis=1), t["logit"], atol=1e-4)
    assert np.allclose(1 / (1 + np.exp(-t["logit"])), t["p_response"], atol=1e-4)
    for col in ("phenotype", "cd8_density", "cd8_intratumoural_fraction", "ifn_z",
                "clever1_fraction", "neutrophil_density", "sclever1", "treatment"):  # fmt: skip
        assert col in t.columns
    assert set(t["phenotype"]) <= {"inflamed", "excluded", "desert"}

    s = pd.read_csv(out / "truth_slides.csv")
    assert len(s) == summary.n_slides
    for col in ("slide_id", "signal_mpp", "phenotype", "n_cd8", "n_cd8_intratumoural",
                "n_macrophage", "n_clever1_macrophage", "n_neutrophil", "n_tumour"):  # fmt: skip
        assert col in s.columns
    assert (s["n_cd8_intratumoural"] <= s["n_cd8"]).all()
    assert (s["n_clever1_macrophage"] <= s["n_macrophage"]).all()


def test_signal_masks(synth_tiny):
    out, _ = synth_tiny
    s = pd.read_csv(out / "truth_slides.csv")
    from immunoplex.synth import signal

    for row in s.itertuples():
        mask = np.load(out / row.signal)
        assert mask.dtype == np.uint8
        step = round(row.signal_mpp / row.mpp)
        assert mask.shape == (-(-row.height // step), -(-row.width // step))
        assert (mask & signal.TISSUE).any()
        assert signal.relevant_regions(mask).dtype == bool
    total_cd8_in = s["n_cd8_intratumoural"].sum()
    marked = sum(
        int(((np.load(out / r.signal) & signal.CD8_INTRATUMOURAL) > 0).sum())
        for r in s.itertuples()
    )
    assert 0 < marked <= total_cd8_in


def test_cell_truth_matches_slide_counts(synth_tiny):
    """cells/<slide_id>.parquet: one row per drawn cell, consistent with truth_slides.csv."""
    out, _ = synth_tiny
    s = pd.read_csv(out / "truth_slides.csv")
    for row in s.itertuples():
        c = pd.read_parquet(out / row.cells)
        assert list(c.columns) == [
            "cell", "x_um", "y_um", "type", "nucleus", "immune", "intratumoural",
        ]  # fmt: skip
        assert len(c) == row.n_cells and c["cell"].is_unique
        n = c["type"].value_counts()
        assert n.get("cd8_t", 0) == row.n_cd8
        assert n.get("clever1_macrophage", 0) == row.n_clever1_macrophage
        assert n.get("macrophage", 0) + n.get("clever1_macrophage", 0) == row.n_macrophage
        assert n.get("neutrophil", 0) == row.n_neutrophil
        assert n.get("tumour", 0) == row.n_tumour
        cd8 = c[c["type"] == "cd8_t"]
        assert int(cd8["intratumoural"].sum()) == row.n_cd8_intratumoural
        assert (~c.loc[c["type"] == "rbc", "nucleus"]).all()
        assert c["x_um"].between(0, row.width * row.mpp).all()
        assert c["y_um"].between(0, row.height * row.mpp).all()
