"""Device-side tile transforms: intensity normalisation and training augmentation.

Tiles travel to the device as uint16 (half the bytes of float16, a quarter of float32) and are
converted, normalised and augmented there, so the DataLoader never becomes the bottleneck.
Augmentation randomness comes from an explicit generator so a resumed run replays it exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from immunoplex.tiles.intensity import IntegerLUT, IntensityNorm, normalise_torch

T = TypeVar("T")
_END = object()


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation strengths (all per tile or per patient, never per batch)."""

    flips: bool = True
    rot90: bool = True
    intensity_jitter: float = 0.15  # std of the log-gain per patient and channel
    channel_dropout: float = 0.0  # probability of blanking a whole channel for a patient


def _dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 flips/rotations of a square tile batch (..., H, W)."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


_DIHEDRAL_INDEX: dict[tuple[int, str], torch.Tensor] = {}


def _dihedral_index(t: int, device: torch.device) -> torch.Tensor:
    """(8, T*T) source pixel of every output pixel for each of the 8 dihedral codes."""
    key = (t, str(device))
    idx = _DIHEDRAL_INDEX.get(key)
    if idx is None:
        grid = torch.arange(t * t, dtype=torch.long).reshape(t, t)
        idx = torch.stack([_dihedral(grid, code).reshape(-1) for code in range(8)]).to(device)
        _DIHEDRAL_INDEX[key] = idx
    return idx


def _dihedral_gather(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Tile (b, n) of x (B, N, C, T, T) turned by its own dihedral code k[b, n], in one gather:
    no per-code selection, so no host-device synchronisation (same result as ``_dihedral``)."""
    b, n, c, t, w = x.shape
    if t != w:
        raise ValueError(f"dihedral augmentation needs square tiles, got {t}x{w}")
    idx = _dihedral_index(t, x.device)[k]  # (B, N, T*T)
    flat = x.reshape(b, n, c, t * t)
    out = torch.gather(flat, 3, idx[:, :, None, :].expand(b, n, c, t * t))
    return out.reshape(b, n, c, t, t)


def normalise_tiles(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """uint16 tiles (B, N, C, T, T) -> float32 in [0, 1] with per-tile channel statistics."""
    tiles = batch["tiles"]
    low = batch["tile_low"][..., None, None]
    high = batch["tile_high"][..., None, None]
    return normalise_torch(tiles.to(torch.float32), low, high)


def tile_normaliser(
    dtype: np.dtype, norm: IntensityNorm, device: torch.device, n_pixels: int | None = None
) -> Callable[[np.ndarray], torch.Tensor]:
    """Raw (M, C, T, T) numpy tiles -> normalised float32 tiles on ``device``, exactly as training
    normalises them (``normalise_tiles``).

    Integer tiles use a lookup table (:class:`IntegerLUT`) when it pays for itself: building it
    normalises ceil(high) + 1 values per channel, so it is used when that is at most half of the
    values to normalise (``n_pixels`` per channel; None: unknown, assume many).
    """
    if IntegerLUT.supports(dtype) and (
        n_pixels is None or 2 * IntegerLUT.table_size(dtype, norm.high) <= n_pixels * len(norm.high)
    ):
        return IntegerLUT(dtype, norm.low, norm.high, device=device)
    low = torch.tensor(norm.low, dtype=torch.float32, device=device)
    high = torch.tensor(norm.high, dtype=torch.float32, device=device)

    def elementwise(tiles: np.ndarray) -> torch.Tensor:
        if not tiles.flags.writeable:  # a read-only memory map: torch wants its own buffer
            tiles = np.array(tiles)
        m = tiles.shape[0]
        batch = {
            "tiles": torch.from_numpy(tiles).to(device)[None],
            "tile_low": low.expand(1, m, -1),
            "tile_high": high.expand(1, m, -1),
        }
        return normalise_tiles(batch)[0]

    return elementwise


def augment_tiles(
    x: torch.Tensor,
    tile_mask: torch.Tensor,
    channel_mask: torch.Tensor,
    cfg: AugmentConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment normalised tiles (B, N, C, T, T); returns tiles and the updated channel mask."""
    b, n, c = x.shape[:3]
    dev = x.device
    if cfg.flips or cfg.rot90:
        choices = 8 if cfg.flips else 4
        k = torch.randint(0, choices, (b, n), generator=generator, device=dev)
        if not cfg.rot90:
            k = k * 4  # 0 or 4: identity or flip
        x = _dihedral_gather(x, k)
    if cfg.intensity_jitter > 0:
        gain = torch.exp(
            torch.randn((b, 1, c, 1, 1), generator=generator, device=dev) * cfg.intensity_jitter
        )
        x = (x * gain).clamp_(0.0, 1.0)
    if cfg.channel_dropout > 0:
        keep = torch.rand((b, c), generator=generator, device=dev) >= cfg.channel_dropout
        # Never drop every channel of a patient.
        keep = keep | ~keep.any(dim=1, keepdim=True)
        channel_mask = channel_mask & keep
        x = x * keep[:, None, :, None, None].to(x.dtype)
    x = x * tile_mask[:, :, None, None, None].to(x.dtype)
    return x, channel_mask


def read_ahead(items: Iterable[T]) -> Iterator[T]:
    """``items`` with the next one produced in a background thread while the caller works on
    this one (reading/normalising batch k+1 while batch k is encoded); one item ahead."""
    it = iter(items)
    with ThreadPoolExecutor(1, thread_name_prefix="immunoplex-ahead") as pool:
        pending = pool.submit(next, it, _END)
        while True:
            item = pending.result()
            if item is _END:
                return
            pending = pool.submit(next, it, _END)
            yield item  # type: ignore[misc]


def encode_tile_batches(
    encode: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[slice | np.ndarray, torch.Tensor]],
    n: int,
    device: torch.device | str,
    dim: int = 1,
) -> torch.Tensor:
    """The one tile -> embedding loop (training's embedding cache, streamed and held inference).

    ``batches`` yields ``(rows, normalised tiles (M, C, T, T))`` in any order (a generator, so a
    caller can read the next batch while this one is encoded and hold one batch at a time);
    ``encode`` maps tiles to (M, D). Returns the (n, D) embeddings, ``rows`` placing each batch
    ((0, ``dim``) zeros when there are no tiles).
    """
    out: torch.Tensor | None = None
    for rows, x in batches:
        h = encode(x)
        if out is None:
            out = torch.empty((n, h.shape[1]), dtype=h.dtype, device=h.device)
        if isinstance(rows, np.ndarray):
            out[torch.from_numpy(rows).to(h.device)] = h
        else:
            out[rows] = h
    if out is None:
        return torch.zeros((0, dim), device=device)
    return out
