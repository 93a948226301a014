"""Compose the shipped training config for tests: CPU, no workers, tmp output."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from immunoplex.paths import config_dir


def compose_train(
    overrides: list[str] | None = None, output_dir: Path | None = None, config: str = "train"
) -> DictConfig:
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name=config, overrides=list(overrides or []))
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


def fast_overrides(cohort: Path, epochs: int = 3) -> list[str]:
    return [
        f"data.root={cohort}",
        f"data.cache_dir={cohort}/cache",
        "trainer=cpu",
        f"trainer.max_epochs={epochs}",
        "trainer.enable_progress_bar=false",
        "data.num_workers=0",
        "data.prep_workers=1",
    ]
