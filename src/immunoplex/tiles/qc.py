"""The one colour composite of marker channels, and the tiling QC thumbnail."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from immunoplex.io.base import Slide
from immunoplex.tiles.params import TileGrid
from immunoplex.tiles.resample import read_downsampled, shape_at
from immunoplex.tiles.tissue import resolve_channels
from immunoplex.utils.atomic import atomic_path

# ---------------------------------------------------------------------- QC thumbnail
QC_COLOURS = {
    "DAPI": (0.15, 0.35, 1.0),
}
QC_PALETTE = [
    (1.0, 0.15, 0.15),
    (0.1, 1.0, 0.2),
    (1.0, 0.85, 0.0),
    (1.0, 0.2, 1.0),
    (0.0, 0.95, 0.95),
    (1.0, 0.55, 0.0),
    (0.7, 0.7, 0.7),
]


def qc_channels(slide: Slide, markers: Sequence[str] | None, limit: int = 6) -> list[int]:
    """Channels to show: the requested markers the slide has, else its first ``limit``."""
    idx = resolve_channels(slide, markers or [])
    return idx[:limit] if idx else list(range(min(limit, len(slide.channels))))


def composite(
    img: np.ndarray | Iterable[np.ndarray],
    colours: Sequence[tuple[float, float, float]],
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Additive pseudo-colour RGB (H, W, 3) in [0, 1] of a (C, H, W) image or of (H, W) channels
    given one at a time (so only one is held); each channel scaled to its 1-99.7th percentile on
    tissue (whole image without a mask) with a mild gamma."""
    rgb: np.ndarray | None = None
    sel: np.ndarray | None = None
    for ch, col in zip(img, colours, strict=False):
        if rgb is None:
            rgb = np.zeros((*ch.shape, 3), np.float32)
            if mask is not None and mask.shape == ch.shape and mask.any():
                sel = mask
        lo, hi = np.percentile(ch[sel] if sel is not None else ch, [1.0, 99.7])
        if not hi > lo:
            continue
        z = np.clip((np.asarray(ch, np.float32) - lo) / (hi - lo), 0, 1)
        z = np.power(z, 0.9, out=z)
        z *= 0.8
        for k in range(3):
            rgb[..., k] += z * np.float32(col[k])
    if rgb is None:
        shape = img.shape[1:] if isinstance(img, np.ndarray) else (0, 0)
        return np.zeros((*shape, 3), np.float32)
    return np.clip(rgb, 0, 1, out=rgb)


def render_qc(
    slide: Slide,
    grid: TileGrid,
    path: str | Path,
    markers: Sequence[str] | None = None,
    max_size: int = 1024,
    title: str | None = None,
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
    chans = qc_channels(slide, markers)
    th, tw = shape_at(slide, tmpp)
    mask_small = None
    if grid.mask is not None:
        zy = th / grid.mask.shape[0]
        zx = tw / grid.mask.shape[1]
        mask_small = ndi.zoom(grid.mask.astype(np.uint8), (zy, zx), order=0).astype(bool)
        mask_small = mask_small[:th, :tw]
        if mask_small.shape != (th, tw):
            mask_small = None
    colours = []
    pal = iter(QC_PALETTE)
    from immunoplex.io.panel import canonical_marker

    for c in chans:
        colours.append(QC_COLOURS.get(canonical_marker(slide.channels[c])) or next(pal))
    rgb = composite((read_downsampled(slide, tmpp, [c])[0] for c in chans), colours, mask_small)
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
