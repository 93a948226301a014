"""The feature model (model=cell_features): shapes, gradients, standardiser, planted signal."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from immunoplex.errors import ConfigError
from immunoplex.evaluation.metrics import auroc_score
from immunoplex.models.feature_extract import (
    GeneSetScores,
    MarkerFeatures,
    RunningStandardizer,
    TileMarkerCounts,
)
from immunoplex.models.feature_model import FeatureModel
from immunoplex.models.registry import MODEL_CLASSES
from tests.models.model_inputs import GENE_NAMES, MARKERS, make_batch

SETS = {"macrophage": ["CD163", "MRC1", "STAB1"], "ifng": ["IFNG", "STAT1", "CXCL9", "NOPE"]}


def _model(**kw: object) -> FeatureModel:
    from functools import partial

    return FeatureModel(
        n_channels=7,
        markers=MARKERS,
        n_genes=len(GENE_NAMES),
        gene_names=GENE_NAMES,
        n_clinical=2,
        treatments=["anti-PD-1", "bexmarilimab+anti-PD-1"],
        expression_encoder=partial(GeneSetScores, gene_sets=SETS),
        clinical_names=["sclever1"],
        **kw,  # type: ignore[arg-type]
    )


def test_registered() -> None:
    for cls in (FeatureModel, TileMarkerCounts, MarkerFeatures, GeneSetScores):
        assert MODEL_CLASSES[f"{cls.__module__}.{cls.__name__}"] is cls


def test_shapes_gradients_and_contributions() -> None:
    torch.manual_seed(0)
    model = _model()
    batch = make_batch(b=3, n=5, g=len(GENE_NAMES))
    model.train()
    out = model(batch)
    assert out["logit"].shape == (3,) and out["treatment_logits"].shape == (3, 2)
    assert out["attention"].shape == (3, 5)
    torch.testing.assert_close(out["attention"][0, 3:], torch.zeros(2))
    torch.testing.assert_close(out["attention"][0].sum(), torch.tensor(1.0))
    f = out["feature_contributions"]
    assert f.shape == (3, model.n_features) == (3, len(model.feature_names))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out["logit"], batch["label"])
    (loss + model.penalty()).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.eval()
    out = model(batch)
    bias = model.bias[batch["treatment"]] * model.lr_scale
    torch.testing.assert_close(out["feature_contributions"].sum(1) + bias, out["logit"])
    # patient 2 has no image: its image features are the training mean (0 after z-scoring)
    assert torch.all(out["features"][2, : model.n_image] == 0)
    assert torch.all(out["features"][1, model.n_image : model.n_image + 2] == 0)
    # the embeddings path (predict, cache) gives the same logits
    emb = model.embed_tiles(batch["tiles"].flatten(0, 1)).reshape(3, 5, -1)
    b2 = {k: v for k, v in batch.items() if k != "tiles"}
    b2["embeddings"] = emb
    torch.testing.assert_close(model(b2)["logit"], out["logit"])
    torch.testing.assert_close(model.counterfactual_logits(batch), out["treatment_logits"])
    assert any("Clever-1+" in lab for lab in model.feature_labels)
    assert "clinical:sclever1" in model.feature_names


def test_running_standardizer_pools_batches() -> None:
    x = torch.randn(100, 3) * torch.tensor([1.0, 5.0, 0.1]) + 2.0
    st = RunningStandardizer(3).train()
    w = torch.ones(100, 3)
    for a in range(0, 100, 7):
        st(x[a : a + 7], w[a : a + 7])
    torch.testing.assert_close(st.mean, x.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(st.sd(), x.std(0), atol=1e-4, rtol=1e-4)


def _tiles(n_pat: int, gen: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Tiles with a PanCK nest; label driven by where the CD8+ spots sit (inside vs outside)."""
    b, n, t = n_pat, 4, 32
    x = torch.rand(b, n, 7, t, t, generator=gen) * 0.1
    x[:, :, 0] += 0.5  # DAPI everywhere: all tissue
    x[:, :, 1, :, :16] = 0.9  # tumour: the left half
    itf = torch.rand(b, generator=gen)
    for i in range(b):
        k = 30
        inside = int(round(k * float(itf[i])))
        ys = torch.randint(0, t, (k,), generator=gen)
        xs_in = torch.randint(2, 14, (inside,), generator=gen)
        xs_out = torch.randint(18, 30, (k - inside,), generator=gen)
        for j, xx in enumerate(torch.cat([xs_in, xs_out])):
            x[i, :, 2, ys[j], xx] = 1.0
    label = (torch.rand(b, generator=gen) < torch.sigmoid(6 * (itf - 0.5))).float()
    batch = {
        "tiles": x,
        "tile_mask": torch.ones(b, n, dtype=torch.bool),
        "channel_mask": torch.ones(b, 7, dtype=torch.bool),
        "has_image": torch.ones(b, dtype=torch.bool),
        "clinical": torch.zeros(b, 2),
        "treatment": torch.arange(b) % 2,
    }
    return batch, label


def test_learns_a_planted_intratumoural_signal() -> None:
    gen = torch.Generator().manual_seed(0)
    model = FeatureModel(
        n_channels=7, markers=MARKERS, modalities=["image"], n_clinical=2,
        treatments=["a", "b"], encoder=lambda **d: TileMarkerCounts(**d, relative=None,
        thresholds={"CD8": 0.5, "CD68": 0.5, "STAB1": 0.5, "CD66b": 0.5, "CD31": 0.5}),
    )  # fmt: skip
    train, y = _tiles(120, gen)
    test, y_test = _tiles(80, gen)
    with torch.no_grad():
        emb = model.embed_tiles(train["tiles"].flatten(0, 1)).reshape(120, 4, -1)
    train = {k: v for k, v in train.items() if k != "tiles"} | {"embeddings": emb}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for _ in range(150):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(train)["logit"], y)
        opt.zero_grad()
        (loss + model.penalty()).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        p = torch.sigmoid(model(test)["logit"]).numpy()
    assert auroc_score(y_test.numpy().astype(int), p.astype(np.float64)) > 0.75
    name = model.feature_names.index("image:cd8_t_intratumoural_logit")
    assert model.weights()[:, name].mean() > 0


def test_embedding_fingerprint_follows_every_tile_feature_setting() -> None:
    """Settings that are plain attributes (not buffers) still change the embedding-cache key.

    Before, ``smooth_px`` and ``border_um`` were not in the key: a config change reused the
    tile features computed with the old values.
    """
    from immunoplex.training.embed import encoder_fingerprint

    def fp(**kw: object) -> str:
        return encoder_fingerprint(TileMarkerCounts(7, MARKERS, **kw))  # type: ignore[arg-type]

    base = fp()
    assert fp() == base  # deterministic
    changed = [fp(smooth_px=9), fp(border_um=40.0), fp(tumour_threshold=0.25),
               fp(relative=12.0), fp(cell_types={"cd8_t": ["CD8"]})]  # fmt: skip
    assert base not in changed and len(set(changed)) == len(changed)


def _table_batch(n: int, gen: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Two table columns; the label follows column 0 only; some rows and values are missing."""
    x = torch.randn(n, 2, generator=gen)
    y = (torch.rand(n, generator=gen) < torch.sigmoid(2.5 * x[:, 0])).float()
    has = torch.ones(n, dtype=torch.bool)
    has[::10] = False  # no row: unobserved whatever the values say
    x[has.logical_not()] = 1e6
    x[1::7, 1] = float("nan")  # an empty value
    batch = {"features": x, "has_features": has, "clinical": torch.zeros(n, 0),
             "treatment": torch.arange(n) % 2}  # fmt: skip
    return batch, y


def test_table_features_are_inputs_named_and_learned() -> None:
    gen = torch.Generator().manual_seed(0)
    model = FeatureModel(
        n_channels=7, markers=MARKERS, modalities=["expression"], n_genes=len(GENE_NAMES),
        gene_names=GENE_NAMES, treatments=["a", "b"], table_features=["itf", "noise"],
        table_labels=["intratumoural CD8 share", "noise"], use_clinical=False,
        expression_encoder=partial(GeneSetScores, gene_sets=SETS),
    )  # fmt: skip
    assert model.feature_names[-2:] == ["cells:itf", "cells:noise"]
    assert model.feature_labels[-2] == "intratumoural CD8 share"
    train, y = _table_batch(300, gen)
    test, y_test = _table_batch(200, gen)
    for b in (train, test):  # no expression measured: that modality is unobserved
        b["expression"] = torch.zeros(len(b["features"]), len(GENE_NAMES))
        b["has_expression"] = torch.zeros(len(b["features"]), dtype=torch.bool)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for _ in range(200):
        out = model(train)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out["logit"], y)
        opt.zero_grad()
        (loss + model.penalty()).backward()
        opt.step()
    assert torch.isfinite(out["logit"]).all()  # NaN values and missing rows never leak
    model.eval()
    with torch.no_grad():
        out = model(test)
    p = torch.sigmoid(out["logit"]).numpy().astype(np.float64)
    assert auroc_score(y_test.numpy().astype(int), p) > 0.8
    w = model.weights().mean(dim=0)
    i, j = model.feature_names.index("cells:itf"), model.feature_names.index("cells:noise")
    assert w[i] > 3 * abs(w[j])
    # a patient without a row sits at the training mean: zero contribution from the table
    no_row = test["has_features"].logical_not()
    assert torch.allclose(out["feature_contributions"][no_row][:, -2:], torch.zeros(1))
    with pytest.raises(ConfigError, match="patient-table features"):
        model({k: v for k, v in test.items() if k != "features"})


def test_gene_set_scores_refuse_inputs_with_no_set_gene() -> None:
    """Every score 0 for every patient would be a silent no-op modality (the deep models' default
    expression encoder meeting expression_norm=features, whose inputs are feature names)."""
    feats = ["sig:IFNG6", "pair:PDCD1>CD274", "rank:CXCL9"]
    with pytest.raises(ConfigError, match="none of the 1 gene sets has a gene among the 3") as e:
        GeneSetScores(3, feats, {"t": ["CD8A"]})
    assert "model/expression_encoder=mlp" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="none of the 1 gene sets") as e:
        GeneSetScores(2, ["FOO", "BAR"], {"t": ["CD8A"]})
    assert "expression_norm=features" not in str(e.value)
    ok = GeneSetScores(2, ["CD8A", "BAR"], {"t": ["CD8A"], "absent": ["X"]})  # one set is enough
    assert ok(torch.tensor([[2.0, 5.0]])).tolist() == [[2.0, 0.0]]
