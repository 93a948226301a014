"""Does memory grow with cohort size when tiling and embedding? (It must not.)

    python scripts/mem_cohort.py [--slides 1000] [--work /tmp/immunoplex_mem/cohort]

Writes N small distinct synthetic OME-TIFFs (7 markers, 192 x 192 px), then in one child process
tiles each into the tile cache and embeds it with the default SmallCNN encoder into the embedding
cache, sampling VmRSS after 10%, 50% and 100% of the slides. Flat numbers = no growth.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

MARKERS = ["DAPI", "PanCK", "CD8", "CD68", "STAB1", "CD31", "CD66b"]


def _rss_kb(field: str) -> int:
    line = next(
        ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith(field)
    )
    return int(line.split()[1])


def write_slides(root: Path, n: int) -> list[Path]:
    import tifffile

    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:192, :192]
    disk = np.hypot(yy - 96, xx - 96) < 70
    paths = []
    for i in range(n):
        p = root / f"s{i:04d}.ome.tif"
        paths.append(p)
        if p.exists():
            continue
        rng = np.random.default_rng(i)
        img = (disk * rng.integers(200, 900, (7, 192, 192))).astype(np.uint16)
        meta = {
            "axes": "CYX",
            "Channel": {"Name": MARKERS},
            "PhysicalSizeX": 1.0,
            "PhysicalSizeY": 1.0,
        }
        tifffile.imwrite(p, img, ome=True, metadata=meta, photometric="minisblack")
    return paths


def child(work: Path, n: int) -> None:
    from omegaconf import OmegaConf

    from immunoplex.data.slides import slide_tiles
    from immunoplex.io.panel import Panel
    from immunoplex.paths import config_dir
    from immunoplex.tiles.cache import TileCache
    from immunoplex.tiles.params import TilingParams
    from immunoplex.training.checkpoint import build_model
    from immunoplex.training.embed import EmbeddingCache, embed_slides, encoder_fingerprint

    cfg = OmegaConf.to_container(OmegaConf.load(config_dir() / "model" / "mean_mil.yaml"))
    dims = {
        "n_channels": 7,
        "markers": MARKERS,
        "n_genes": 0,
        "gene_names": [],
        "n_clinical": 0,
        "treatments": [],
    }
    cfg["modalities"] = ["image"]  # type: ignore[index]
    model = build_model(cfg, dims).eval()  # type: ignore[arg-type]
    encoder_fingerprint(model.encoder)
    cache = TileCache(work / "tiles")
    emb = EmbeddingCache(work / "emb")
    panel, params = Panel(MARKERS), TilingParams(tile_size=32, mpp=2.0)
    slides = sorted((work / "slides").glob("*.ome.tif"))[:n]
    marks = {max(1, n // 10), n // 2, n}
    samples = {}
    for i, path in enumerate(slides, 1):
        ts = cache.load_or_build(path, panel, params)
        st = slide_tiles(ts, path.name, 1.0, 99.5)
        embed_slides(model, [(ts.key, st)], emb, 1.0, 99.5, batch_size=256)
        st.tiles = st.embeddings = None  # type: ignore[attr-defined]
        if i in marks:
            samples[i] = _rss_kb("VmRSS")
    print(json.dumps({"rss_kB_after": samples, "VmHWM_kB": _rss_kb("VmHWM")}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slides", type=int, default=1000)
    ap.add_argument("--work", default="/tmp/immunoplex_mem/cohort")
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    work = Path(args.work)
    if args.child:
        child(work, args.slides)
        return
    write_slides(work / "slides", args.slides)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", "--slides", str(args.slides), "--work", str(work)],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"tile+embed {args.slides} slides: RSS (MiB) after "
        + ", ".join(f"{k} slides {v / 1024:.0f}" for k, v in res["rss_kB_after"].items())
        + f"; peak {res['VmHWM_kB'] / 1024:.0f} MiB"
    )


if __name__ == "__main__":
    main()
