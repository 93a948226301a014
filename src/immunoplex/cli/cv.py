"""`immunoplex-cv`: all folds of a patient-level CV in one command, then a summary table.

immunoplex-cv data.split.mode=kfold data.split.n_folds=5
immunoplex-cv data.split.mode=loco            # one fold per cohort
immunoplex-cv collect=RUN_DIR_GLOB            # summarise folds trained as a multirun/array
"""

from __future__ import annotations

import glob
from pathlib import Path

from omegaconf import DictConfig, open_dict

from immunoplex.cli.checks import validate_train
from immunoplex.cli.common import hydra_app


@hydra_app("train", validate_train)
def main(cfg: DictConfig) -> None:
    """Run (or collect) every fold of a patient-level CV."""
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


if __name__ == "__main__":
    main()
