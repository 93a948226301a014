"""Subprocess driver for the kill/resume tests: ``train(cfg)`` that can SIGKILL itself.

    python train_driver.py COHORT OUT_DIR [--epochs N] [--kill-at-step K] [--resume CKPT]
        [override ...]

``--kill-at-step K`` kills the process with SIGKILL (no clean-up of any kind) at the end of the
training batch that makes ``trainer.global_step == K``, after the checkpoint callbacks of that
batch ran, exactly like an OOM killer or a pre-empted SLURM job. ``--step-checkpoints N`` adds a
second atomic ModelCheckpoint writing ``checkpoints/step-latest.ckpt`` every N steps.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from immunoplex.paths import config_dir


class KillAtStep(L.Callback):
    """SIGKILLs the own process once ``trainer.global_step`` reaches ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.global_step >= self.step:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cohort")
    ap.add_argument("out")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--kill-at-step", type=int, default=None)
    ap.add_argument("--resume", default=None)
    ap.add_argument("--step-checkpoints", type=int, default=0)
    args, extra = ap.parse_known_args()
    overrides = [
        f"data.root={args.cohort}",
        f"data.cache_dir={args.cohort}/cache",
        "trainer=cpu",
        f"trainer.max_epochs={args.epochs}",
        "trainer.enable_progress_bar=false",
        "trainer.deterministic=true",
        "data.num_workers=0",
        "data.prep_workers=1",
        "logger=csv",
        "callbacks.model_checkpoint._target_=immunoplex.training.callbacks.AtomicModelCheckpoint",
        "~callbacks.early_stopping",
        *extra,
    ]
    if args.step_checkpoints:
        step = "+callbacks.step_checkpoint."
        overrides += [
            f"{step}_target_=immunoplex.training.callbacks.AtomicModelCheckpoint",
            f"{step}dirpath=${{paths.output_dir}}/checkpoints",
            f"{step}filename=step-latest",
            f"{step}monitor=null",
            f"{step}save_top_k=1",
            f"{step}every_n_train_steps={args.step_checkpoints}",
        ]
    if args.resume:
        overrides.append(f"ckpt_path={args.resume}")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(Path(args.out))

    from immunoplex.training import run as train_mod

    build = train_mod.build

    def build_with_killer(c: Any) -> Any:
        dm, module, trainer = build(c)
        if args.kill_at_step is not None:
            trainer.callbacks.append(KillAtStep(args.kill_at_step))
        return dm, module, trainer

    train_mod.build = build_with_killer  # type: ignore[assignment]
    summary = train_mod.train(cfg)
    print("SUMMARY " + json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
