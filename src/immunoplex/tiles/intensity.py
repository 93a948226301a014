"""Per-channel intensity normalisation for multiplex fluorescence.

Each channel is clipped to its [low, high] percentiles (computed on tissue tiles, per slide or per
cohort) and mapped to [0, 1] by arcsinh, log or linear scaling. The fitted numbers are recorded
(``to_dict``/``from_dict``) so inference applies exactly the transform training used. Channels a
slide lacks (``present`` False) map to 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from immunoplex.errors import ConfigError

METHODS = ("arcsinh", "log", "linear")


def _knee(method: str, cofactor: float) -> float:
    if method == "arcsinh":
        return math.asinh(1.0 / cofactor)
    if method == "log":
        return math.log1p(1.0 / cofactor)
    return 1.0


def normalise_numpy(
    x: np.ndarray, low: Any, high: Any, method: str = "arcsinh", cofactor: float = 0.05
) -> np.ndarray:
    """Clip ``x`` to [low, high] (broadcast) and map to [0, 1] by arcsinh/log/linear."""
    lo = np.asarray(low, np.float32)
    hi = np.asarray(high, np.float32)
    z = (np.clip(np.asarray(x, np.float32), lo, hi) - lo) / np.maximum(hi - lo, 1e-12)
    if method == "arcsinh":
        z = np.arcsinh(z / cofactor) / _knee(method, cofactor)
    elif method == "log":
        z = np.log1p(z / cofactor) / _knee(method, cofactor)
    return np.nan_to_num(z, nan=0.0, posinf=1.0, neginf=0.0).astype(np.float32)


def normalise_torch(
    x: Any, low: Any, high: Any, method: str = "arcsinh", cofactor: float = 0.05
) -> Any:
    """Torch version of :func:`normalise_numpy`, on ``x``'s device.

    ``low``/``high`` broadcast against ``x`` (e.g. (B, N, C, 1, 1) for tiles (B, N, C, T, T)),
    so tiles of different slides in one batch each use their own slide's statistics.
    """
    import torch

    lo = torch.as_tensor(low, device=x.device, dtype=x.dtype)
    hi = torch.as_tensor(high, device=x.device, dtype=x.dtype)
    span = (hi - lo).clamp_min(1e-12)
    if torch.is_grad_enabled() and x.requires_grad:  # explanations differentiate through this
        z = (torch.minimum(torch.maximum(x, lo), hi) - lo) / span
        if method == "arcsinh":
            z = torch.asinh(z / cofactor) / _knee(method, cofactor)
        elif method == "log":
            z = torch.log1p(z / cofactor) / _knee(method, cofactor)
        return torch.nan_to_num(z, nan=0.0, posinf=1.0, neginf=0.0)
    # Fused path (training batches, embedding): one new tensor, then in-place arithmetic.
    z = torch.clamp(x, min=lo, max=hi)
    z.sub_(lo).div_(span)
    if method == "arcsinh":
        z.mul_(1.0 / cofactor).asinh_().mul_(1.0 / _knee(method, cofactor))
    elif method == "log":
        z.mul_(1.0 / cofactor).log1p_().mul_(1.0 / _knee(method, cofactor))
    return z.nan_to_num_(nan=0.0, posinf=1.0, neginf=0.0)


class IntegerLUT:
    """Normalisation of integer tiles (uint8/uint16) as a per-channel lookup table.

    Channel c's table is :func:`normalise_torch` applied to the integers 0 .. ceil(high_c):
    every larger value clips to ``high_c`` and so maps to the table's last entry. Looking a pixel up
    gives the value the elementwise path computes (to float rounding) at a fraction of the cost
    (one gather instead of clamp, scale and arcsinh per pixel); building the tables costs
    :meth:`table_size` elementwise evaluations.
    """

    def __init__(
        self,
        dtype: np.dtype,
        low: Any,
        high: Any,
        method: str = "arcsinh",
        cofactor: float = 0.05,
        device: Any = "cpu",
    ) -> None:
        import torch

        dtype = np.dtype(dtype)
        if not self.supports(dtype):
            raise ConfigError(f"IntegerLUT needs uint8 or uint16 tiles, got {dtype}")
        self.tables = []
        with torch.no_grad():
            for lo, hi in zip(low, high, strict=True):
                n = self._length(dtype, hi)
                values = torch.arange(n, dtype=torch.float32, device=device)
                bounds = torch.tensor([float(lo), float(hi)], dtype=torch.float32, device=device)
                self.tables.append(normalise_torch(values, bounds[0], bounds[1], method, cofactor))
        self.device = torch.device(device)

    @staticmethod
    def _length(dtype: np.dtype, high: float) -> int:
        """Entries of one channel's table: the integers 0 .. ceil(high), within the dtype."""
        top = 2 ** (8 * np.dtype(dtype).itemsize) - 1
        return int(min(top, max(0, math.ceil(float(high))))) + 1

    @classmethod
    def table_size(cls, dtype: np.dtype, high: Sequence[float]) -> int:
        """Entries the tables for ``high`` would have (the cost of building them)."""
        return sum(cls._length(dtype, h) for h in high)

    @classmethod
    def supports(cls, dtype: np.dtype) -> bool:
        return np.dtype(dtype).kind == "u" and np.dtype(dtype).itemsize <= 2

    def __call__(self, tiles: np.ndarray) -> Any:
        """(M, C, T, T) integer numpy tiles -> float32 normalised torch tiles on the table's
        device (on CPU a numpy gather, about 5x faster than clamp + arcsinh per pixel)."""
        import torch

        if self.device.type == "cpu":
            out = np.empty(tiles.shape, np.float32)
            for c, table in enumerate(self.tables):
                np.take(table.numpy(), tiles[:, c], out=out[:, c], mode="clip")
            return torch.from_numpy(out)
        x = torch.from_numpy(tiles.astype(np.int32)).to(self.device)
        res = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        for c, table in enumerate(self.tables):
            res[:, c] = table[x[:, c].clamp(max=table.shape[0] - 1).long()]
        return res


def _sample_tiles(
    n: int,
    n_take: int,
    rng: np.random.Generator,
    coords: np.ndarray | None,
    tile_size: int,
    block_tiles: int,
) -> np.ndarray:
    """Sorted indices of ``n_take`` of ``n`` tiles.

    Without ``coords``: uniformly at random. With ``coords`` (N, 2) top-left corners: whole blocks
    of ``block_tiles`` x ``block_tiles`` grid cells in random order (the last one trimmed), so a
    slide read for its statistics decodes a few file segments rather than nearly all of them.
    """
    if n_take >= n:
        return np.arange(n)
    if coords is None:
        return np.sort(rng.choice(n, size=n_take, replace=False))
    side = max(1, tile_size * block_tiles)
    _, block = np.unique(np.asarray(coords) // side, axis=0, return_inverse=True)
    block = block.ravel()
    order = rng.permutation(int(block.max()) + 1)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    by_block = np.argsort(rank[block], kind="stable")  # tiles of the first drawn block first
    return np.sort(by_block[:n_take])


def _pixel_sample(
    tiles: np.ndarray,
    max_pixels: int,
    rng: np.random.Generator,
    coords: np.ndarray | None = None,
    block_tiles: int = 8,
) -> np.ndarray:
    """The sampled tiles (K, C, T, T) of (N, C, T, T) ``tiles`` in their own dtype, at most
    ``max_pixels`` pixels per channel; :func:`_channel_pixels` takes one channel's pixels."""
    n = tiles.shape[0]
    per_tile = int(np.prod(tiles.shape[2:]))
    if n == 0:
        return np.zeros((0, *tiles.shape[1:]), np.float32)
    n_take = min(n, max(1, max_pixels // max(per_tile, 1)))
    idx = _sample_tiles(n, n_take, rng, coords, int(tiles.shape[-1]), block_tiles)
    return np.asarray(tiles[idx])


def _channel_pixels(sub: np.ndarray, ch: int) -> np.ndarray:
    """Channel ``ch`` of sampled tiles as float32 pixels in (tile, y, x) order, non-finite values
    dropped. One channel at a time (a few MB), not a float copy of the whole sample: on hosts
    where fresh memory is slow to touch that copy cost more than the percentiles."""
    v = np.ascontiguousarray(sub[:, ch], dtype=np.float32).reshape(-1)
    return v if sub.dtype.kind in "uib" else v[np.isfinite(v)]


@dataclass
class IntensityNorm:
    """Fitted per-channel clip range and scaling; ``apply_*`` maps intensities to ~[0, 1]."""

    low: list[float]
    high: list[float]
    present: list[bool]
    method: str = "arcsinh"
    cofactor: float = 0.05  # arcsinh/log knee as a fraction of (high - low)
    low_pct: float = 1.0
    high_pct: float = 99.5
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown intensity method {self.method!r}; use one of {METHODS}")
        if not (len(self.low) == len(self.high) == len(self.present)):
            raise ConfigError("IntensityNorm low/high/present lengths differ")
        if not self.cofactor > 0:
            raise ConfigError(f"cofactor must be > 0, got {self.cofactor}")

    @property
    def n_channels(self) -> int:
        return len(self.low)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        tiles: np.ndarray,
        present: Sequence[bool] | None = None,
        method: str = "arcsinh",
        low_pct: float = 1.0,
        high_pct: float = 99.5,
        cofactor: float = 0.05,
        max_pixels: int = 2_000_000,
        seed: int = 0,
        coords: np.ndarray | None = None,
    ) -> IntensityNorm:
        """Fit on tissue tiles (N, C, T, T) (one slide, or a cohort's tiles concatenated).

        ``coords``: the tiles' (N, 2) grid positions; when more tiles than ``max_pixels`` allows
        are given, whole spatial blocks are sampled instead of scattered tiles (cheap to read).
        """
        return cls.fit_many(
            [tiles],
            [present] if present is not None else None,
            method,
            low_pct,
            high_pct,
            cofactor,
            max_pixels,
            seed,
            [coords] if coords is not None else None,
        )

    @classmethod
    def fit_many(
        cls,
        tile_sets: Iterable[np.ndarray],
        presents: Sequence[Sequence[bool]] | None = None,
        method: str = "arcsinh",
        low_pct: float = 1.0,
        high_pct: float = 99.5,
        cofactor: float = 0.05,
        max_pixels: int = 2_000_000,
        seed: int = 0,
        coords: Sequence[np.ndarray | None] | None = None,
    ) -> IntensityNorm:
        """Cohort statistics: pixels sampled evenly from each slide's tiles, channels a slide
        lacks left out of that channel's statistics."""
        if not 0 <= low_pct < high_pct <= 100:
            raise ConfigError(f"need 0 <= low_pct < high_pct <= 100, got {low_pct}, {high_pct}")
        sets = list(tile_sets)
        if not sets:
            raise ConfigError("IntensityNorm.fit needs at least one tile array")
        c = sets[0].shape[1]
        rng = np.random.default_rng(seed)
        per_set = max(1, max_pixels // len(sets))
        samples: list[list[np.ndarray]] = [[] for _ in range(c)]
        any_present = [False] * c
        for k, t in enumerate(sets):
            if t.ndim != 4 or t.shape[1] != c:
                raise ConfigError(f"tile array {k} has shape {t.shape}; expected (N, {c}, T, T)")
            pres = list(presents[k]) if presents is not None else [True] * c
            sub = _pixel_sample(t, per_set, rng, coords[k] if coords is not None else None)
            for ch in range(c):
                if pres[ch] and sub.size:
                    samples[ch].append(_channel_pixels(sub, ch))
                    any_present[ch] = True
            del sub
        low, high = [], []
        for ch in range(c):
            parts = samples[ch]
            v = parts[0] if len(parts) == 1 else np.concatenate(parts or [np.zeros(0, np.float32)])
            samples[ch] = []  # ``v`` is this function's own copy: partitioned in place
            if v.size == 0:
                low.append(0.0)
                high.append(1.0)
                continue
            lo, hi = np.percentile(v, [low_pct, high_pct], overwrite_input=True)
            if hi <= lo:  # flat channel: keep a non-empty range
                hi = lo + max(abs(float(lo)) * 1e-3, 1.0)
            low.append(float(lo))
            high.append(float(hi))
        return cls(low, high, any_present, method, cofactor, low_pct, high_pct)

    # ------------------------------------------------------------------ applying
    def apply_numpy(self, x: np.ndarray) -> np.ndarray:
        """(..., C, H, W) intensities -> float32 in [0, 1]; absent channels -> 0."""
        x = np.asarray(x, dtype=np.float32)
        self._check(x.shape)
        shape = (-1, 1, 1)
        z = normalise_numpy(
            x, np.reshape(self.low, shape), np.reshape(self.high, shape), self.method, self.cofactor
        )
        return z * np.asarray(self.present, np.float32).reshape(shape)

    def apply_torch(self, x: Any) -> Any:
        """Same transform on a float tensor (..., C, H, W), on the tensor's device."""
        import torch

        if not torch.is_tensor(x) or not torch.is_floating_point(x):
            raise TypeError("apply_torch needs a floating-point torch tensor")
        self._check(tuple(x.shape))
        kw = {"device": x.device, "dtype": x.dtype}
        lo = torch.tensor(self.low, **kw).view(-1, 1, 1)
        hi = torch.tensor(self.high, **kw).view(-1, 1, 1)
        pres = torch.tensor(self.present, **kw).view(-1, 1, 1)
        return normalise_torch(x, lo, hi, self.method, self.cofactor) * pres

    def _check(self, shape: tuple[int, ...]) -> None:
        if len(shape) < 3 or shape[-3] != self.n_channels:
            raise ValueError(
                f"IntensityNorm has {self.n_channels} channels; input shape {tuple(shape)} "
                "is not (..., C, H, W)"
            )

    # ------------------------------------------------------------------ record
    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "low": [float(v) for v in self.low],
            "high": [float(v) for v in self.high],
            "present": [bool(v) for v in self.present],
            "cofactor": float(self.cofactor),
            "low_pct": float(self.low_pct),
            "high_pct": float(self.high_pct),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IntensityNorm:
        try:
            return cls(
                low=[float(v) for v in d["low"]],
                high=[float(v) for v in d["high"]],
                present=[bool(v) for v in d["present"]],
                method=str(d.get("method", "arcsinh")),
                cofactor=float(d.get("cofactor", 0.05)),
                low_pct=float(d.get("low_pct", 1.0)),
                high_pct=float(d.get("high_pct", 99.5)),
                extra=dict(d.get("extra") or {}),
            )
        except KeyError as exc:
            raise ConfigError(f"IntensityNorm record lacks {exc}") from None
