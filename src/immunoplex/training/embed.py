"""Two-stage training, stage one: tile embeddings from a frozen encoder, cached on disk.

The cache key covers the slide content, panel, µm/px and tile size (through the tile-cache key),
the intensity normalisation and a fingerprint of the encoder's weights, so a changed encoder or
slide never reuses stale embeddings. Entries are written atomically; a re-run skips finished
slides, and ``shard``/``num_shards`` split a cohort across GPUs or array jobs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from immunoplex.data.bags import SlideTiles
from immunoplex.data.datamodule import ResponseDataModule
from immunoplex.data.transforms import encode_tile_batches, read_ahead, tile_normaliser
from immunoplex.errors import CheckpointError, ConfigError
from immunoplex.tiles.intensity import IntensityNorm
from immunoplex.training.checkpoint import build_model, load_checkpoint
from immunoplex.utils.atomic import save_npy, write_text

EMBED_VERSION = 1


def encoder_fingerprint(module: nn.Module) -> str:
    """Hash of an encoder's weights (names, shapes and bytes) and its structure.

    The structure is the module's ``repr``: layer settings (kernel sizes, pooling) and, through
    ``extra_repr``, settings that are plain attributes (e.g. ``TileMarkerCounts``' smoothing
    width), so changing such a setting in the config never reuses embeddings it did not make.
    """
    h = hashlib.sha1()
    h.update(repr(module).encode())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:24]


def build_encoder(
    model_cfg: Mapping[str, Any],
    markers: list[str],
    encoder_checkpoint: str | None = None,
    seed: int = 0,
) -> nn.Module:
    """The image branch of ``model_cfg`` (its tile encoder), frozen, in eval mode.

    Weights: from ``encoder_checkpoint`` (an immunoplex checkpoint, e.g. an end-to-end run),
    else what the encoder config loads itself (``pretrained_path``), else a seeded random init.
    """
    cfg = dict(model_cfg)
    cfg["modalities"] = ["image"]
    # Only the tile encoder is used: drop parts that need the expression branch.
    cfg["fusion"] = None
    cfg["expression_encoder"] = None
    dims = {
        "n_channels": len(markers),
        "markers": list(markers),
        "n_genes": 0,
        "gene_names": [],
        "n_clinical": 0,
        "treatments": [],
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(cfg, dims)
    if encoder_checkpoint:
        ckpt = load_checkpoint(encoder_checkpoint)
        prefix = "model.encoder."
        state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        if not state:
            raise CheckpointError(f"{encoder_checkpoint}: checkpoint has no image encoder weights")
        try:
            model.encoder.load_state_dict(state)
        except RuntimeError as err:
            raise CheckpointError(
                f"{encoder_checkpoint}: encoder weights do not fit model.encoder "
                f"({str(err).splitlines()[0]})"
            ) from err
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@dataclass(frozen=True)
class EmbeddingCache:
    """``root/<key>.npy`` (N, D) float32 per slide, plus ``root/<key>.json`` provenance."""

    root: Path

    def key(self, tile_key: str, encoder_fp: str, low_pct: float, high_pct: float) -> str:
        spec = {
            "v": EMBED_VERSION,
            "tiles": tile_key,
            "encoder": encoder_fp,
            "intensity": [low_pct, high_pct],
        }
        return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]

    def path(self, key: str) -> Path:
        return Path(self.root) / f"{key}.npy"

    def load(self, key: str) -> np.ndarray | None:
        p = self.path(key)
        if not p.is_file() or not p.with_suffix(".json").is_file():
            return None  # the .json is written last: without it the entry is incomplete
        return np.load(p, mmap_mode="r")

    def save(self, key: str, emb: np.ndarray, provenance: Mapping[str, Any]) -> None:
        root = Path(self.root)
        save_npy(root / f"{key}.npy", np.asarray(emb))
        write_text(root / f"{key}.json", json.dumps(provenance))  # last: marks the entry complete


@torch.no_grad()
def embed_slide(
    model: nn.Module,
    st: SlideTiles,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    autocast: bool = False,
) -> np.ndarray:
    """(N, D) float32 embeddings of one slide's tiles, normalised exactly as in training."""
    assert st.tiles is not None
    n = st.n_tiles
    dim = int(model.tile_embedding_dim)
    cmask = torch.from_numpy(st.present).to(device)
    dev_type = torch.device(device).type
    norm = IntensityNorm(st.low.tolist(), st.high.tolist(), st.present.tolist())
    tile_px = int(np.prod(st.tiles.shape[2:]))
    normalise = tile_normaliser(np.dtype(st.tiles.dtype), norm, torch.device(device), n * tile_px)

    def encode(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=autocast):
            h = model.embed_tiles(x, cmask.expand(x.shape[0], -1))
        return h.float().cpu()  # one batch on the device at a time; the slide's rows on the host

    batches = (
        (slice(a, a + batch_size), normalise(np.asarray(st.tiles[a : a + batch_size])))
        for a in range(0, n, batch_size)
    )
    if n > batch_size:  # read + normalise batch k+1 in a thread while batch k is encoded
        batches = read_ahead(batches)
    return encode_tile_batches(encode, batches, n, "cpu", dim).numpy()


def embed_slides(
    model: nn.Module,
    slides: list[tuple[str, SlideTiles]],
    cache: EmbeddingCache,
    low_pct: float,
    high_pct: float,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    autocast: bool = False,
    progress: bool = False,
) -> dict[str, int]:
    """Attach cached (or newly computed) embeddings to each (tile key, SlideTiles)."""
    if not hasattr(model, "embed_tiles"):
        raise ConfigError("the encoder model has no embed_tiles()")
    fp = encoder_fingerprint(model.encoder)
    model.to(device)
    done = computed = 0
    iterator: Any = slides
    if progress:
        from tqdm import tqdm

        iterator = tqdm(slides, desc="embed", unit="slide")
    for tile_key, st in iterator:
        key = cache.key(tile_key, fp, low_pct, high_pct)
        emb = cache.load(key)
        if emb is None:
            emb = embed_slide(model, st, device, batch_size, autocast)
            cache.save(
                key,
                emb,
                {
                    "slide_id": st.slide_id,
                    "tile_key": tile_key,
                    "encoder": fp,
                    "n_tiles": st.n_tiles,
                },
            )
            emb = cache.load(key)
            computed += 1
        else:
            done += 1
        st.embeddings = emb
    return {"cached": done, "computed": computed}


def attach_embeddings(
    dm: ResponseDataModule,
    encoder: torch.nn.Module,
    device: str | torch.device = "cpu",
    shard: int = 0,
    num_shards: int = 1,
    progress: bool = False,
) -> dict[str, int]:
    """Compute/load cached embeddings for this shard's slides of ``dm`` (after ``setup``); with one
    shard the bags then carry embeddings only. The run calls this: the DataModule only reads."""
    emb_cfg = dm.cfg.embeddings or {}
    cache = EmbeddingCache(Path(emb_cfg.get("cache_dir") or Path(dm.cfg.cache_dir) / "emb"))
    all_slides = [st for rec in dm.records.values() for st in rec.slides]
    mine = sorted(all_slides, key=lambda st: st.slide_id)[shard::num_shards]
    pairs = [(dm.slide_keys[st.slide_id], st) for st in mine]
    report = embed_slides(
        encoder,
        pairs,
        cache,
        dm.cfg.intensity_low,
        dm.cfg.intensity_high,
        device=device,
        batch_size=int(emb_cfg.get("batch_size", 512)),
        autocast=bool(emb_cfg.get("autocast", False)),
        progress=progress,
    )
    if num_shards == 1:
        for st in all_slides:
            st.tiles = None  # bags now carry embeddings only
        dm.embedding_encoder = encoder
    return report
