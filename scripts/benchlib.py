"""Shared helpers for the ``scripts/bench_*.py`` benchmarks.

Every benchmark measures its two sides in one process, interleaving repetitions (A, B, A, B...)
after a warm-up and comparing medians, because the machines these run on are shared and noisy.
The last line of every benchmark is ``RATIO name=value target<=x PASS|MISS`` (see ``ratio_line``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("IMMUNOPLEX_BENCH_DIR", "/tmp/immunoplex-bench"))


def machine() -> dict[str, Any]:
    """What BENCHMARKS.md records about the machine: cores, CPU model, RAM, torch, GPU."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": ram_gb,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": gpu,
    }


def print_machine() -> None:
    m = machine()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in m.items()), flush=True)
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]), flush=True)


def parser(
    description: str | None, quick_help: str = "tiny setting for the smoke test"
) -> argparse.ArgumentParser:
    """Argument parser with the flags every benchmark shares."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--reps", type=int, default=None, help="interleaved repetitions per side")
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--cache", type=Path, default=CACHE, help="cache dir (outside the repo)")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's; 1 on an oversubscribed host)",
    )
    return ap


def start(args: argparse.Namespace) -> torch.device:
    """Apply --threads, print the machine and command, return the requested device."""
    if args.threads:
        torch.set_num_threads(args.threads)
    print_machine()
    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    return device_of(args.device)


def device_of(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but no GPU is visible")
    return torch.device(name)


def sync(device: torch.device | str) -> None:
    """Wait for queued device work so wall-clock timings are honest."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleave(
    sides: Mapping[str, Callable[[], Any]], reps: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Run each side ``warmup`` times, then ``reps`` times alternating; seconds per call.

    The order alternates between repetitions (A,B then B,A) so that neither side always runs
    right after the other's cache/allocator state.
    """
    names = list(sides)
    for _ in range(warmup):
        for n in names:
            sides[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            t = time.perf_counter()
            sides[n]()
            times[n].append(time.perf_counter() - t)
    return times


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: Sequence[float]) -> str:
    """Median and min-max, for the noise note."""
    return f"median {median(xs):.4g} (min {min(xs):.4g}, max {max(xs):.4g}, n={len(xs)})"


def ratio_line(name: str, value: float, target: float, op: str) -> str:
    """``RATIO name=1.012 target<=1.03 PASS``; ``op`` is ``<=`` or ``>=``."""
    ok = value <= target if op == "<=" else value >= target
    return f"RATIO {name}={value:.3f} target{op}{target:g} {'PASS' if ok else 'MISS'}"


def synthetic_cohort(
    cache: Path, name: str, size: str = "tiny", seed: int = 0, **overrides: Any
) -> Path:
    """A synthetic cohort generated once into ``cache/name`` (reused when complete)."""
    from immunoplex.synth import generate_cohort

    out = cache / name
    if not (out / "manifest.csv").is_file() or not (out / ".bench_done").is_file():
        generate_cohort(
            out, size=size, seed=seed, workers=os.cpu_count(), progress=False, **overrides
        )
        (out / ".bench_done").write_text("ok\n")
    return out


def compose(overrides: Sequence[str], config: str = "train") -> Any:
    """The shipped Hydra config composed with ``overrides`` (as the tests do)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from immunoplex.paths import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name=config, overrides=list(overrides))


def train_overrides(cohort: Path, cache: Path, device: torch.device, out: Path) -> list[str]:
    """CPU-or-GPU training overrides on a cohort with tile caches outside the repo."""
    return [
        f"data.root={cohort}",
        f"data.cache_dir={cache / 'tilecache' / cohort.name}",
        f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
        "trainer.enable_progress_bar=false",
        "data.num_workers=0",
        "data.prep_workers=2",
        f"paths.output_dir={out}",
    ]


def step_seed(seed: int, epoch: int, batch_idx: int, rank: int = 0) -> int:
    """Same formula as ``ResponseModule._step_seed`` (per-step RNG re-seeding)."""
    return (seed * 1_000_003 + epoch * 10_007 + batch_idx) * (rank + 1) % (2**63 - 1)


class PlainTrainer:
    """A bare PyTorch training step equivalent to ``ResponseModule.training_step`` + Trainer.

    Re-seeds torch's RNG and the augmentation generator each step as the module does, normalises
    and augments on the device, BCE with ``pos_weight`` on labelled patients, gradient-norm
    clipping, optimiser step. No metrics, no logging.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: Any,
        pos_weight: float,
        device: torch.device,
        seed: int = 0,
    ) -> None:
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        from immunoplex.data.transforms import AugmentConfig

        self.model = model.to(device).train()
        self.device = device
        self.seed = seed
        self.aug = AugmentConfig(**OmegaConf.to_container(cfg.module.augment, resolve=True))  # type: ignore[arg-type]
        self.pos_weight = torch.tensor(float(pos_weight), device=device)
        self.clip = cfg.trainer.get("gradient_clip_val")
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = instantiate(cfg.optimizer)(params=self.params)
        sched = (
            OmegaConf.to_container(cfg.scheduler, resolve=True) if cfg.get("scheduler") else None
        )
        self.sched = None
        if sched:
            sched = {k: v for k, v in sched.items() if k not in ("interval", "monitor")}  # type: ignore[union-attr]
            self.sched = instantiate(OmegaConf.create(sched))(optimizer=self.opt)

    def step(self, batch: dict[str, torch.Tensor], epoch: int, batch_idx: int) -> torch.Tensor:
        import torch.nn.functional as F

        from immunoplex.data.transforms import augment_tiles, normalise_tiles

        s = step_seed(self.seed, epoch, batch_idx)
        torch.manual_seed(s)
        batch = dict(batch)
        if "tiles" in batch:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(s)
            x, cmask = augment_tiles(
                normalise_tiles(batch), batch["tile_mask"], batch["channel_mask"], self.aug, gen
            )
            batch["tiles"], batch["channel_mask"] = x, cmask
        logit = self.model(batch)["logit"].float()
        label = batch["label"]
        ok = label >= 0
        loss = F.binary_cross_entropy_with_logits(logit[ok], label[ok], pos_weight=self.pos_weight)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, float(self.clip))
        self.opt.step()
        return loss.detach()

    def epoch_end(self) -> None:
        if self.sched is not None:
            self.sched.step()


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def datamodule_and_model(cfg: Any) -> tuple[Any, torch.nn.Module]:
    """Prepared data module and a freshly seeded ResponseModel from a composed config."""
    from omegaconf import OmegaConf

    from immunoplex.data.datamodule import ResponseDataModule, data_config_from
    from immunoplex.training.checkpoint import build_model

    dm = ResponseDataModule(data_config_from(cfg.data, int(cfg.seed)))
    dm.prepare_data()
    dm.setup()
    torch.manual_seed(int(cfg.seed))
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True), dm.dims)  # type: ignore[arg-type]
    return dm, model


def bench_cohort(args: Any) -> Path:
    """The cohort the training benchmarks use: 80 patients at the default slide size."""
    if args.quick:
        return synthetic_cohort(args.cache, "cohort_tiny", size="tiny")
    return synthetic_cohort(args.cache, "cohort_bench", size="default", n_patients=80)
