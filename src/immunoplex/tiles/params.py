"""Tiling parameters (physical: µm/px, tile size, tissue fraction) and the tile grid value."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from immunoplex.errors import ConfigError

NUCLEAR_MARKERS = ("DAPI",)  # canonical name; HH3/Nuc/Hoechst are its aliases
STRIP_BYTES = 1 << 20  # default source bytes per strip of read_downsampled
CHUNK_BYTES = 4 << 20  # default source bytes per chunk of iter_tile_chunks


@dataclass(frozen=True)
class TilingParams:
    """How a slide is cut into tiles (all sizes in pixels at ``mpp``)."""

    tile_size: int = 32
    mpp: float = 2.0
    stride: int | None = None
    min_tissue: float = 0.5
    tissue_markers: tuple[str, ...] = NUCLEAR_MARKERS
    tissue_all_channels: bool = True  # average the nuclear signal with all channels' mean
    mask_mpp: float | None = None  # None: tile footprint / 8, at most mask_max_side px per side
    mask_max_side: int = 2048  # the mask's longest side (bounds tissue-detection memory)
    smooth_um: float = 16.0
    min_object_um2: float = 4000.0
    max_hole_um2: float = 20000.0

    def __post_init__(self) -> None:
        if self.tile_size < 1:
            raise ConfigError(f"tile_size must be >= 1, got {self.tile_size}")
        if not self.mpp > 0:
            raise ConfigError(f"tiling mpp must be > 0, got {self.mpp}")
        if self.stride is not None and self.stride < 1:
            raise ConfigError(f"stride must be >= 1, got {self.stride}")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ConfigError(f"min_tissue must be in [0, 1], got {self.min_tissue}")
        if self.mask_max_side < 16:
            raise ConfigError(f"mask_max_side must be >= 16, got {self.mask_max_side}")
        object.__setattr__(self, "tissue_markers", tuple(str(m) for m in self.tissue_markers))

    @property
    def step(self) -> int:
        return self.stride or self.tile_size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tissue_markers"] = list(self.tissue_markers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TilingParams:
        known = {f for f in cls.__dataclass_fields__}
        extra = set(d) - known
        if extra:
            raise ConfigError(f"unknown tiling parameter(s) {sorted(extra)}")
        kw = dict(d)
        if "tissue_markers" in kw and kw["tissue_markers"] is not None:
            kw["tissue_markers"] = tuple(kw["tissue_markers"])
        return cls(**kw)


@dataclass
class TileGrid:
    """Tile top-left corners (y, x) in pixels at ``mpp`` plus the tissue fraction of each."""

    coords: np.ndarray  # (N, 2) int64
    tissue: np.ndarray  # (N,) float32
    shape: tuple[int, int]  # slide (H, W) at mpp
    params: TilingParams
    mpp: float
    mask: np.ndarray | None = field(default=None, repr=False)  # tissue mask at mask_mpp
    mask_mpp: float | None = None

    def __len__(self) -> int:
        return int(self.coords.shape[0])
