"""ResponseModel: masks, missing modalities, treatment conditioning, compile/autocast."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from immunoplex.errors import ConfigError
from immunoplex.models import (
    CrossAttentionFusion,
    GatedAttentionMIL,
    GatedBilinearFusion,
    MarkerEncoder,
    MaxMIL,
    ResponseModel,
    SmallCNN,
    TransformerMIL,
)
from immunoplex.models.expression import ExpressionEncoder

from .model_inputs import make_batch


def small_model(dims: dict[str, Any], **kw: Any) -> ResponseModel:
    torch.manual_seed(0)
    kw.setdefault("encoder", lambda **d: SmallCNN(width=8, out_dim=16, **d))
    kw.setdefault("aggregator", lambda **d: GatedAttentionMIL(dim=16, attn_dim=8, **d))
    kw.setdefault(
        "expression_encoder", lambda **d: ExpressionEncoder(hidden_dims=[16], out_dim=16, **d)
    )
    return ResponseModel(**dims, **kw).eval()


AGGREGATORS = {
    "gated": lambda **d: GatedAttentionMIL(dim=16, attn_dim=8, **d),
    "transformer": lambda **d: TransformerMIL(dim=16, n_heads=2, **d),
}


@pytest.mark.parametrize("agg", sorted(AGGREGATORS))
def test_padding_tiles_change_nothing(dims: dict[str, Any], agg: str) -> None:
    model = small_model(dims, aggregator=AGGREGATORS[agg])
    batch = make_batch()
    padded = dict(batch)
    b, n, c, t, _ = batch["tiles"].shape
    extra = 4
    garbage = torch.randn(b, extra, c, t, t) * 1e3
    garbage[0, 0, 0, 0, 0] = float("nan")
    padded["tiles"] = torch.cat([batch["tiles"], garbage], dim=1)
    padded["tiles"][0, 4] = 77.0  # overwrite an existing padded tile too
    padded["tile_mask"] = torch.cat(
        [batch["tile_mask"], torch.zeros(b, extra, dtype=torch.bool)], 1
    )
    with torch.no_grad():
        a, p = model(batch), model(padded)
    torch.testing.assert_close(a["logit"], p["logit"])
    torch.testing.assert_close(a["attention"], p["attention"][:, :n])
    assert (p["attention"][:, n:] == 0).all()


def test_missing_modalities_use_missing_tokens(dims: dict[str, Any]) -> None:
    model = small_model(dims)
    batch = make_batch()  # patient 1 lacks expression, patient 2 lacks the image
    other = dict(batch)
    other["expression"] = batch["expression"].clone()
    other["expression"][1] = float("nan")  # the absent expression of patient 1: garbage
    other["tiles"] = batch["tiles"].clone()
    other["tiles"][2] = torch.rand_like(batch["tiles"][2])  # the absent image of patient 2
    other["tile_mask"] = batch["tile_mask"].clone()
    other["tile_mask"][2] = True  # even if tiles are marked real, has_image=False wins
    with torch.no_grad():
        a, b = model(batch), model(other)
        torch.testing.assert_close(a["logit"][1:], b["logit"][1:])  # absent parts ignored
        changed = dict(batch, expression=batch["expression"] * 3)
        assert not torch.allclose(model(changed)["logit"][0], a["logit"][0])  # present ones used
    torch.testing.assert_close(a["expression_embedding"][1], model.missing_expression)
    torch.testing.assert_close(a["image_embedding"][2], model.missing_image)
    assert (a["attention"][2] == 0).all()
    torch.testing.assert_close(a["attention"][:2].sum(dim=1), torch.ones(2))


def test_modality_dropout_only_hides_one_of_two(dims: dict[str, Any]) -> None:
    model = small_model(dims, modality_dropout=0.5)
    img = torch.tensor([True, True, False, True] * 50)
    expr = torch.tensor([True, False, True, True] * 50)
    i2, e2 = model._modality_dropout(img, expr)
    assert (i2 | e2)[img | expr].all()  # never both hidden
    assert not (i2 & ~img).any() and not (e2 & ~expr).any()
    assert (~i2 & img).any() and (~e2 & expr).any()


@pytest.mark.parametrize("mode", ["embedding", "head", "both"])
def test_treatment_is_an_input(dims: dict[str, Any], mode: str) -> None:
    model = small_model(dims, treatment_mode=mode)
    batch = make_batch()
    logits = model.counterfactual_logits(batch)
    assert logits.shape == (3, 2)
    assert not torch.allclose(logits[:, 0], logits[:, 1])
    with torch.no_grad():
        out = model(batch)
    torch.testing.assert_close(out["logit"], logits.gather(1, batch["treatment"][:, None])[:, 0])


def test_no_treatment_no_clinical(dims: dict[str, Any]) -> None:
    dims = dims | {"n_clinical": 0, "treatments": []}
    model = small_model(dims, treatment_mode="none")
    batch = make_batch()
    del batch["clinical"], batch["treatment"]
    assert model(batch)["logit"].shape == (3,)


def test_image_only_and_expression_only(dims: dict[str, Any]) -> None:
    img = small_model(dims, modalities=["image"])
    assert img.modalities == ["image"] and not hasattr(img, "expression_encoder")
    expr = small_model(dims, modalities=["expression"])
    assert expr.tile_embedding_dim == 0
    batch = make_batch()
    assert "expression_embedding" not in img(batch)
    no_tiles = {k: v for k, v in batch.items() if k not in ("tiles", "tile_mask")}
    assert set(expr(no_tiles)) >= {"logit", "expression_embedding"}
    with pytest.raises(ConfigError):
        expr.embed_tiles(batch["tiles"][0])


def test_fusion_variants(dims: dict[str, Any]) -> None:
    bil = small_model(dims, fusion=lambda **d: GatedBilinearFusion(gate_dim=4, **d))
    assert bil(make_batch())["logit"].shape == (3,)
    sets = {"macrophage": ["CD163", "STAB1"], "ifng": ["IFNG", "STAT1", "CXCL9"]}
    xatt = small_model(
        dims,
        expression_encoder=lambda **d: ExpressionEncoder(out_dim=16, gene_sets=sets, **d),
        fusion=lambda **d: CrossAttentionFusion(dim=8, n_heads=2, **d),
    )
    out = xatt(make_batch())
    att = out["cross_attention"]
    assert att.shape == (3, 2, 5)
    torch.testing.assert_close(att[0].sum(dim=1), torch.ones(2))
    assert (att[0, :, 3:] == 0).all() and (att[2] == 0).all()


def test_config_errors(dims: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="modalities"):
        small_model(dims, modalities=["image", "text"])
    with pytest.raises(ConfigError, match="both modalities"):
        small_model(dims, modalities=["image"], fusion=lambda **d: GatedBilinearFusion(**d))
    with pytest.raises(ConfigError, match="gene_sets"):
        small_model(dims, fusion=lambda **d: CrossAttentionFusion(**d))
    with pytest.raises(ConfigError, match="treatment_mode"):
        small_model(dims, treatment_mode="sometimes")
    with pytest.raises(ConfigError, match="re-run the embedding"):
        model = small_model(dims)
        batch = make_batch()
        batch["embeddings"] = torch.zeros(3, 5, 99)
        model(batch)
    with pytest.raises(ConfigError, match="clinical"):
        model = small_model(dims)
        batch = make_batch()
        batch["clinical"] = torch.zeros(3, 5)
        model(batch)


def test_bf16_autocast_and_channels_last(dims: dict[str, Any]) -> None:
    model = small_model(dims, channels_last=True).to(memory_format=torch.channels_last)
    batch = make_batch()
    with torch.no_grad():
        ref = model(batch)["logit"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(batch)
    assert out["logit"].dtype == torch.float32
    assert torch.isfinite(out["logit"]).all()
    torch.testing.assert_close(out["logit"], ref, atol=0.1, rtol=0.1)


COMPILE_VARIANTS = {
    "gated": {},
    "transformer": {"aggregator": AGGREGATORS["transformer"]},
    "max_bilinear": {
        "aggregator": lambda **d: MaxMIL(dim=16, **d),
        "fusion": lambda **d: GatedBilinearFusion(gate_dim=4, **d),
    },
    "marker_cross_attention": {
        "encoder": lambda **d: MarkerEncoder(stem_width=4, out_dim=16, **d),
        "expression_encoder": lambda **d: ExpressionEncoder(
            out_dim=16, gene_sets={"ifng": ["IFNG", "STAT1"]}, **d
        ),
        "fusion": lambda **d: CrossAttentionFusion(dim=8, n_heads=2, **d),
    },
}


@pytest.mark.parametrize(
    "variant",
    [
        v if v == "gated" else pytest.param(v, marks=pytest.mark.slow)
        for v in sorted(COMPILE_VARIANTS)
    ],
)
def test_compiles_without_graph_breaks(dims: dict[str, Any], variant: str) -> None:
    # Dynamo's per-code-object caches outlive a test: after the other variants (and any
    # training test that compiled a model in this process) the shared forward code can hit its
    # recompile limit, which fullgraph=True turns into a failure unrelated to this variant
    torch._dynamo.reset()
    model = small_model(dims, **COMPILE_VARIANTS[variant])
    batch = make_batch()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(batch)["logit"], model(batch)["logit"])
    model.train()  # training-mode paths (modality/channel dropout) compile too
    compiled(batch)["logit"].sum().backward()
