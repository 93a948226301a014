"""The one colour composite of marker channels, and the tiling QC thumbnail."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from immunoplex.io.base import Slide
from immunoplex.io.panel import canonical_marker
from immunoplex.tiles.params import NUCLEAR_MARKERS, TileGrid
from immunoplex.tiles.resample import read_downsampled, shape_at
from immunoplex.tiles.tissue import resolve_channels
from immunoplex.utils.atomic import atomic_path

# ---------------------------------------------------------------------- colour composites
# The one palette (QC thumbnails, heatmaps, top-tile crops): the nuclear stain blue, the other
# markers in this order, white once it is used up.
NUCLEAR_COLOUR = (0.25, 0.45, 1.0)
PALETTE = [
    (1.0, 0.15, 0.15),
    (0.1, 1.0, 0.2),
    (1.0, 0.85, 0.0),
    (1.0, 0.2, 1.0),
    (0.0, 0.95, 0.95),
    (1.0, 0.55, 0.0),
    (0.7, 0.7, 0.7),
]
FALLBACK_COLOUR = (1.0, 1.0, 1.0)


def marker_colours(
    names: Sequence[str], aliases: Mapping[str, Sequence[str]] | None = None
) -> list[tuple[float, float, float]]:
    """A colour per marker name: :data:`NUCLEAR_COLOUR` for the nuclear stain, else the next
    :data:`PALETTE` entry."""
    pal = iter(PALETTE)
    return [
        NUCLEAR_COLOUR
        if canonical_marker(n, aliases) in NUCLEAR_MARKERS
        else next(pal, FALLBACK_COLOUR)
        for n in names
    ]


def channel_limits(ch: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """Display range of one (H, W) channel: its 1st / 99.7th percentile, on tissue when a mask of
    the same shape with tissue in it is given."""
    v = ch[mask] if mask is not None and mask.shape == ch.shape and mask.any() else ch
    lo, hi = (float(x) for x in np.percentile(v, [1.0, 99.7]))
    return lo, (hi if hi > lo else lo + 1.0)


@dataclass
class Composite:
    """An RGB (H, W, 3) image in [0, 1] and the per-channel display range that made it."""

    rgb: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @property
    def limits(self) -> dict[str, list[float]]:
        """For a legend, or to draw crops of the same slide with the same scaling."""
        return {"low": self.low.tolist(), "high": self.high.tolist()}


def composite(
    img: np.ndarray | Iterable[np.ndarray],
    colours: Sequence[tuple[float, float, float]],
    mask: np.ndarray | None = None,
    limits: tuple[Sequence[float], Sequence[float]] | None = None,
) -> Composite:
    """Additive pseudo-colour composite of a (C, H, W) image or of (H, W) channels given one at a
    time (so only one is held), with a mild gamma. Each channel is scaled to
    :func:`channel_limits` (on ``mask``), or to the given ``(low, high)`` limits."""
    rgb: np.ndarray | None = None
    low: list[np.float32] = []
    high: list[np.float32] = []
    for c, (ch, col) in enumerate(zip(img, colours, strict=False)):
        ch = np.asarray(ch, np.float32)
        if rgb is None:
            rgb = np.zeros((*ch.shape, 3), np.float32)
        lo, hi = channel_limits(ch, mask) if limits is None else (limits[0][c], limits[1][c])
        lo, hi = np.float32(lo), np.float32(hi)  # as returned, so given-back limits reproduce
        low.append(lo)
        high.append(hi)
        z = np.clip((ch - lo) / (hi - lo), 0, 1)
        z = np.power(z, 0.9, out=z)
        z *= 0.8
        for k in range(3):
            rgb[..., k] += z * np.float32(col[k])
    if rgb is None:
        shape = img.shape[1:] if isinstance(img, np.ndarray) else (0, 0)
        rgb = np.zeros((*shape, 3), np.float32)
    return Composite(
        np.clip(rgb, 0, 1, out=rgb), np.asarray(low, np.float32), np.asarray(high, np.float32)
    )


def qc_channels(
    slide: Slide,
    markers: Sequence[str] | None,
    limit: int = 6,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> list[int]:
    """Channels to show: the requested markers the slide has, else its first ``limit``."""
    idx = resolve_channels(slide, markers or [], aliases)
    return idx[:limit] if idx else list(range(min(limit, len(slide.channels))))


def render_qc(
    slide: Slide,
    grid: TileGrid,
    path: str | Path,
    markers: Sequence[str] | None = None,
    max_size: int = 1024,
    title: str | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """PNG for a person: marker composite with legend, tissue outline, the kept tile grid."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Patch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    H, W = grid.shape
    tmpp = max(grid.mpp * max(H, W) / max_size, slide.level_mpp(0))
    chans = qc_channels(slide, markers, aliases=aliases)
    th, tw = shape_at(slide, tmpp)
    mask_small = None
    if grid.mask is not None:
        zy = th / grid.mask.shape[0]
        zx = tw / grid.mask.shape[1]
        mask_small = ndi.zoom(grid.mask.astype(np.uint8), (zy, zx), order=0).astype(bool)
        mask_small = mask_small[:th, :tw]
        if mask_small.shape != (th, tw):
            mask_small = None
    colours = marker_colours([slide.channels[c] for c in chans], aliases)
    layers = (read_downsampled(slide, tmpp, [c])[0] for c in chans)
    rgb = composite(layers, colours, mask_small).rgb
    ext_w, ext_h = W * grid.mpp, H * grid.mpp  # µm
    aspect = ext_h / ext_w
    fig_w = 9.0
    fig, ax = plt.subplots(figsize=(fig_w, fig_w * aspect * 0.92 + 0.9), dpi=110)
    fig.patch.set_facecolor("black")
    ax.set_facecolor("black")
    ax.imshow(rgb, extent=(0, ext_w, ext_h, 0), interpolation="nearest")
    if grid.mask is not None and grid.mask_mpp:
        mh, mw = grid.mask.shape
        ax.contour(
            np.linspace(0, mw * grid.mask_mpp, mw),
            np.linspace(0, mh * grid.mask_mpp, mh),
            grid.mask.astype(float),
            levels=[0.5],
            colors=["white"],
            linewidths=1.2,
        )
    T = grid.params.tile_size * grid.mpp
    if len(grid):
        ys = grid.coords[:, 0] * grid.mpp
        xs = grid.coords[:, 1] * grid.mpp
        boxes = np.stack(
            [
                np.stack([xs, ys], 1),
                np.stack([xs + T, ys], 1),
                np.stack([xs + T, ys + T], 1),
                np.stack([xs, ys + T], 1),
            ],
            1,
        )
        lw = 0.6 if len(grid) < 2000 else 0.3
        ax.add_collection(
            PolyCollection(boxes, facecolors="none", edgecolors=(1, 1, 0.3, 0.55), linewidths=lw)
        )
    ax.set_xlim(0, ext_w)
    ax.set_ylim(ext_h, 0)
    ax.tick_params(colors="0.8", labelsize=7)
    ax.set_xlabel("µm", color="0.8", fontsize=8)
    handles = [
        Patch(color=col, label=slide.channels[c]) for c, col in zip(chans, colours, strict=False)
    ]
    handles.append(Patch(facecolor="none", edgecolor="white", label="tissue mask"))
    handles.append(Patch(facecolor="none", edgecolor=(1, 1, 0.3), label="tiles"))
    leg = ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        frameon=False,
        labelcolor="white",
    )
    leg.set_title("markers", prop={"size": 8})
    leg.get_title().set_color("white")
    p = grid.params
    head = title or slide.path.name
    ax.set_title(
        f"{head}\n{len(grid)} tiles of {p.tile_size} px at {grid.mpp:g} µm/px "
        f"(stride {p.step}, min tissue {p.min_tissue:g}); slide {slide.mpp:.3g} µm/px, "
        f"{slide.levels[0][1]}x{slide.levels[0][0]} px",
        color="white",
        fontsize=9,
    )
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, facecolor=fig.get_facecolor())
    finally:
        plt.close(fig)
    return path
