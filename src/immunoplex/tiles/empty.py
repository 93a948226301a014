"""Why a slide gave no tile: an empty image is a bad slide, not "no tissue".

A slide with no tissue tile is diagnosed once (only then: the checks read a small thumbnail):

- the image is smaller than one tile at the tiling's µm/px (e.g. a 1x1 image);
- the file holds no data for most of its image segments (a TIFF whose tile offsets/byte counts
  are 0: they read as zeros, see :attr:`immunoplex.io.segments.PageReader.missing_fraction`);
- every pixel of every channel is 0.

Each is a :class:`~immunoplex.errors.SlideReadError` naming the file and the reason, so
``on_bad_slide=error`` stops and ``on_bad_slide=skip`` skips *and reports* it. A slide with signal
but no tile above ``min_tissue`` is not diagnosed (it has no tissue, reported as such).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from immunoplex.errors import SlideReadError
from immunoplex.io import open_slide
from immunoplex.tiles.params import TilingParams
from immunoplex.tiles.resample import read_downsampled

MAX_MISSING = 0.5  # a page missing more of its segments than this is damaged
THUMB_SIDE = 512  # longest side of the thumbnail read for the all-zero check


def empty_slide_reason(
    path: str | os.PathLike[str],
    params: TilingParams,
    mpp: float | None = None,
    channel_names: Sequence[str] | None = None,
) -> str | None:
    """Why the slide at ``path`` is empty (see the module docstring), or None."""
    with open_slide(path, mpp=mpp, channel_names=channel_names) as slide:
        _, h, w = slide.shape
        base = slide.level_mpp(0)
        tile_um = params.tile_size * params.mpp
        if min(h, w) * base < tile_um:
            return (
                f"the image ({h}x{w} px at {base:g} µm/px) is smaller than one tile "
                f"({params.tile_size} px at {params.mpp:g} µm/px)"
            )
        planes = slide._planes[0] if slide._planes else []
        missing = max((getattr(p.reader, "missing_fraction", 0.0) for p in planes), default=0.0)
        if missing > MAX_MISSING:
            return (
                f"the file holds no data for {missing:.2%} of its image tiles/strips "
                "(offsets or byte counts 0: damaged or unfinished file)"
            )
        thumb_mpp = max(base, base * max(h, w) / THUMB_SIDE)
        if not np.any(read_downsampled(slide, thumb_mpp)):
            return "every pixel of every channel is 0 (an empty image)"
    return None


def check_not_empty(
    path: str | os.PathLike[str],
    params: TilingParams,
    mpp: float | None = None,
    channel_names: Sequence[str] | None = None,
) -> None:
    """Raise :class:`SlideReadError` ``<path>: empty slide: <reason>`` for an empty slide."""
    reason = empty_slide_reason(path, params, mpp, channel_names)
    if reason is not None:
        raise SlideReadError(f"{path}: empty slide: {reason}")
