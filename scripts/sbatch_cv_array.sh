#!/bin/bash
# Cross-validation as a SLURM array: one single-GPU job per fold, then one summary.
#   sbatch --array=0-4 scripts/sbatch_cv_array.sh data.split.mode=kfold data.split.n_folds=5
#   immunoplex-cv collect='runs/cv-array/fold*' paths.output_dir=runs/cv-array
#SBATCH --job-name=immunoplex-cv
#SBATCH --gpus=1
#SBATCH --cpus-per-task=8
#SBATCH --time=06:00:00
#SBATCH --output=logs/%x-%A_%a.out

set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
# shellcheck disable=SC1091
source .venv/bin/activate
fold="${SLURM_ARRAY_TASK_ID:?run with sbatch --array}"
immunoplex-train trainer=gpu "$@" data.split.fold="${fold}" \
    hydra.run.dir="runs/cv-array/fold${fold}"
