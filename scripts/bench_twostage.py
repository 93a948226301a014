"""Two-stage training: an aggregator epoch on cached embeddings against an end-to-end epoch on the
same cohort, and embedding extraction (``immunoplex.training.embed.embed_slide``) against pure encoder
inference on device tensors.

    python scripts/bench_twostage.py [--device cuda] [--reps 3] [--quick]

Epochs: the plain training step (as in bench_overhead) over ``dm.train_dataloader()``, end to end
(default config) and two-stage (``experiment=two_stage``: frozen encoder, embeddings cached once
with ``attach_embeddings``; not timed). Extraction: every slide's cached uint16 tiles through
``embed_slide`` (host->device copy, normalisation, encoder, copy back) against the encoder on
pre-normalised float tiles already on the device, same chunk size. Interleaved, medians.
Last line: ``RATIO two_stage_speedup=<e2e/two-stage epoch> target>=50 PASS|MISS
embed_efficiency=<pure/embed_slide time> target>=0.85 PASS|MISS``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import torch

import benchlib
from immunoplex.data.transforms import normalise_tiles
from immunoplex.training.embed import attach_embeddings, build_encoder, embed_slide


def main() -> None:
    ap = benchlib.parser(__doc__)
    args = ap.parse_args()
    device = benchlib.start(args)
    reps = args.reps or (1 if args.quick else 3)
    cohort = benchlib.bench_cohort(args)
    out = Path(tempfile.mkdtemp(prefix="twostage-", dir=args.cache))
    base = benchlib.train_overrides(cohort, args.cache, device, out)
    cfg_e2e = benchlib.compose(base)
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

    # ---- extraction throughput -----------------------------------------------------------
    slides = [st for rec in dm_e2e.records.values() for st in rec.slides]
    if args.quick:
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
