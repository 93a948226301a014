"""`immunoplex-cv`: all folds of a patient-level CV in one command, then a summary table.

immunoplex-cv data.split.mode=kfold data.split.n_folds=5
immunoplex-cv data.split.mode=loco            # one fold per cohort
immunoplex-cv collect=RUN_DIR_GLOB            # summarise folds trained as a multirun/array
"""

from __future__ import annotations

import glob
from pathlib import Path

import hydra
from omegaconf import DictConfig, open_dict

from immunoplex.cli.common import friendly_errors
from immunoplex.paths import config_dir


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
@friendly_errors
def _main(cfg: DictConfig) -> None:
    from immunoplex.training.cv import collect_folds, run_cv

    collect = cfg.get("collect")
    if collect:
        dirs = [Path(p) for p in glob.glob(str(collect))]
        table = collect_folds(dirs, Path(cfg.paths.output_dir))
    else:
        with open_dict(cfg):
            if cfg.data.split.mode == "fixed":
                cfg.data.split.mode = "kfold"
        table = run_cv(cfg)
    print((Path(cfg.paths.output_dir) / "cv_summary.md").read_text())
    print(f"{len(table)} fold(s); summary in {cfg.paths.output_dir}/cv_summary.csv")


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
