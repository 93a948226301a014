#!/bin/bash
# Multi-node DDP training under SLURM: one task per GPU, Lightning reads the SLURM variables.
#   sbatch scripts/sbatch_train.sh [extra Hydra overrides]
#   sbatch --nodes=4 scripts/sbatch_train.sh data=manifest data.manifest=/cohort/manifest.csv
#SBATCH --job-name=immunoplex-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --mem=0
#SBATCH --time=12:00:00
#SBATCH --output=logs/%x-%j.out

set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
# shellcheck disable=SC1091
source .venv/bin/activate
export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-8}"
export NCCL_ASYNC_ERROR_HANDLING=1

# Tile every slide once (cached, atomic) before the GPUs start, so ranks never race on it.
srun --ntasks=1 --nodes=1 immunoplex-train "$@" prepare_only=true

srun immunoplex-train trainer=ddp \
    trainer.devices="${SLURM_NTASKS_PER_NODE}" trainer.num_nodes="${SLURM_JOB_NUM_NODES}" \
    data.num_workers=6 data.persistent_workers=true "$@"
