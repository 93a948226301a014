"""``immunoplex-cells``: segment, measure and phenotype every slide; cohort spatial features.

Slides run in a process pool (``workers``) with a progress bar; a slide whose ``cells.h5ad`` and
``settings.json`` exist with the same settings is skipped. Unreadable slides are listed in
``skipped.csv`` and the run goes on. With ``phenotypes.scope: cohort`` the positivity thresholds
are pooled over the run's slides in two passes: the first measures every slide (tables only,
under ``out_dir/pass1``), the thresholds are fitted on all their cells (``thresholds.json``), and
the second writes every output with them. See ``configs/cells.yaml`` and docs/cells.md.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from immunoplex.cells.cohort import cells_cohort, read_slides  # noqa: F401  (the CLI's API)
from immunoplex.paths import config_dir


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="cells")
def _hydra_main(cfg: DictConfig) -> None:
    from immunoplex.cli.common import friendly_errors

    summary = friendly_errors(cells_cohort)(cfg)
    if summary["skipped"] and not summary["done"] and not summary["already"]:
        raise SystemExit(1)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
