"""Every shipped model config builds, runs forward/backward on CPU and trains every parameter."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from immunoplex.models import ResponseModel
from immunoplex.models.feature_model import FeatureModel
from immunoplex.paths import config_dir
from immunoplex.training.checkpoint import build_model

from .model_inputs import make_batch

CONFIG_DIR = config_dir() / "model"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
REQUIRED = {
    "multimodal", "image_only", "expression_only", "panel_agnostic", "bilinear", "cross_attention",
    "transformer_mil", "mean_mil", "max_mil", "snn_expression", "resnet18", "resnet50",
    "efficientnet_b0", "convnext_tiny",
}  # fmt: skip


def _targets(node: Any) -> list[str]:
    if isinstance(node, dict):
        out = [node["_target_"]] if "_target_" in node else []
        return out + [t for v in node.values() for t in _targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in _targets(v)]
    return []


def composed(name: str) -> dict[str, Any]:
    """``cfg.model`` of ``train`` with ``model=name`` (model configs compose from groups)."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={name}"])
    out = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(out, dict)
    return out


def build(path: Path, dims: dict[str, Any]) -> ResponseModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gene sets partly absent from the toy gene list
        model = build_model(composed(path.stem), dims)
    assert isinstance(model, ResponseModel | FeatureModel)
    return model  # type: ignore[return-value]


def test_required_configs_shipped() -> None:
    assert {p.stem for p in CONFIGS} >= REQUIRED


# big ImageNet backbones: seconds alone, but over ~20 s on a loaded 2-core machine; their encoders
# are also covered (tiles only) by test_models_encoders.py in the fast suite.
HEAVY = {"resnet50", "efficientnet_b0", "convnext_tiny"}
PARAMS = [pytest.param(p, marks=pytest.mark.slow) if p.stem in HEAVY else p for p in CONFIGS]


@pytest.mark.parametrize("path", PARAMS, ids=[p.stem for p in CONFIGS])
def test_config_forward_backward(path: Path, dims: dict[str, Any]) -> None:
    torch.manual_seed(0)
    cfg = composed(path.stem)
    assert all(t.startswith("immunoplex.") for t in _targets(cfg)), _targets(cfg)
    model = build(path, dims)
    assert model.name == path.stem
    model.train()
    batch = make_batch()
    out = model(batch)
    b, n = batch["tile_mask"].shape
    assert out["logit"].shape == (b,) and out["logit"].dtype == torch.float32
    assert torch.isfinite(out["logit"]).all()
    if "image" in model.modalities:
        assert out["attention"].shape == (b, n)
        assert out["image_embedding"].shape[0] == b
        assert (out["attention"][~batch["tile_mask"]] == 0).all()
    else:
        assert "attention" not in out
    if "expression" in model.modalities:
        assert out["expression_embedding"].shape[0] == b
    out["logit"].sum().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{path.stem}: {name} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{path.stem}: {name} has a non-finite gradient"

    model.eval()
    with torch.no_grad():
        logit = model(batch)["logit"]
        assert torch.isfinite(logit).all()
        if "image" in model.modalities:  # two-stage mode: cached embeddings give the same logit
            flat = batch["tiles"].flatten(0, 1)
            emb = model.embed_tiles(flat, None).reshape(b, n, -1)
            assert emb.shape[-1] == model.tile_embedding_dim
            two_stage = {k: v for k, v in batch.items() if k != "tiles"} | {"embeddings": emb}
            torch.testing.assert_close(model(two_stage)["logit"], logit, rtol=1e-4, atol=1e-4)
