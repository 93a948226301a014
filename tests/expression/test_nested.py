"""Nested selection (issue 17): the family / signature used for a held-out cohort is chosen on
the training cohorts only, so the held-out cohort's labels cannot change the choice."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from immunoplex.evaluation.loco import LocoResult, run_loco
from immunoplex.expression.nested import (
    add_nested,
    add_nested_signature,
    inner_criterion,
    inner_prediction,
    select_family,
)
from immunoplex.expression.transfer import TransferConfig, TransferEnsemble, TransferModel
from tests.expression.test_features import _cohorts

CANDIDATES = {
    "sig": TransferConfig(families=("sig",), Cs=(1e-3, 0.1)),
    "rank": TransferConfig(families=("rank",), Cs=(1e-3, 0.1)),
}


def test_inner_criterion_exact() -> None:
    y = np.array([1, 0, 1, 0, 1, 0])
    coh = np.array(["a", "a", "b", "b", "c", "c"])
    s = np.array([0.9, 0.1, 0.2, 0.8, 0.7, np.nan])  # c: one row left, one class only
    # per cohort: a 1.0, b 0.0 -> 0.5; pooled over the 5 finite rows: 4 of 6 pairs -> 2/3
    assert inner_criterion(y, coh, s) == pytest.approx(0.5 * (0.5 + 4 / 6))
    assert np.isnan(inner_criterion(y, coh, np.full(6, np.nan)))


def test_inner_scores_are_the_models_own_and_bagged_when_bagging() -> None:
    x, y, c = _cohorts(k=4)
    plain = TransferModel(TransferConfig(families=("sig",))).fit(x, y, c)
    bagged = TransferModel(TransferConfig(families=("sig",), n_bags=3)).fit(x, y, c)
    for m in (plain, bagged):
        assert np.isfinite(m.inner_logit).all()
        assert inner_criterion(*inner_prediction(m)) == pytest.approx(m.cv_auroc)
    assert plain.best_params == bagged.best_params  # C is chosen unbagged
    assert not np.allclose(plain.inner_logit, bagged.inner_logit)
    ens = TransferEnsemble([plain.config, bagged.config])
    ens.members = [plain, bagged]
    _, _, prob = inner_prediction(ens)
    np.testing.assert_allclose(
        prob, 0.5 * (inner_prediction(plain)[2] + inner_prediction(bagged)[2])
    )
    choice, scores = select_family({"plain": plain, "bagged": bagged, "ens": ens})
    assert scores[choice] == max(scores.values()) and set(scores) == {"plain", "bagged", "ens"}


def _nested_loco(x: pd.DataFrame, y: np.ndarray, c: list) -> LocoResult:
    idx = x.index
    fitted: dict = {}
    res = run_loco(
        x, pd.Series(y, index=idx), pd.Series(c, index=idx),
        {n: (lambda cfg=cfg: TransferModel(cfg)) for n, cfg in CANDIDATES.items()},
        baselines=("CD8A", "CYT"),
        after_fit=lambda n, h, m, _: fitted.__setitem__((n, h), m),
    )  # fmt: skip
    add_nested(res, list(CANDIDATES), lambda n, h: fitted[(n, h)], after="rank")
    add_nested_signature(res, ["CD8A", "CYT"], after="nested")
    return res


def test_held_out_labels_cannot_change_the_nested_choice() -> None:
    x, y, c = _cohorts(k=4)
    first = _nested_loco(x, y, c)
    assert first.methods[:4] == ["sig", "rank", "nested", "nested signature"]
    held = "c0"
    flipped = y.copy()
    flipped[np.asarray(c) == held] = 1 - flipped[np.asarray(c) == held]
    second = _nested_loco(x, flipped, c)
    for name in ("nested", "nested signature"):
        a, b = first.info[name][held], second.info[name][held]
        assert a["chosen"] == b["chosen"]
        assert a["inner"] == pytest.approx(b["inner"])  # the same inner figures, bit for bit
        p1, p2 = first.predictions, second.predictions
        s1 = p1[(p1["method"] == name) & (p1["cohort"] == held)]["score"].to_numpy()
        s2 = p2[(p2["method"] == name) & (p2["cohort"] == held)]["score"].to_numpy()
        np.testing.assert_allclose(s1, s2)
    # The nested rows are the chosen family's held-out rows, cohort by cohort.
    p = first.predictions
    for h, info in first.info["nested"].items():
        got = p[(p["method"] == "nested") & (p["cohort"] == h)]["score"].to_numpy()
        want = p[(p["method"] == info["chosen"]) & (p["cohort"] == h)]["score"].to_numpy()
        np.testing.assert_array_equal(got, want)


def test_nested_signature_is_picked_on_the_training_cohorts() -> None:
    # A is perfect on the training cohorts and inverted on the held-out one; B the reverse.
    rows = []
    for cohort, flip in (("t1", False), ("t2", False), ("h", True)):
        for i, lab in enumerate([1, 1, 0, 0]):
            good = float(lab) + 0.1 * i
            rows += [
                (f"{cohort}{i}", cohort, lab, "A", -good if flip else good),
                (f"{cohort}{i}", cohort, lab, "B", good if flip else -good),
            ]
    pred = pd.DataFrame(rows, columns=["patient_id", "cohort", "label", "method", "score"])
    res = LocoResult(pred, ["A", "B"], ["t1", "t2", "h"], {})
    info = add_nested_signature(res, ["A", "B"])
    assert info["h"]["chosen"] == "A"  # what the training cohorts say, not the held-out one
    assert info["h"]["inner"]["A"] == pytest.approx(1.0)
    assert res.methods == ["A", "B", "nested signature"]


def test_fallback_chain_scores_with_the_first_member_that_can() -> None:
    from immunoplex.errors import CheckpointError
    from immunoplex.expression.features import CHECKPOINT_GENES, IMPRES_PAIRS
    from immunoplex.expression.transfer import load_transfer_model, predict_transfer

    x, y, c = _cohorts(k=4)
    cfgs = [TransferConfig(families=("impres", "pairs")), TransferConfig(families=("sig",))]
    chain = TransferEnsemble(cfgs, mode="first").fit(x, y, c)
    d = chain.to_dict()
    assert d["mode"] == "first" and load_transfer_model(d).mode == "first"
    np.testing.assert_allclose(chain.predict_proba(x), chain.members[0].predict_proba(x))
    # No pair gene left: the pairs member cannot score, the gene-set member does (nothing filled).
    pair_genes = set(CHECKPOINT_GENES) | {g for p in IMPRES_PAIRS for g in p}
    small = x[[g for g in x.columns if g not in pair_genes]]
    prob, reports = predict_transfer(d, small)
    assert len(reports) == 2 and not reports[0]["computable"] and reports[1]["computable"]
    np.testing.assert_allclose(prob, chain.members[1].predict_proba(small), atol=1e-6)
    _, _, inner = inner_prediction(chain)
    np.testing.assert_allclose(inner, inner_prediction(chain.members[0])[2])
    with pytest.raises(CheckpointError):
        load_transfer_model({**d, "mode": "vote"})
