"""Every shipped config composes (and every model config is built by tests/models)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from immunoplex.paths import config_dir

CONFIGS = config_dir()
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
