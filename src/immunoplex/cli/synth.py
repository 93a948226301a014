"""``immunoplex-synth out_dir=DIR size=tiny|small|default|large seed=N [workers=K]``.

A thin Hydra wrapper around :func:`immunoplex.synth.generate_cohort`; configs/synth.yaml holds
every setting (sizes, truth effect sizes, rendering, gene sets).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from immunoplex.errors import ConfigError, ImmunoplexError
from immunoplex.paths import config_dir


def run(cfg: DictConfig) -> None:
    """Generate the cohort described by a composed synth config and print its summary."""
    from immunoplex.synth.cohort import generate_cohort

    if OmegaConf.is_missing(cfg, "out_dir"):
        raise ConfigError("synth: out_dir is required, e.g. immunoplex-synth out_dir=data/synth")
    summary = generate_cohort(
        cfg.out_dir,
        size=cfg.size,
        seed=cfg.seed,
        workers=cfg.workers,
        config=cfg,
        progress=bool(cfg.get("progress", True)),
    )
    print(summary.format())


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="synth")
def _app(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except ImmunoplexError as err:
        print(f"immunoplex-synth: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    """Console-script entry point."""
    _app()


if __name__ == "__main__":
    main()
