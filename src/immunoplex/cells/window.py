"""Reading a slide window at a chosen µm/px, and which channels carry which stain.

Coordinates are pixels of the working grid (``mpp`` µm/px, origin at the slide's top-left
corner). The finest pyramid level not coarser than ``mpp`` is read and reduced: by block means
when the factor is an integer (exact, and the same for any tiling), else by anti-aliased resize.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np

from immunoplex.errors import PanelMismatchError, ResolutionError
from immunoplex.io import Slide
from immunoplex.io.panel import build_lookup, clean_name, default_aliases, marker_key, merge_aliases


def working_shape(slide: Slide, mpp: float) -> tuple[int, int]:
    """(height, width) of the slide on the ``mpp`` grid."""
    h0, w0 = slide.levels[0]
    f = mpp / slide.level_mpp(0)
    return max(1, int(math.floor(h0 / f + 1e-6))), max(1, int(math.floor(w0 / f + 1e-6)))


def pick_level(slide: Slide, mpp: float) -> tuple[int, float]:
    """(level, factor): the coarsest level whose µm/px is <= ``mpp`` and ``mpp / level_mpp``."""
    if not mpp > 0:
        raise ResolutionError(f"{slide.path}: working µm/px must be > 0, not {mpp}")
    best = 0
    for lv in range(len(slide.levels)):
        if slide.level_mpp(lv) <= mpp * (1 + 1e-4):
            best = lv
    return best, mpp / slide.level_mpp(best)


def read_window(
    slide: Slide, channels: Sequence[int], y: int, x: int, h: int, w: int, mpp: float
) -> np.ndarray:
    """(C, h, w) float32 of ``channels`` on the ``mpp`` grid; outside the slide reads as 0."""
    level, f = pick_level(slide, mpp)
    k = int(round(f))
    if abs(f - k) < 1e-3 and k >= 1:
        raw = slide.read_region(level, y * k, x * k, h * k, w * k, channels=list(channels))
        raw = raw.astype(np.float32, copy=False)
        if k == 1:
            return raw
        return raw.reshape(len(channels), h, k, w, k).mean(axis=(2, 4), dtype=np.float32)
    from skimage.transform import resize

    ly, lx = int(math.floor(y * f)), int(math.floor(x * f))
    lh, lw = max(1, int(math.ceil((y + h) * f)) - ly), max(1, int(math.ceil((x + w) * f)) - lx)
    raw = slide.read_region(level, ly, lx, lh, lw, channels=list(channels)).astype(np.float32)
    out = resize(raw, (len(channels), h, w), order=1, anti_aliasing=f > 1, preserve_range=True)
    return out.astype(np.float32)


def _alias_key(aliases: Mapping[str, Sequence[str]] | None) -> tuple:
    return tuple(
        sorted((str(k), tuple(str(x) for x in v or ())) for k, v in (aliases or {}).items())
    )


@lru_cache(maxsize=64)
def _lookup(key: tuple) -> dict[str, str]:
    table = merge_aliases(default_aliases(), {k: list(v) for k, v in key})
    return build_lookup(merge_aliases(default_aliases(), table))


@lru_cache(maxsize=4096)
def _key(name: str) -> tuple[str, str]:
    return marker_key(name), clean_name(name)


def canonical(name: str, aliases: Mapping[str, Sequence[str]] | None = None) -> str:
    """``io.panel.canonical_marker`` with the shipped table extended by ``aliases``; the lookup
    is built once per alias table (it is called per marker per tile)."""
    k, clean = _key(str(name))
    return _lookup(_alias_key(aliases)).get(k, clean)


def channel_indices(
    slide_channels: Sequence[str],
    markers: Sequence[str] | str,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> list[int]:
    """Indices of the slide channels that are any of ``markers`` (by alias), in slide order.

    ``markers="all"`` means every channel.
    """
    if isinstance(markers, str):
        if markers == "all":
            return list(range(len(slide_channels)))
        markers = [markers]
    want = {canonical(m, aliases) for m in markers}
    return [i for i, ch in enumerate(slide_channels) if canonical(ch, aliases) in want]


def nuclear_indices(
    slide_channels: Sequence[str],
    markers: Sequence[str],
    aliases: Mapping[str, Sequence[str]] | None = None,
    source: str = "slide",
) -> list[int]:
    """The nuclear channels, or a one-line error naming what the slide has."""
    idx = channel_indices(slide_channels, markers, aliases)
    if not idx:
        raise PanelMismatchError(
            f"{source}: no nuclear channel (looked for {list(markers)} and their aliases); "
            f"the slide has {list(slide_channels)}"
        )
    return idx


def marker_names(
    slide_channels: Sequence[str], aliases: Mapping[str, Sequence[str]] | None = None
) -> list[str]:
    """Canonical (panel) names of the slide channels; duplicates keep the channel name."""
    names = [canonical(ch, aliases) for ch in slide_channels]
    return [n if names.count(n) == 1 else str(ch) for n, ch in zip(names, slide_channels)]
