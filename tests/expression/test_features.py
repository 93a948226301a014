"""Transferable expression features: exact values on hand-made tables, coverage reports, the
transfer model's save/load/predict round trip and scoring with partial gene coverage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from immunoplex.errors import CheckpointError, ExpressionError
from immunoplex.expression.features import (
    GENE_SETS,
    FeatureBuilder,
    GeneSet,
    singscore,
    within_sample_ranks,
)
from immunoplex.expression.transfer import (
    TransferConfig,
    TransferEnsemble,
    TransferModel,
    fit_l2_logistic,
    load_transfer_model,
    predict_transfer,
)


def _hand() -> pd.DataFrame:
    return pd.DataFrame(
        [[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0], [2.0, 2.0, 5.0, 0.0]],
        index=["s1", "s2", "s3"],
        columns=["A", "B", "C", "D"],
    )


def test_within_sample_ranks_exact() -> None:
    r = within_sample_ranks(_hand())
    np.testing.assert_allclose(r.loc["s1"], [0.125, 0.375, 0.625, 0.875])
    np.testing.assert_allclose(r.loc["s2"], [0.875, 0.625, 0.375, 0.125])
    np.testing.assert_allclose(r.loc["s3"], [0.5, 0.5, 0.875, 0.125])  # tie: average rank 2.5


def test_singscore_exact() -> None:
    r = within_sample_ranks(_hand())
    s = singscore(r, ["C", "D"])
    np.testing.assert_allclose(s, [(0.75 - 0.5) * np.sqrt(24), (0.25 - 0.5) * np.sqrt(24), 0.0])


def _builder(**kw) -> FeatureBuilder:
    sets = {
        "CD": GeneSet("CD", ("C", "D"), "test"),
        "ABX": GeneSet("ABX", ("A", "B", "X", "Y"), "test"),  # 2 of 4 genes exist
        "XYZ": GeneSet("XYZ", ("X", "Y", "Z"), "test"),  # none exists: never defined
    }
    return FeatureBuilder(
        gene_sets=sets, impres_pairs=(("A", "B"), ("C", "D"), ("A", "X")),
        pair_genes=("A", "C", "D"), **kw,
    )  # fmt: skip


def test_features_exact_on_hand_table() -> None:
    b = _builder(families=("sig", "impres", "pairs", "rank"))
    specs = b.define(["A", "B", "C", "D"])
    names = [s.name for s in specs]
    assert names[:3] == ["sig:CD", "sig:ABX", "impres:IMPRES"]
    # IMPRES pairs first (A>B, C>D), then the other pairs of the pair genes (not C>D again).
    assert [n for n in names if n.startswith("pair:")] == [
        "pair:A>B", "pair:C>D", "pair:A>C", "pair:A>D",
    ]  # fmt: skip
    assert [n for n in names if n.startswith("rank:")] == ["rank:A", "rank:B", "rank:C", "rank:D"]
    feats, rep = b.compute(_hand(), specs, ["A", "B", "C", "D"])
    np.testing.assert_allclose(feats["pair:A>B"], [0.0, 1.0, 0.5])
    np.testing.assert_allclose(feats["pair:C>D"], [0.0, 1.0, 1.0])
    np.testing.assert_allclose(feats["impres:IMPRES"], [0.0, 1.0, 0.75])
    np.testing.assert_allclose(feats["sig:ABX"], [(0.25 - 0.5) * np.sqrt(24), 0.25 * 24**0.5, -0.0])
    np.testing.assert_allclose(feats["rank:C"], [0.625, 0.375, 0.875])
    assert rep.not_computable == [] and len(rep.computable) == len(specs)


def test_coverage_report_with_partial_genes() -> None:
    b = _builder(families=("sig", "impres", "pairs"))
    specs = b.define(["A", "B", "C", "D"])
    table = _hand()[["A", "C"]]  # B and D absent
    feats, rep = b.compute(table, specs, ["A", "B", "C", "D"])
    cov = {f.name: f for f in rep.features}
    assert cov["sig:CD"].computable and cov["sig:CD"].missing == ["D"]  # 1/2 >= 50%
    assert not cov["sig:ABX"].computable or cov["sig:ABX"].present == ["A"]
    assert cov["sig:ABX"].fraction == 0.5 and cov["sig:ABX"].computable
    assert not cov["pair:A>B"].computable and cov["pair:A>B"].missing == ["B"]
    assert cov["pair:A>C"].computable
    assert not cov["impres:IMPRES"].computable  # 0 of its 2 pairs
    assert set(feats.columns) == set(rep.computable)
    assert feats.notna().all().all()  # nothing filled, nothing NaN
    d = rep.to_dict()
    assert d["universe_present"] == 2 and d["universe_size"] == 4
    assert "pair:A>B" in d["not_computable"] and "features computable" in d["summary"]
    # Ranks are among the universe genes present: extra platform genes do not shift them.
    wide = _hand().assign(EXTRA=100.0)
    f2, _ = b.compute(wide, specs, ["A", "B", "C", "D"])
    f1, _ = b.compute(_hand(), specs, ["A", "B", "C", "D"])
    pd.testing.assert_frame_equal(f1, f2)


def test_strict_threshold_and_unknown_family() -> None:
    b = _builder(families=("sig",), min_fraction=0.75)
    assert [s.name for s in b.define(["A", "B", "C", "D"])] == ["sig:CD"]
    with pytest.raises(ExpressionError, match="unknown feature family"):
        FeatureBuilder(families=("nope",))


def _cohorts(seed: int = 0, n: int = 40, k: int = 4) -> tuple[pd.DataFrame, np.ndarray, list]:
    """k cohorts; each has its own platform offset and scale (within-sample features ignore both)."""
    rng = np.random.default_rng(seed)
    genes = sorted({g for s in GENE_SETS.values() for g in s.genes} | {f"N{i}" for i in range(40)})
    frames, ys, cs = [], [], []
    for c in range(k):
        x = rng.normal(5, 1.5, (n, len(genes)))
        df = pd.DataFrame(x, columns=genes)
        immune = rng.normal(0, 1, n)
        for g in ("CD8A", "CXCL9", "GZMA", "PRF1", "CXCL10", "IFNG", "GZMB", "STAT1"):
            df[g] += 2.0 * immune
        y = (immune + rng.normal(0, 0.5, n) > 0).astype(int)
        df = df * (1 + 0.2 * c) + 3 * c
        df.index = [f"c{c}_{i}" for i in range(n)]
        frames.append(df)
        ys.append(y)
        cs += [f"c{c}"] * n
    return pd.concat(frames), np.concatenate(ys), cs


def test_l2_logistic_c0_keeps_only_free_columns() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    y = (x[:, 0] > 0).astype(float)
    w, _ = fit_l2_logistic(x, y, 0.0, np.array([True, False, False]))
    assert w[0] > 0 and w[1] == 0 and w[2] == 0


@pytest.mark.parametrize(
    "cfg",
    [
        TransferConfig(families=("sig",)),
        TransferConfig(families=("sig", "impres", "pairs"), prior=("TEFF", "CYT")),
        TransferConfig(families=("rank",), n_bags=3),
    ],
)
def test_transfer_round_trip_and_partial_genes(cfg: TransferConfig, tmp_path: Path) -> None:
    from sklearn.metrics import roc_auc_score

    x, y, c = _cohorts()
    model = TransferModel(cfg).fit(x, y, c)
    assert "leave-one-cohort-out" in model.inner_cv and model.best_params["C"] in cfg.Cs
    new_x, new_y, _ = _cohorts(seed=1, k=1)
    p = model.predict_proba(new_x)
    assert roc_auc_score(new_y, p) > 0.8
    path = tmp_path / "m.json"
    path.write_text(json.dumps(model.to_dict()))
    loaded = load_transfer_model(json.loads(path.read_text()))
    np.testing.assert_allclose(loaded.predict_proba(new_x), p, atol=1e-5)
    # 25% of the genes (the immune genes among them), no allow_missing, nothing filled.
    keep = list(new_x.columns[::4]) + ["CD8A", "CXCL9", "GZMA", "PRF1", "TEFF"[:0] or "IFNG"]
    keep = list(dict.fromkeys(g for g in keep if g in new_x.columns))
    prob, reports = predict_transfer(json.loads(path.read_text()), new_x[keep])
    assert prob.shape == (len(new_x),) and np.isfinite(prob).all()
    rep = reports[0]
    assert rep["universe_present"] == len(keep) and rep["not_computable"]
    assert all(f["missing"] for f in rep["features"] if not f["computable"])
    assert roc_auc_score(new_y, prob) > 0.7


def test_ensemble_round_trip_and_kind_check() -> None:
    x, y, c = _cohorts()
    ens = TransferEnsemble(
        [TransferConfig(families=("sig",)), TransferConfig(families=("impres", "pairs"))]
    ).fit(x, y, c)
    d = json.loads(json.dumps(ens.to_dict()))
    np.testing.assert_allclose(
        load_transfer_model(d).predict_proba(x), ens.predict_proba(x), atol=1e-5
    )
    _, reports = predict_transfer(d, x)
    assert len(reports) == 2
    for bad in ({**d, "kind": "builtins.eval"}, {**d["members"][0], "version": 99}):
        with pytest.raises(CheckpointError):
            load_transfer_model(bad)
    with pytest.raises(ExpressionError, match="none of the model's genes"):
        ens.predict_proba(pd.DataFrame({"ZZZ": [1.0, 2.0]}))


def test_immunoplex_predict_with_a_transfer_model(tmp_path: Path) -> None:
    from immunoplex.inference.options import PredictOptions
    from immunoplex.inference.run import predict

    x, y, c = _cohorts()
    model = TransferModel(TransferConfig(families=("sig", "impres"))).fit(x, y, c)
    ckpt = tmp_path / "transfer.json"
    ckpt.write_text(json.dumps(model.to_dict()))
    new_x, _, _ = _cohorts(seed=2, k=1)
    sub = new_x[new_x.columns[: len(new_x.columns) // 4].union(["CD8A", "GZMA", "PRF1"])]
    table = tmp_path / "new.csv"
    sub.rename_axis("patient_id").to_csv(table)
    opts = PredictOptions(
        ckpt=str(ckpt), input=None, out_dir=str(tmp_path / "out"), expression=str(table)
    )
    df = predict(opts)
    assert len(df) == len(sub) and df["probability"].between(0, 1).all()
    js = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert js["model"] == "TransferExpressionModel"
    cov = js["coverage"][0]
    assert cov["computable"] and cov["not_computable"]
    assert cov["universe_present"] == sub.shape[1]
