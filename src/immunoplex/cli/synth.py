"""``immunoplex-synth out_dir=DIR size=tiny|small|default|large seed=N [workers=K]``.

A thin Hydra wrapper around :func:`immunoplex.synth.generate_cohort`; configs/synth.yaml holds
every setting (sizes, truth effect sizes, rendering, gene sets).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from immunoplex.cli.checks import validate_synth
from immunoplex.cli.common import hydra_app
from immunoplex.errors import ConfigError


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


@hydra_app("synth", validate_synth)
def main(cfg: DictConfig) -> None:
    """Console-script entry point."""
    run(cfg)


if __name__ == "__main__":
    main()
