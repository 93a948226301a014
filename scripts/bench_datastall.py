"""Data stall: training throughput with the real DataLoader (cached tiles, ResponseDataModule)
against the same model and step fed one batch tensor already on the device.

    python scripts/bench_datastall.py [--device cuda] [--workers N] [--reps 3] [--quick]

Side "loader": one epoch over ``dm.train_dataloader()`` (bags cut from the memory-mapped tile
cache, collated, copied to the device) with the plain training step. Side "on-device": the same
number of steps on a single batch that already sits on the device. Epochs alternate; medians.
Last line: ``RATIO data_stall=<on-device time / loader time> target>=0.9 PASS|MISS`` (the
loader's throughput as a fraction of the compute-only throughput).
"""

from __future__ import annotations

import shutil
import tempfile
import time

import benchlib


def main() -> None:
    ap = benchlib.parser(__doc__)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (config: 0)")
    args = ap.parse_args()
    device = benchlib.start(args)
    reps = args.reps or (1 if args.quick else 3)
    cohort = benchlib.bench_cohort(args)
    out = tempfile.mkdtemp(prefix="stall-", dir=args.cache)
    over = benchlib.train_overrides(cohort, args.cache, device, benchlib.Path(out))
    if args.workers is not None:
        over += [f"data.num_workers={args.workers}", "data.persistent_workers=true"]
    cfg = benchlib.compose(over)
    dm, model = benchlib.datamodule_and_model(cfg)
    plain = benchlib.PlainTrainer(model, cfg, dm.pos_weight(), device, int(cfg.seed))
    loader = dm.train_dataloader()
    fixed = benchlib.to_device(next(iter(loader)), device)
    n_steps = len(loader)
    n_patients = len(loader.dataset)  # type: ignore[arg-type]
    print(
        f"cohort {cohort.name}: {n_patients} training patients, {n_steps} steps/epoch, "
        f"bag {cfg.data.bag_size}, batch {cfg.data.batch_size}, "
        f"workers {cfg.data.num_workers}",
        flush=True,
    )
    epoch = [0]

    def with_loader() -> None:
        loader.sampler.set_epoch(epoch[0])  # type: ignore[attr-defined]
        for i, batch in enumerate(loader):
            plain.step(benchlib.to_device(batch, device), epoch[0], i)
        benchlib.sync(device)
        epoch[0] += 1

    def on_device() -> None:
        for i in range(n_steps):
            plain.step(fixed, 0, i)
        benchlib.sync(device)

    t = time.perf_counter()
    times = benchlib.interleave({"loader": with_loader, "on-device": on_device}, reps)
    for name, ts in times.items():
        med = benchlib.median(ts)
        print(
            f"{name:10s} s/epoch {benchlib.spread(ts)}; {n_patients / med:.1f} patients/s, "
            f"{n_patients * cfg.data.bag_size / med:.0f} tiles/s"
        )
    print(f"total {time.perf_counter() - t:.0f}s")
    shutil.rmtree(out, ignore_errors=True)  # run logs only
    ratio = benchlib.median(times["on-device"]) / benchlib.median(times["loader"])
    print(benchlib.ratio_line("data_stall", ratio, 0.9, ">="))


if __name__ == "__main__":
    main()
