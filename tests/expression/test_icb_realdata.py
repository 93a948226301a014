"""The seven public ICB cohorts (../shared/realdata/expression): preparation and a real transfer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from immunoplex.evaluation.loco import auroc
from immunoplex.expression.icb import load_icb_cohorts, read_prepared, write_prepared
from immunoplex.expression.io import read_expression
from immunoplex.expression.linear import (
    ElasticNetConfig,
    ElasticNetExpressionModel,
    predict_expression,
)
from immunoplex.expression.signatures import score_signature

REPO_ROOT = Path(__file__).resolve().parents[2]
REALDATA = Path(os.environ.get("IMMUNOPLEX_REALDATA", REPO_ROOT.parent / "shared" / "realdata"))
EXPR = REALDATA / "expression"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not EXPR.is_dir(), reason=f"real ICB data not found at {EXPR}"),
]

# R / NR counts stated in realdata/README.md
EXPECTED = {
    "Hugo": (14, 13), "Liu": (35, 34), "Miao": (10, 18), "Nathanson": (10, 14),
    "Padron": (3, 20), "Riaz": (4, 10), "Van_Allen": (9, 30),
}  # fmt: skip


@pytest.fixture(scope="module")
def prepared():
    return load_icb_cohorts(REALDATA)


def test_labels_and_genes_match_the_published_tables(prepared) -> None:
    man = prepared.manifest
    for cohort, (r, nr) in EXPECTED.items():
        sub = man[man["cohort"] == cohort]
        assert ((sub["label"] == "1").sum(), (sub["label"] == "0").sum()) == (r, nr)
    assert prepared.manifest["patient_id"].is_unique
    assert prepared.report["cohorts"]["Nathanson"]["dropped_for_missing_values"] == [
        "ACAA2", "FN1", "NRP1", "SLC5A3", "TFRC",
    ]  # fmt: skip
    assert prepared.expression.shape[1] == prepared.report["shared_genes"] > 1500
    raw = pd.read_csv(EXPR / "ICB_small_Hugo__assay_gene_expression.csv.gz", index_col=0)
    assert prepared.expression.loc["Hugo_Pt1", "CD8A"] == raw.loc["CD8A", "Pt1"]


def test_written_files_read_back_with_project_readers(prepared, tmp_path: Path) -> None:
    paths = write_prepared(prepared, tmp_path)
    table = read_expression(paths["expression"])  # orientation detected from 'patient_id'
    assert table.values.shape == prepared.expression.shape
    np.testing.assert_allclose(table.values.to_numpy(), prepared.expression.to_numpy(), atol=1e-5)
    back = read_prepared(tmp_path)
    assert (back.labels == prepared.labels).all()
    man = pd.read_csv(paths["manifest"], dtype=str, keep_default_na=False)
    assert list(man.columns[:5]) == ["patient_id", "label", "cohort", "treatment", "cancer_type"]
    assert set(man["label"]) == {"0", "1", ""}
    assert json.loads(paths["report"].read_text())["shared_genes"] == table.values.shape[1]


def test_baseline_on_real_cohorts_is_oriented(prepared) -> None:
    """CD8A scores responders higher (mean per-cohort AUROC 0.63 over the seven cohorts, every
    cohort >= 0.5), and our AUROC equals scipy's Mann-Whitney U / (n1 n0) on each cohort."""
    from scipy.stats import mannwhitneyu

    aucs = []
    for name in sorted(set(prepared.cohorts)):
        m = (prepared.cohorts == name) & (prepared.labels >= 0)
        y, s = prepared.labels[m].to_numpy(), score_signature(prepared.expression[m], "CD8A")
        s = np.asarray(s, dtype=float)
        u = mannwhitneyu(s[y == 1], s[y == 0]).statistic
        a = auroc(y, s)
        assert a == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()))
        aucs.append(a)
    assert min(aucs) >= 0.5 and np.mean(aucs) > 0.6, aucs


@pytest.mark.slow  # ~10-35 s on 2 busy cores
def test_elastic_net_transfers_to_an_unseen_cohort_file(prepared, tmp_path: Path) -> None:
    """Train on six cohorts, save as JSON, predict the seventh from its own raw file."""
    keep = prepared.cohorts != "Liu"
    cfg = ElasticNetConfig(Cs=(0.1,), l1_ratios=(0.5,))
    model = ElasticNetExpressionModel(cfg).fit(
        prepared.expression[keep], prepared.labels[keep], prepared.cohorts[keep]
    )
    state = json.loads(json.dumps(model.to_dict()))
    raw = read_expression(EXPR / "ICB_small_Liu__assay_gene_expression.csv.gz")
    prob = predict_expression(state, raw)
    assert prob.shape == (74,) and np.isfinite(prob).all()
    ids = [f"Liu_{s}" for s in raw.samples]
    np.testing.assert_allclose(
        prob, model.predict_proba(prepared.expression.loc[ids], ["Liu"] * 74), rtol=1e-6
    )


@pytest.mark.slow
def test_prepare_script_runs(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "prepare_icb.py"), "--realdata",
         str(REALDATA), "--out", str(tmp_path / "icb")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "shared genes: " in out.stdout
    assert (tmp_path / "icb" / "manifest.csv").is_file()
