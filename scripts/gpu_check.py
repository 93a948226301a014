"""The Python parts of ``scripts/gpu_check.sh`` (issue 19.5), one subcommand each:

    python scripts/gpu_check.py precision --device cuda [--quick]   # bf16+channels_last+compile vs fp32
    python scripts/gpu_check.py syncs --device cuda [--quick]       # steps under sync-debug "error"
    python scripts/gpu_check.py ddp --device cuda --devices 1       # trainer=ddp
    python scripts/gpu_check.py embed --device cuda --slides 1000   # embedding throughput, tiles/s

Each prints ``FIGURE name=value`` lines (gpu_check.sh collects them into summary.tsv) and exits
non-zero when its check fails. Cohort: the benchmarks' tiny synthetic cohort in ``--cache``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402


class EpochTimer:
    """Lightning callback: wall time of every training epoch (the first one is the warm-up:
    torch.compile's compilation, cuDNN autotuning, worker start-up)."""

    def __init__(self) -> None:
        import lightning as L

        timer = self

        class _CB(L.Callback):
            def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
                benchlib.sync(module.device)
                timer._t = time.perf_counter()

            def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
                benchlib.sync(module.device)
                timer.epochs.append(time.perf_counter() - timer._t)

        self.epochs: list[float] = []
        self._t = 0.0
        self.callback = _CB()


def _overrides(args: Any, out: Path) -> list[str]:
    cohort = benchlib.synthetic_cohort(args.cache, "cohort_tiny", size="tiny")
    gpu = args.device.startswith("cuda")
    over = benchlib.train_overrides(cohort, args.cache, torch.device(args.device), out)
    over += [
        "trainer=gpu" if gpu else "trainer=cpu",
        "callbacks=none",
        "logger=csv",
        f"trainer.max_epochs={args.epochs}",
        "trainer.enable_progress_bar=false",
        "data.prep_workers=2",
        f"data.num_workers={args.workers}",
        f"data.persistent_workers={args.workers > 0}",
    ]
    return over


def _fit(over: list[str], sync_debug: bool = False) -> dict[str, Any]:
    from immunoplex.training.run import build
    from immunoplex.training.syncs import watch_steps

    cfg = benchlib.compose(over)
    torch.manual_seed(int(cfg.seed))
    dm, module, trainer = build(cfg)
    timer = EpochTimer()
    trainer.callbacks.append(timer.callback)
    counter = watch_steps(module, sync_debug=sync_debug)
    trainer.fit(module, datamodule=dm)
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return {"metrics": m, "epochs": timer.epochs, "syncs": counter, "steps": trainer.global_step}


def cmd_precision(args: Any) -> int:
    """bf16-mixed + channels_last (+ torch.compile on GPU) against fp32, same seed, 2 epochs."""
    out = Path(args.out)
    gpu = args.device.startswith("cuda")
    fast = _overrides(args, out / "fast") + [
        "trainer.precision=bf16-mixed",
        "module.channels_last=true",
        f"module.compile={str(gpu and not args.no_compile).lower()}",
    ]
    ref = _overrides(args, out / "fp32") + [
        "trainer.precision=32-true",
        "module.channels_last=false",
        "module.compile=false",
    ]
    a, b = _fit(fast), _fit(ref)
    la, lb = a["metrics"]["train/loss"], b["metrics"]["train/loss"]
    rel = abs(la - lb) / max(abs(lb), 1e-8)
    for name, r in (("bf16", a), ("fp32", b)):
        ep = r["epochs"]
        after = sum(ep[1:]) / max(len(ep) - 1, 1) if len(ep) > 1 else float("nan")
        loss, val = r["metrics"]["train/loss"], r["metrics"].get("val/loss", float("nan"))
        print(f"{name}: epochs {[round(e, 2) for e in ep]} s (first: warm-up), loss {loss:.4f}")
        print(f"{name}: val loss {val:.4f}")
        print(f"FIGURE {name}_epoch_s_after_warmup={after:.3f}")
        print(f"FIGURE {name}_warmup_epoch_s={ep[0]:.3f}")
    print(f"FIGURE train_loss_bf16={la:.5f}")
    print(f"FIGURE train_loss_fp32={lb:.5f}")
    print(f"FIGURE train_loss_rel_diff={rel:.4f}")
    ok = rel <= args.tolerance
    print(f"CHECK precision loss within {args.tolerance:.0%} of fp32: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def cmd_syncs(args: Any) -> int:
    """training/validation steps counted on CPU, run under sync-debug "error" on CUDA."""
    r = _fit(_overrides(args, Path(args.out) / "syncs"), sync_debug=True)
    c = r["syncs"]
    print(f"steps run inside the counter: {c.calls}; would-be syncs: {dict(c.counts)}")
    print(f"FIGURE step_syncs={c.total}")
    ok = c.total == 0 and c.calls > 0
    mode = "sync_debug_mode=error" if args.device.startswith("cuda") else "CPU count"
    print(f"CHECK no host-device sync in the steps ({mode}): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def cmd_ddp(args: Any) -> int:
    gpu = args.device.startswith("cuda")
    over = _overrides(args, Path(args.out) / f"ddp{args.devices}") + [
        "trainer=ddp",
        f"trainer.devices={args.devices}",
        f"data.num_workers={args.workers}",
    ]
    if not gpu:
        over += [
            "trainer.accelerator=cpu",
            "trainer.precision=32-true",
            "trainer.sync_batchnorm=false",
            "module.channels_last=false",
        ]
    from immunoplex.training.run import train

    t = time.perf_counter()
    summary = train(benchlib.compose(over))
    dt = time.perf_counter() - t
    print(f"FIGURE ddp{args.devices}_fit_s={dt:.1f}")
    ok = Path(summary["checkpoint"]).is_file()
    print(f"CHECK trainer=ddp trainer.devices={args.devices}: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def cmd_embed(args: Any) -> int:
    """``--slides`` slides (the cohort's tile caches in turn, memory-mapped) through
    ``embed_slide`` with the default frozen encoder: tiles/s, bf16 autocast on CUDA."""
    from immunoplex.training.embed import build_encoder, embed_slide

    device = benchlib.device_of(args.device)
    cfg = benchlib.compose(_overrides(args, Path(args.out) / "embed"))
    dm, _ = benchlib.datamodule_and_model(cfg)
    pool = [st for rec in dm.records.values() for st in rec.slides if st.n_tiles]
    enc = build_encoder(cfg.model, dm.dims["markers"], None, seed=0).to(device).eval()
    slides = [pool[i % len(pool)] for i in range(args.slides)]
    auto = device.type == "cuda"
    embed_slide(enc, slides[0], device, 512, auto)  # warm-up
    benchlib.sync(device)
    t = time.perf_counter()
    n = 0
    for st in slides:
        embed_slide(enc, st, device, 512, auto)
        n += st.n_tiles
    benchlib.sync(device)
    dt = time.perf_counter() - t
    print(f"{args.slides} slides, {n} tiles in {dt:.1f}s")
    print(f"FIGURE embed_{args.slides}_slides_tiles_per_s={n / dt:.0f}")
    return 0


def main() -> int:
    ap = benchlib.parser(__doc__)
    ap.add_argument("command", choices=["precision", "syncs", "ddp", "embed"])
    ap.add_argument("--out", default="/tmp/immunoplex-gpu-check", help="run folders")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (GPU 4, CPU 0)")
    ap.add_argument("--devices", type=int, default=1, help="ddp: devices")
    ap.add_argument("--slides", type=int, default=1000, help="embed: slides")
    ap.add_argument("--no-compile", action="store_true", help="precision: without torch.compile")
    ap.add_argument("--tolerance", type=float, default=0.1, help="precision: relative loss diff")
    args = ap.parse_args()
    benchlib.start(args)
    if args.workers is None:
        args.workers = 4 if args.device.startswith("cuda") else 0
    if args.quick and args.command == "embed":
        args.slides = min(args.slides, 20)
    return {"precision": cmd_precision, "syncs": cmd_syncs, "ddp": cmd_ddp, "embed": cmd_embed}[
        args.command
    ](args)


if __name__ == "__main__":
    raise SystemExit(main())
