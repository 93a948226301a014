"""Every shipped config composes (and every model config is built by tests/models)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from immunoplex.paths import config_dir

CONFIGS = config_dir()
# cfg.model of `train model=NAME` for every model config, written from the configs before they
# were rebuilt from the model/{encoder,aggregator,expression_encoder,fusion} groups.
MODEL_SNAPSHOT = Path(__file__).parent / "data" / "model_configs.json"
GROUPS = [
    "data",
    "model",
    "optimizer",
    "scheduler",
    "trainer",
    "callbacks",
    "logger",
    "paths",
    "experiment",
    "hparams_search",
]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


CASES = [(g, o) for g in GROUPS for o in _options(g)]


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_group_option_composes(group: str, option: str, tmp_path: Path) -> None:
    overrides = [f"{group}={option}", f"paths.output_dir={tmp_path}"]
    if group == "data" and option == "manifest":
        overrides.append("data.manifest=/somewhere/manifest.csv")
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    # Resolve everything except the hydra runtime-only values.
    cfg.hydra.runtime.output_dir = str(tmp_path)
    cfg.hydra.job.num = 0
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container["model"]["_target_"].startswith("immunoplex.")
    assert container["trainer"]["_target_"] == "lightning.Trainer"


def test_launcher_config_composes(tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=["hydra/launcher=submitit_slurm", f"paths.output_dir={tmp_path}"],
            return_hydra_config=True,
        )
    assert cfg.hydra.launcher.gpus_per_node == 1
    assert "submitit" in cfg.hydra.launcher._target_


@pytest.mark.parametrize("name", ["synth", "tile", "eval"])
def test_other_entry_configs_compose(name: str) -> None:
    if not (CONFIGS / f"{name}.yaml").is_file():
        pytest.fail(f"configs/{name}.yaml is missing")
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name=name)
    assert cfg is not None


def test_run_dirs_never_collide() -> None:
    text = (CONFIGS / "hydra" / "default.yaml").read_text()
    assert "${now:%Y-%m-%d_%H-%M-%S}" in text and "SLURM_JOB_ID" in text


def _compose(name: str, overrides: list[str]) -> Any:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def _model(overrides: list[str]) -> dict[str, Any]:
    out = OmegaConf.to_container(_compose("train", overrides).model, resolve=True)
    assert isinstance(out, dict)
    return out


SNAPSHOT: dict[str, Any] = json.loads(MODEL_SNAPSHOT.read_text())


def test_snapshot_covers_every_model_config() -> None:
    assert sorted(SNAPSHOT) == _options("model") and len(SNAPSHOT) == 14


@pytest.mark.parametrize("name", sorted(SNAPSHOT))
def test_model_config_composes_to_snapshot(name: str) -> None:
    """Composed from groups, each model config is exactly what it was as a flat file (checkpoints
    and their `_target_` strings depend on it)."""
    assert _model([f"model={name}"]) == SNAPSHOT[name]


def test_model_components_override_on_the_command_line() -> None:
    m = _model(["model/encoder=resnet18", "model/fusion=bilinear"])
    assert m["name"] == "multimodal"
    assert m["encoder"] == SNAPSHOT["resnet18"]["encoder"]
    assert m["fusion"] == SNAPSHOT["bilinear"]["fusion"]
    assert m["aggregator"] == SNAPSHOT["multimodal"]["aggregator"]
    m = _model(["model=bilinear", "model/fusion=concat_gated", "model/aggregator=transformer"])
    assert m["name"] == "bilinear"
    assert m["fusion"] == SNAPSHOT["multimodal"]["fusion"]
    assert m["aggregator"] == SNAPSHOT["transformer_mil"]["aggregator"]
    m = _model(["model=snn_expression", "model/expression_encoder=mlp"])
    assert m["expression_encoder"] == SNAPSHOT["multimodal"]["expression_encoder"]
