"""Two-stage training: an aggregator epoch on cached embeddings against an end-to-end epoch on the
same cohort, and embedding extraction (``immunoplex.training.embed.embed_slide``) against pure encoder
inference on device tensors.

    python scripts/bench_twostage.py [--device cuda] [--reps 3] [--quick]

Epochs: the plain training step (as in bench_overhead) over ``dm.train_dataloader()``, end to end
(default config) and two-stage (``experiment=two_stage``: frozen encoder, embeddings cached once
with ``attach_embeddings``; not timed). Extraction: every slide's cached uint16 tiles through
``embed_slide`` (host->device copy, normalisation, encoder, copy back) against the encoder on
pre-normalised float tiles already on the device, same chunk size. Interleaved, medians.
Extraction runs on ``--big-slides`` slides of ``--tiles-per-slide`` tiles (default 4 x 4,096, the
size of real slides; ``--tiles-per-slide 0``: the cohort's own ~48-tile slides).
Last line: ``RATIO two_stage_speedup=<e2e/two-stage epoch> target>=50 PASS|MISS
embed_efficiency=<pure/embed_slide time> target>=0.85 PASS|MISS``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import benchlib
from immunoplex.data.transforms import normalise_tiles
from immunoplex.training.embed import attach_embeddings, build_encoder, embed_slide


def big_slides(small: list[Any], per_slide: int, n: int, out: Path) -> list[Any]:
    """``n`` slides of ``per_slide`` tiles each: the cohort's tiles concatenated in turn, written
    to ``.npy`` files and memory-mapped read-only, as the tile cache serves them."""
    import numpy as np

    from immunoplex.data.bags import SlideTiles

    pool = [st for st in small if st.n_tiles]
    slides, k = [], 0
    for i in range(n):
        parts, have = [], 0
        while have < per_slide:
            st = pool[k % len(pool)]
            k += 1
            parts.append(np.asarray(st.tiles[: per_slide - have]))
            have += len(parts[-1])
        path = out / f"big_{i}.npy"
        np.save(path, np.concatenate(parts))
        ref = pool[i % len(pool)]
        slides.append(
            SlideTiles(
                slide_id=f"big_{i}",
                tiles=np.load(path, mmap_mode="r"),
                coords=np.zeros((per_slide, 2), np.int64),
                low=ref.low,
                high=ref.high,
                present=ref.present,
            )
        )
    return slides


def extrapolate_speedup(
    model: Any, loader: Any, ep: dict[str, list[float]], device: Any, reps: int, full: int
) -> None:
    """Print the end-to-end epoch's tile-encoder share and the speed-up extrapolated to
    ``full``-px tiles: S_full = (E - F + F * (full / T)^2) / S, with E, S the measured end-to-end
    and two-stage epochs and F the encoder's forward + backward per epoch at tile side T
    (convolution cost grows with the pixels; the rest of the step does not)."""
    batch = benchlib.to_device(next(iter(loader)), device)
    x = normalise_tiles(batch)
    b, n = x.shape[:2]
    flat = x.reshape(b * n, *x.shape[2:])
    cm = batch["channel_mask"][:, None, :].expand(b, n, -1).reshape(b * n, -1)
    model.train()

    def enc() -> None:
        model.zero_grad(set_to_none=True)
        model.embed_tiles(flat, cm).float().sum().backward()
        benchlib.sync(device)

    per_step = benchlib.median(benchlib.interleave({"encoder": enc}, reps)["encoder"])
    steps = len(loader)
    e2e, two = benchlib.median(ep["end-to-end"]), benchlib.median(ep["two-stage"])
    f = min(per_step * steps, e2e)
    t = int(x.shape[-1])
    scale = (full / t) ** 2
    s_full = (e2e - f + f * scale) / two
    print(
        f"encoder fwd+bwd {per_step:.3f}s/step x {steps} steps = {f:.2f}s of the {e2e:.2f}s "
        f"end-to-end epoch ({100 * f / e2e:.0f}%); extrapolated to {full}px tiles "
        f"(x{scale:.0f} encoder cost): S = (E - F + F*{scale:.0f}) / S2 = {s_full:.0f}x"
    )


def main() -> None:
    ap = benchlib.parser(__doc__)
    ap.add_argument(
        "--tiles-per-slide",
        type=int,
        default=None,
        help="extraction on slides of this many tiles (realistic size: thousands), built from the "
        "cohort's tiles and memory-mapped like the tile cache (default 4096; quick 1024; 0: the "
        "cohort's own small slides)",
    )
    ap.add_argument("--big-slides", type=int, default=None, help="how many (default 4, quick 2)")
    ap.add_argument("--model", default=None, help="model config for both modes, e.g. resnet50")
    ap.add_argument("--bag-size", type=int, default=None, help="end-to-end bag (default 48)")
    ap.add_argument("--batch-size", type=int, default=None, help="patients per step")
    ap.add_argument(
        "--full-tile", type=int, default=224, help="tile side the speed-up is extrapolated to"
    )
    args = ap.parse_args()
    device = benchlib.start(args)
    reps = args.reps or (1 if args.quick else 3)
    cohort = benchlib.bench_cohort(args)
    out = Path(tempfile.mkdtemp(prefix="twostage-", dir=args.cache))
    base = benchlib.train_overrides(cohort, args.cache, device, out)
    if args.model:
        base.append(f"model={args.model}")
    if args.batch_size:
        base.append(f"data.batch_size={args.batch_size}")
    cfg_e2e = benchlib.compose(base + ([f"data.bag_size={args.bag_size}"] if args.bag_size else []))
    cfg_2s = benchlib.compose([*base, "experiment=two_stage"])
    seed = int(cfg_e2e.seed)

    dm_e2e, model_e2e = benchlib.datamodule_and_model(cfg_e2e)
    dm_2s, model_2s = benchlib.datamodule_and_model(cfg_2s)
    encoder = build_encoder(cfg_2s.model, dm_2s.dims["markers"], None, seed=seed)
    t = time.perf_counter()
    report = attach_embeddings(dm_2s, encoder, device=device)
    print(f"embedding cache: {report} in {time.perf_counter() - t:.1f}s", flush=True)
    model_2s.encoder.load_state_dict(encoder.encoder.state_dict())
    model_2s.encoder.requires_grad_(False)
    plain_e2e = benchlib.PlainTrainer(model_e2e, cfg_e2e, dm_e2e.pos_weight(), device, seed)
    plain_2s = benchlib.PlainTrainer(model_2s, cfg_2s, dm_2s.pos_weight(), device, seed)
    loaders = {"end-to-end": dm_e2e.train_dataloader(), "two-stage": dm_2s.train_dataloader()}
    trainers = {"end-to-end": plain_e2e, "two-stage": plain_2s}
    print(
        f"cohort {cohort.name}: {len(loaders['end-to-end'].dataset)} training patients; "  # type: ignore[arg-type]
        f"bag {cfg_e2e.data.bag_size} (end-to-end) / {cfg_2s.data.bag_size} (two-stage)",
        flush=True,
    )
    epochs = {"end-to-end": 0, "two-stage": 0}

    def epoch_fn(name: str):  # noqa: ANN202
        def run() -> None:
            loader, tr = loaders[name], trainers[name]
            loader.sampler.set_epoch(epochs[name])  # type: ignore[attr-defined]
            for i, batch in enumerate(loader):
                tr.step(benchlib.to_device(batch, device), epochs[name], i)
            tr.epoch_end()
            benchlib.sync(device)
            epochs[name] += 1

        return run

    ep = benchlib.interleave({n: epoch_fn(n) for n in loaders}, reps)
    for name, ts in ep.items():
        print(f"{name:10s} s/epoch {benchlib.spread(ts)}")
    speedup = benchlib.median(ep["end-to-end"]) / benchlib.median(ep["two-stage"])
    extrapolate_speedup(model_e2e, loaders["end-to-end"], ep, device, reps, args.full_tile)

    # ---- extraction throughput -----------------------------------------------------------
    slides = [st for rec in dm_e2e.records.values() for st in rec.slides]
    per_slide = args.tiles_per_slide
    if per_slide is None:
        per_slide = 1024 if args.quick else 4096
    if per_slide:
        slides = big_slides(slides, per_slide, args.big_slides or (2 if args.quick else 4), out)
    elif args.quick:
        slides = slides[:4]
    n_tiles = sum(st.n_tiles for st in slides)
    chunk = int(cfg_2s.data.embeddings.batch_size)
    encoder.to(device)
    prepared = []
    for st in slides:
        tiles = torch.from_numpy(st.tiles[:]).to(device)  # type: ignore[index]
        m = tiles.shape[0]
        x = normalise_tiles(
            {
                "tiles": tiles[None],
                "tile_low": torch.from_numpy(st.low).to(device).expand(1, m, -1),
                "tile_high": torch.from_numpy(st.high).to(device).expand(1, m, -1),
            }
        )[0]
        prepared.append((x, torch.from_numpy(st.present).to(device).expand(m, -1)))

    def via_embed_slide() -> None:
        for st in slides:
            embed_slide(encoder, st, device, batch_size=chunk)
        benchlib.sync(device)

    @torch.no_grad()
    def pure() -> None:
        for x, cm in prepared:
            for s in range(0, x.shape[0], chunk):
                encoder.embed_tiles(x[s : s + chunk], cm[s : s + chunk])
        benchlib.sync(device)

    ex = benchlib.interleave({"embed_slide": via_embed_slide, "pure encoder": pure}, reps)
    for name, ts in ex.items():
        print(
            f"{name:12s} {n_tiles} tiles ({len(slides)} slides): {benchlib.spread(ts)}; "
            f"{n_tiles / benchlib.median(ts):.0f} tiles/s"
        )
    shutil.rmtree(out, ignore_errors=True)  # run logs only
    eff = benchlib.median(ex["pure encoder"]) / benchlib.median(ex["embed_slide"])
    print(f"two-stage speedup {speedup:.1f}x; extraction efficiency {eff:.3f}")
    print(
        benchlib.ratio_line("two_stage_speedup", speedup, 50, ">=")
        + " "
        + benchlib.ratio_line("embed_efficiency", eff, 0.85, ">=").removeprefix("RATIO ")
    )


if __name__ == "__main__":
    main()
