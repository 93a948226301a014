"""Scaling: cost per slide as the synthetic cohort grows 10x, and peak memory against slide size.

    python scripts/bench_scaling.py [--n 6] [--sizes 2000 4000 8000] [--reps 3] [--quick]

Cost per slide: two cohorts of the synthetic generator at the "small" preset (512-px slides),
N and 10N patients. Per repetition, every slide of a cohort is tiled into a fresh tile cache
(``TileCache.load_or_build``), normalised (``slide_tiles``) and embedded with the default
frozen encoder (``embed_slide``); seconds per slide, cohorts interleaved, medians.
Peak memory: for each slide size a child process tiles the slide into a fresh tile cache
(the training path) and reports VmHWM (peak RSS, which counts the memory-mapped output's
file-backed pages) and the peak of RssAnon (sampled every 5 ms) from /proc/self/status; slides
(8 channels, zstd, pyramid) are written tile by tile once (see bench_inference).
Last line: ``RATIO per_slide_10x=<10N/N seconds per slide> target<=1.1 PASS|MISS
peak_rss_growth=<largest/smallest slide VmHWM> target<=1.25 PASS|MISS
peak_anon_growth=<same for peak RssAnon> target<=1.25 PASS|MISS``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

import benchlib
from bench_inference import pyramid_levels, slide_path, write_slide

CHILD = r"""
import json, sys, threading, time
from pathlib import Path
from immunoplex.io.panel import Panel
from immunoplex.tiles.cache import TileCache
from immunoplex.tiles.params import TilingParams

def status():
    d = dict(l.split(":", 1) for l in Path("/proc/self/status").read_text().splitlines())
    return {k: int(d[k].split()[0]) / 1024 for k in ("VmHWM", "RssAnon", "RssFile")}

peak_anon = [0.0]
done = threading.Event()
def sample():
    while not done.is_set():
        peak_anon[0] = max(peak_anon[0], status()["RssAnon"])
        time.sleep(0.005)
th = threading.Thread(target=sample, daemon=True)
th.start()
t = time.perf_counter()
panel = Panel(["DAPI", "PanCK", "CD8", "CD68", "STAB1", "CD31", "CD66b"])
ts = TileCache(sys.argv[2]).load_or_build(sys.argv[1], panel, TilingParams(tile_size=32, mpp=2.0))
n = len(ts.coords)
dt = time.perf_counter() - t
done.set(); th.join()
st = status()
print(json.dumps({"tiles": n, "seconds": dt, "vmhwm_mb": st["VmHWM"],
                  "peak_anon_mb": max(peak_anon[0], st["RssAnon"]), "rss_file_mb": st["RssFile"]}))
"""


def per_slide_cost(cohort: Path, work: Path, device: str) -> tuple[float, int]:
    """Seconds per slide to tile (fresh cache), normalise and embed every slide of a cohort."""
    import torch

    from immunoplex.data.slides import slide_tiles
    from immunoplex.io.panel import Panel
    from immunoplex.tiles.cache import TileCache
    from immunoplex.tiles.params import TilingParams
    from immunoplex.training.embed import build_encoder, embed_slide

    cfg = benchlib.compose([f"data.root={cohort}"])
    d = cfg.data
    panel = Panel(list(d.markers))
    from omegaconf import OmegaConf

    params = TilingParams.from_dict(OmegaConf.to_container(cfg.tiling, resolve=True))
    encoder = build_encoder(cfg.model, list(d.markers), None, seed=0).to(device)
    slides = pd.read_csv(cohort / "manifest.csv")["image"].tolist()
    cache_root = Path(tempfile.mkdtemp(prefix="tiles-", dir=work))
    t = time.perf_counter()
    n_tiles = 0
    for rel in slides:
        ts = TileCache(cache_root).load_or_build(cohort / rel, panel, params)
        st = slide_tiles(ts, Path(rel).stem, float(d.intensity_low), float(d.intensity_high))
        if st.n_tiles:
            embed_slide(encoder, st, device, batch_size=512)
        n_tiles += st.n_tiles
    benchlib.sync(torch.device(device))
    dt = time.perf_counter() - t
    shutil.rmtree(cache_root, ignore_errors=True)
    return dt / len(slides), n_tiles


def main() -> None:
    ap = benchlib.parser(__doc__)
    ap.add_argument("--n", type=int, default=None, help="patients in the small cohort (N)")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="slide sides for memory")
    ap.add_argument(
        "--levels",
        type=int,
        default=0,
        help="pyramid levels (default 0: halve down to < 1024 px, like real slides)",
    )
    args = ap.parse_args()
    benchlib.start(args)
    n = args.n or (4 if args.quick else 6)
    reps = args.reps or (1 if args.quick else 3)
    sizes = args.sizes or ([512, 1024] if args.quick else [2000, 4000, 8000])
    preset = "tiny" if args.quick else "small"
    cohorts = {
        f"N={n}": benchlib.synthetic_cohort(
            args.cache, f"scale_{preset}_{n}", size=preset, n_patients=n
        ),
        f"10N={10 * n}": benchlib.synthetic_cohort(
            args.cache, f"scale_{preset}_{10 * n}", size=preset, n_patients=10 * n
        ),
    }
    work = Path(tempfile.mkdtemp(prefix="scaling-", dir=args.cache))
    info: dict[str, int] = {}

    def side(name: str):  # noqa: ANN202
        def run() -> None:
            _, info[name] = per_slide_cost(cohorts[name], work, args.device)

        return run

    times = benchlib.interleave({k: side(k) for k in cohorts}, reps)
    per_slide = {}
    for name, ts in times.items():
        n_slides = len(pd.read_csv(cohorts[name] / "manifest.csv"))
        per_slide[name] = benchlib.median(ts) / n_slides
        print(
            f"{name:8s} {n_slides:3d} slides, {info[name]:5d} tiles: s/cohort "
            f"{benchlib.spread(ts)}; {per_slide[name]:.3f} s/slide",
            flush=True,
        )
    a, b = per_slide.values()

    peaks, anons = [], []
    for size in sizes:
        t = time.perf_counter()
        levels = args.levels or pyramid_levels(size)
        slide = write_slide(slide_path(args.cache, size, levels), size, levels)
        wt = time.perf_counter() - t
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(slide), str(work / f"mem{size}")],
            capture_output=True,
            text=True,
            check=True,
        )
        res = json.loads(out.stdout.strip().splitlines()[-1])
        peaks.append(res["vmhwm_mb"])
        anons.append(res["peak_anon_mb"])
        print(
            f"slide {size}x{size}x8, {levels} levels ({slide.stat().st_size / 1e6:.0f} MB, ready in {wt:.0f}s): "
            f"{res['tiles']} tiles in {res['seconds']:.1f}s; VmHWM {res['vmhwm_mb']:.0f} MB, "
            f"peak RssAnon (sampled every 5 ms) {res['peak_anon_mb']:.0f} MB, RssFile at exit "
            f"{res['rss_file_mb']:.0f} MB",
            flush=True,
        )
    shutil.rmtree(work, ignore_errors=True)
    print(
        benchlib.ratio_line("per_slide_10x", b / a, 1.1, "<=")
        + " "
        + benchlib.ratio_line("peak_rss_growth", peaks[-1] / peaks[0], 1.25, "<=").removeprefix(
            "RATIO "
        )
        + " "
        + benchlib.ratio_line("peak_anon_growth", anons[-1] / anons[0], 1.25, "<=").removeprefix(
            "RATIO "
        )
    )


if __name__ == "__main__":
    main()
