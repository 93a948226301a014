"""Framework overhead: our Lightning training (ResponseModule + Trainer + configured logging)
against a plain PyTorch loop with the same model, data, seed and per-step RNG re-seeding.

    python scripts/bench_overhead.py [--device cuda] [--reps 3] [--epochs 3] [--quick]

Both sides train from the same initial weights on the same DataLoader (default multimodal model,
synthetic cohort, CSV logger as configured; validation and checkpoint callbacks off, since they
are per-epoch I/O, not step overhead). The time of epochs 2..E is summed per run; the first
epoch of each run is warm-up. Runs alternate Lightning, plain, plain, Lightning...; medians
compared. The plain loop re-seeds torch's RNG and an augmentation generator every step exactly as
``ResponseModule.on_train_batch_start`` does, so the losses must agree.
Last line: ``RATIO overhead=<lightning/plain> target<=1.03 PASS|MISS``.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate

import benchlib
from immunoplex.training.run import _instantiate_group, build


class EpochTimer(L.Callback):
    """Epoch start times and end of training; detached training losses per step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.marks: list[float] = []
        self.losses: list[torch.Tensor] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        benchlib.sync(self.device)
        self.marks.append(time.perf_counter())

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.losses.append(outputs["loss"].detach())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        benchlib.sync(self.device)
        self.marks.append(time.perf_counter())


def main() -> None:
    ap = benchlib.parser(__doc__)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    device = benchlib.start(args)
    reps = args.reps or (1 if args.quick else 3)
    epochs = 2 if args.quick else args.epochs
    if args.quick:
        cohort = benchlib.synthetic_cohort(args.cache, "cohort_tiny", size="tiny")
    else:
        cohort = benchlib.synthetic_cohort(
            args.cache, "cohort_bench", size="default", n_patients=80
        )
    out = Path(tempfile.mkdtemp(prefix="overhead-", dir=args.cache))
    cfg = benchlib.compose(
        benchlib.train_overrides(cohort, args.cache, device, out)
        + ["callbacks=none", "+trainer.limit_val_batches=0", f"trainer.max_epochs={epochs}"]
    )
    seed = int(cfg.seed)
    L.seed_everything(seed)
    dm, module, _ = build(cfg)
    init = copy.deepcopy(module.state_dict())
    losses: dict[str, list[torch.Tensor]] = {"lightning": [], "plain": []}
    n_steps = len(dm.train_dataloader())
    print(
        f"cohort {cohort.name}: {len(dm.patient_ids('train'))} training patients, "
        f"{n_steps} steps/epoch, bag {cfg.data.bag_size}, batch {cfg.data.batch_size}, "
        f"{epochs} epochs per run (epoch 1 = warm-up)",
        flush=True,
    )
    run_i = [0]

    def lightning_run() -> float:
        module.load_state_dict(init)
        timer = EpochTimer(device)
        run_dir = out / f"lightning{run_i[0]}"
        run_i[0] += 1
        cfg.paths.output_dir = str(run_dir)
        loggers = _instantiate_group(cfg.get("logger"))
        trainer: L.Trainer = instantiate(
            cfg.trainer, callbacks=[timer], logger=loggers or False, enable_checkpointing=False
        )
        trainer.fit(module, datamodule=dm)
        losses["lightning"] = timer.losses
        return timer.marks[-1] - timer.marks[1]

    def plain_run() -> float:
        model = copy.deepcopy(module.model)
        model.load_state_dict(
            {k[len("model.") :]: v for k, v in init.items() if k.startswith("model.")}
        )
        plain = benchlib.PlainTrainer(model, cfg, float(module.pos_weight), device, seed)
        loader = dm.train_dataloader()
        got: list[torch.Tensor] = []
        marks = []
        for epoch in range(epochs):
            benchlib.sync(device)
            marks.append(time.perf_counter())
            loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
            for batch_idx, batch in enumerate(loader):
                got.append(plain.step(benchlib.to_device(batch, device), epoch, batch_idx))
            plain.epoch_end()
        benchlib.sync(device)
        marks.append(time.perf_counter())
        losses["plain"] = got
        return marks[-1] - marks[1]

    times: dict[str, list[float]] = {"lightning": [], "plain": []}
    sides = {"lightning": lightning_run, "plain": plain_run}
    for r in range(reps + 1):  # repetition 0 is the warm-up
        for name in ("lightning", "plain") if r % 2 == 0 else ("plain", "lightning"):
            t = sides[name]()
            if r:
                times[name].append(t)
    a = torch.stack(losses["lightning"]).double().cpu()
    b = torch.stack(losses["plain"]).double().cpu()
    diff = float((a - b).abs().max()) if a.shape == b.shape else float("nan")
    for name, ts in times.items():
        print(f"{name:9s} s per {epochs - 1} epochs: {benchlib.spread(ts)}")
    print(
        f"steps per run {len(a)} (lightning) / {len(b)} (plain); "
        f"max |loss difference| over the last run's steps: {diff:.3g}"
    )
    shutil.rmtree(out, ignore_errors=True)  # run logs only
    ratio = benchlib.median(times["lightning"]) / benchlib.median(times["plain"])
    print(benchlib.ratio_line("overhead", ratio, 1.03, "<="))


if __name__ == "__main__":
    main()
