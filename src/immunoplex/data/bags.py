"""Patient bags: every tile of every slide of a patient, plus expression and clinical values."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


@dataclass
class SlideTiles:
    """One slide's tiles (N, C, T, T) in panel order, with its intensity statistics."""

    slide_id: str
    tiles: np.ndarray | None  # uint16/float tiles, memory-mapped; None in embedding mode
    coords: np.ndarray  # (N, 2) y, x at the tiling µm/px
    low: np.ndarray  # (C,) intensity statistics used by the normaliser
    high: np.ndarray  # (C,)
    present: np.ndarray  # (C,) bool: the slide has this panel marker
    embeddings: np.ndarray | None = None  # (N, D) two-stage mode

    @property
    def n_tiles(self) -> int:
        return len(self.coords)


@dataclass
class PatientRecord:
    """Everything the model sees for one patient."""

    patient_id: str
    label: int  # 1 responder, 0 non-responder, -1 unlabelled
    treatment: int
    cohort: str
    clinical: np.ndarray  # (K,) float32 standardised values and observed indicators
    expression: np.ndarray | None  # (G,) float32 normalised, None when not measured
    slides: list[SlideTiles] = field(default_factory=list)
    # the survival endpoint the model learns (task=survival|both): NaN / -1 = not recorded
    time: float = math.nan
    event: int = -1
    # a patient feature table row (data.features; NaN = empty value), None without a table
    features: np.ndarray | None = None
    has_features: bool = False

    @property
    def n_tiles(self) -> int:
        return sum(s.n_tiles for s in self.slides)


class PatientBagDataset(Dataset):
    """Indexed by (patient index, seed): the seed picks the training bag deterministically."""

    def __init__(
        self,
        records: Sequence[PatientRecord],
        n_channels: int,
        n_genes: int,
        bag_size: int | None,
        embedding_dim: int | None = None,
    ) -> None:
        self.records = list(records)
        self.n_channels = n_channels
        self.n_genes = n_genes
        self.bag_size = bag_size
        self.embedding_dim = embedding_dim

    def __len__(self) -> int:
        return len(self.records)

    def _choose(self, rec: PatientRecord, seed: int | None) -> list[np.ndarray]:
        """Tile indices per slide: all tiles, or a random bag of `bag_size` while training."""
        counts = [s.n_tiles for s in rec.slides]
        total = sum(counts)
        if seed is None or self.bag_size is None or total <= self.bag_size:
            return [np.arange(c) for c in counts]
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(total, size=self.bag_size, replace=False))
        bounds = np.cumsum([0, *counts])
        return [pick[(pick >= a) & (pick < b)] - a for a, b in zip(bounds[:-1], bounds[1:])]

    def __getitem__(self, key: int | tuple[int, int | None]) -> dict[str, object]:
        idx, seed = key if isinstance(key, tuple) else (key, None)
        rec = self.records[idx]
        chosen = self._choose(rec, seed)
        item: dict[str, object] = {
            "index": idx,
            "label": float(rec.label),
            "time": float(rec.time),
            "event": float(rec.event),
            "treatment": rec.treatment,
            "clinical": torch.from_numpy(rec.clinical),
        }
        if rec.expression is not None:
            item["expression"] = torch.from_numpy(rec.expression)
            item["has_expression"] = True
        else:
            item["expression"] = torch.zeros(self.n_genes)
            item["has_expression"] = False
        if rec.features is not None:
            item["features"] = torch.from_numpy(rec.features)
            item["has_features"] = rec.has_features
        present = np.ones(self.n_channels, dtype=bool)
        parts, lows, highs, embs = [], [], [], []
        for slide, sel in zip(rec.slides, chosen):
            if len(sel) == 0:
                continue
            present &= slide.present
            if slide.embeddings is not None:
                embs.append(np.asarray(slide.embeddings[sel], dtype=np.float32))
            else:
                parts.append(np.ascontiguousarray(slide.tiles[sel]))
            lows.append(np.broadcast_to(slide.low, (len(sel), self.n_channels)))
            highs.append(np.broadcast_to(slide.high, (len(sel), self.n_channels)))
        item["channel_mask"] = torch.from_numpy(present)
        if embs:
            item["embeddings"] = torch.from_numpy(np.concatenate(embs))
        elif parts:
            item["tiles"] = torch.from_numpy(np.concatenate(parts))
            item["tile_low"] = torch.from_numpy(np.concatenate(lows).astype(np.float32))
            item["tile_high"] = torch.from_numpy(np.concatenate(highs).astype(np.float32))
        return item


def collate_bags(items: list[dict[str, object]]) -> dict[str, torch.Tensor]:
    """Stack patients, padding tile bags to the longest one with a tile mask."""
    b = len(items)
    key = "embeddings" if any("embeddings" in it for it in items) else "tiles"
    lengths = [len(it[key]) if key in it else 0 for it in items]  # type: ignore[arg-type]
    n = max(max(lengths), 1)
    batch: dict[str, torch.Tensor] = {
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        "label": torch.tensor([it["label"] for it in items], dtype=torch.float32),
        # survival: NaN time / event -1 = not recorded (items built elsewhere may lack them)
        "time": torch.tensor([it.get("time", math.nan) for it in items], dtype=torch.float32),
        "event": torch.tensor([it.get("event", -1.0) for it in items], dtype=torch.float32),
        "treatment": torch.tensor([it["treatment"] for it in items], dtype=torch.long),
        "clinical": torch.stack([it["clinical"] for it in items]).float(),  # type: ignore[misc]
        "expression": torch.stack([it["expression"] for it in items]).float(),  # type: ignore[misc]
        "has_expression": torch.tensor([it["has_expression"] for it in items], dtype=torch.bool),
        "channel_mask": torch.stack([it["channel_mask"] for it in items]),  # type: ignore[misc]
        "has_image": torch.tensor([n_i > 0 for n_i in lengths], dtype=torch.bool),
    }
    if any("features" in it for it in items):  # a patient feature table (data.features)
        batch["features"] = torch.stack([it["features"] for it in items]).float()  # type: ignore[misc]
        batch["has_features"] = torch.tensor([bool(it["has_features"]) for it in items])
    mask = torch.zeros((b, n), dtype=torch.bool)
    for i, n_i in enumerate(lengths):
        mask[i, :n_i] = True
    batch["tile_mask"] = mask
    ref = next((it for it in items if key in it), None)
    if ref is None:
        return batch
    sample = ref[key]
    padded = torch.zeros((b, n, *sample.shape[1:]), dtype=sample.dtype)  # type: ignore[union-attr]
    for i, it in enumerate(items):
        if key in it:
            padded[i, : lengths[i]] = it[key]  # type: ignore[index]
    batch[key] = padded
    if key == "tiles":
        c = sample.shape[1]  # type: ignore[union-attr]
        for stat, fill in (("tile_low", 0.0), ("tile_high", 1.0)):
            arr = torch.full((b, n, c), fill, dtype=torch.float32)
            for i, it in enumerate(items):
                if stat in it:
                    arr[i, : lengths[i]] = it[stat]  # type: ignore[index]
            batch[stat] = arr
    return batch


class PatientSampler(Sampler[tuple[int, int | None]]):
    """Yields (patient index, bag seed); shards across DDP ranks without duplicating patients.

    Training: an epoch-seeded permutation (or class-balanced draw with replacement), each item with
    its own bag seed, so bags depend only on (seed, epoch, position) - not on workers or resumes.
    Evaluation: every patient exactly once over all ranks (no padding duplicates), bag seed None.
    """

    def __init__(
        self,
        labels: Sequence[int],
        train: bool,
        seed: int = 0,
        balanced: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.labels = np.asarray(labels)
        self.train = train
        self.seed = seed
        self.balanced = balanced
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> np.ndarray:
        n = len(self.labels)
        if not self.train:
            return np.arange(n)
        rng = np.random.default_rng([self.seed, self.epoch])
        if not self.balanced:
            return rng.permutation(n)
        lab = self.labels
        weights = np.zeros(n)
        for cls in (0, 1):
            members = lab == cls
            if members.any():
                weights[members] = 1.0 / members.sum()
        weights /= weights.sum()
        return rng.choice(n, size=n, replace=True, p=weights)

    def __iter__(self) -> Iterator[tuple[int, int | None]]:
        order = self._order()
        if self.train:
            # Equal count per rank (DDP steps must match): wrap around to a multiple.
            per_rank = math.ceil(len(order) / self.world_size)
            order = np.resize(order, per_rank * self.world_size)
        mine = order[self.rank :: self.world_size]
        base = np.random.SeedSequence([self.seed, self.epoch, 7919])
        seeds = base.generate_state(len(order), dtype=np.uint32)[self.rank :: self.world_size]
        for idx, s in zip(mine, seeds):
            yield int(idx), (int(s) if self.train else None)

    def __len__(self) -> int:
        n = len(self.labels)
        if self.train:
            return math.ceil(n / self.world_size)
        return len(range(self.rank, n, self.world_size))
