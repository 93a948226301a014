"""Heatmap pictures for people: marker composite | attention | tile score (``heatmap.png``) and a
montage of the most attended tiles (``top_tiles.png``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from immunoplex.inference.slideheat import Geometry, SlideHeat, tile_raster
from immunoplex.io.base import Slide
from immunoplex.io.panel import canonical_marker, resolve_markers
from immunoplex.tiles.qc import NUCLEAR_COLOUR, composite, marker_colours
from immunoplex.tiles.resample import read_downsampled, read_resampled
from immunoplex.utils.atomic import atomic_path


# ----------------------------------------------------------------------------- pictures
def composite_channels(
    slide: Slide, markers: Sequence[str], aliases: dict[str, list[str]] | None = None
) -> tuple[list[int], list[str], list[tuple[float, float, float]], list[str]]:
    """Slide channel indices, names and colours for the requested markers (+ those absent)."""
    wanted = list(dict.fromkeys(str(m) for m in markers)) or ["DAPI"]
    idx: list[int] = []
    names: list[str] = []
    shown: list[str] = []
    absent: list[str] = []
    for m, i in zip(wanted, resolve_markers(wanted, slide.channels, aliases), strict=True):
        if i is None:
            absent.append(m)
            continue
        if i in idx:  # two requested names for one stain
            continue
        idx.append(i)
        ch = slide.channels[i]
        names.append(m if canonical_marker(ch, aliases) == ch else f"{m} ({ch})")
        shown.append(m)
    if not idx:  # nothing requested is on the slide: show its first channel
        idx, names, colours = [0], [slide.channels[0]], [NUCLEAR_COLOUR]
        return idx, names, colours, absent
    return idx, names, marker_colours(shown, aliases), absent


def display_factor(geo: Geometry, max_side: int = 2048) -> int:
    """Integer downsample of the tiling grid for drawing (bounded memory on whole slides)."""
    return max(1, math.ceil(max(geo.tiling_shape) / max_side))


def _coverage(heat: SlideHeat, geo: Geometry, shape: tuple[int, int]) -> np.ndarray:
    """Boolean tile coverage at an image of ``shape`` spanning the slide."""
    cov = tile_raster(heat, geo, np.ones(len(heat.coords)), display_factor(geo), fill=0.0) > 0
    from scipy import ndimage as ndi

    zy, zx = shape[0] / cov.shape[0], shape[1] / cov.shape[1]
    out = ndi.zoom(cov.astype(np.uint8), (zy, zx), order=0).astype(bool)
    pad = np.zeros(shape, bool)
    pad[: min(shape[0], out.shape[0]), : min(shape[1], out.shape[1])] = out[: shape[0], : shape[1]]
    return pad


def render_heatmap_png(
    path: Path,
    slide: Slide,
    heat: SlideHeat,
    geo: Geometry,
    markers: Sequence[str],
    max_size: int = 1100,
) -> dict[str, Any]:
    """marker composite | attention | tile score, with legend, colour bars and a title."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib import colors as mcolors
    from matplotlib.cm import ScalarMappable
    from matplotlib.patches import Patch

    H0, W0 = geo.level0
    dmpp = max(geo.slide_mpp, max(H0, W0) * geo.slide_mpp / max_size)
    idx, names, colours, absent = composite_channels(slide, markers, heat.aliases)
    img = read_downsampled(slide, dmpp, idx)
    cov = _coverage(heat, geo, img.shape[1:])
    comp = composite(img, colours, cov)
    rgb = comp.rgb
    ext_w, ext_h = W0 * geo.slide_mpp, H0 * geo.slide_mpp
    extent = (0, ext_w, ext_h, 0)
    rel = heat.attention_rel
    f = display_factor(geo)
    att_r = tile_raster(heat, geo, rel, f)
    sc_r = tile_raster(heat, geo, heat.score, f)
    r_ext = (0, att_r.shape[1] * f * geo.tiling_mpp, att_r.shape[0] * f * geo.tiling_mpp, 0)
    att_max = float(np.nanpercentile(rel, 99)) if len(rel) and np.isfinite(rel).any() else 1.0
    att_norm = mcolors.Normalize(0.0, max(att_max, 2.0))  # uniform attention (1) mid-scale
    fin = heat.score[np.isfinite(heat.score)]
    lim = float(np.percentile(np.abs(fin), 98)) if len(fin) else 1.0
    sc_norm = mcolors.TwoSlopeNorm(0.0, -max(lim, 1e-3), max(lim, 1e-3))
    aspect = ext_h / ext_w
    panel_w = 4.6
    fig = plt.figure(figsize=(3 * panel_w, panel_w * aspect + 1.6), dpi=110)
    fig.patch.set_facecolor("black")
    grid = fig.add_gridspec(
        2,
        3,
        height_ratios=[panel_w * aspect, 0.55],
        hspace=0.28,
        wspace=0.12,
        left=0.04,
        right=0.98,
        top=0.9,
        bottom=0.03,
    )
    axes = [fig.add_subplot(grid[0, i]) for i in range(3)]
    bottom = [fig.add_subplot(grid[1, i]) for i in range(3)]
    dim = rgb * 0.5
    att_cmap, sc_cmap = plt.get_cmap("inferno"), plt.get_cmap("RdBu_r")
    for ax in axes:
        ax.set_facecolor("black")
        ax.imshow(rgb if ax is axes[0] else dim, extent=extent, interpolation="bilinear")
        ax.set_xlim(0, ext_w)
        ax.set_ylim(ext_h, 0)
        ax.tick_params(colors="0.75", labelsize=7)
        ax.set_xlabel("µm", color="0.75", fontsize=8, labelpad=1)
    for ax, ras, cmap, norm in (
        (axes[1], att_r, att_cmap, att_norm),
        (axes[2], sc_r, sc_cmap, sc_norm),
    ):
        rgba = cmap(norm(np.nan_to_num(ras, nan=0.0)))
        rgba[..., 3] = np.where(np.isfinite(ras), 0.75, 0.0)
        ax.imshow(rgba, extent=r_ext, interpolation="nearest")
    axes[0].set_title("markers", color="white", fontsize=10)
    axes[1].set_title("attention", color="white", fontsize=10)
    axes[2].set_title("tile score", color="white", fontsize=10)
    handles = [Patch(color=c, label=n) for n, c in zip(names, colours, strict=True)]
    handles += [
        Patch(facecolor="none", edgecolor="0.5", label=f"{m}: not on slide") for m in absent
    ]
    bottom[0].axis("off")
    leg = bottom[0].legend(
        handles=handles,
        loc="center",
        ncol=min(len(handles), 3),
        fontsize=8,
        frameon=False,
        labelcolor="white",
        handlelength=1.2,
        title="marker -> colour",
    )
    leg.get_title().set_color("white")
    leg.get_title().set_fontsize(8)
    for cax, cmap, norm, label in (
        (bottom[1], att_cmap, att_norm, "attention / uniform (1 = average tile)"),
        (bottom[2], sc_cmap, sc_norm, "tile logit (< 0 against response, > 0 for)"),
    ):
        pos = cax.get_position()
        cax.set_position(
            (
                pos.x0 + 0.1 * pos.width,
                pos.y0 + 0.55 * pos.height,
                0.8 * pos.width,
                0.3 * pos.height,
            )
        )
        cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, orientation="horizontal")
        cb.set_label(label, color="white", fontsize=8)
        cb.ax.tick_params(colors="white", labelsize=7)
        cb.outline.set_edgecolor("0.6")
    head = f"{heat.slide_id}"
    if heat.patient_id and heat.patient_id != heat.slide_id:
        head += f"  |  patient {heat.patient_id}"
    if heat.probability is not None:
        head += f"  |  p(response) = {heat.probability:.2f}"
    head += f"  |  {len(heat.coords)} tiles of {heat.tile_size * heat.tiling_mpp:g} µm"
    fig.suptitle(head, color="white", fontsize=11)

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", facecolor=fig.get_facecolor())
    finally:
        plt.close(fig)
    return {
        "limits": comp.limits,
        "channels": idx,
        "colours": colours,
        "names": names,
        "display_mpp": dmpp,
    }


def render_top_tiles(
    path: Path,
    slide: Slide,
    heat: SlideHeat,
    geo: Geometry,
    style: dict[str, Any],
    k: int = 16,
    tile_px: int = 128,
) -> list[int]:
    """A montage of the ``k`` most attended tiles (composite colours, labelled)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(heat.coords)
    if n == 0:
        return []
    order = np.argsort(-np.nan_to_num(heat.attention, nan=-np.inf), kind="stable")[: max(1, k)]
    side_um = heat.tile_size * heat.tiling_mpp
    mmpp = max(geo.slide_mpp, side_um / tile_px)
    px = max(1, int(round(side_um / mmpp)))
    limits = (style["limits"]["low"], style["limits"]["high"])  # the whole-slide scaling
    cols = min(len(order), 4)
    rows = math.ceil(len(order) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.2 * cols, 2.45 * rows + 0.5), dpi=110, squeeze=False
    )
    fig.patch.set_facecolor("black")
    rel = heat.attention_rel
    for ax in axes.ravel():
        ax.axis("off")
    for r, (ax, i) in enumerate(zip(axes.ravel(), order, strict=False), start=1):
        y_um, x_um = heat.coords[i] * heat.tiling_mpp
        y, x = int(round(y_um / mmpp)), int(round(x_um / mmpp))
        img = read_resampled(slide, mmpp, y, x, px, px, style["channels"])
        crop = composite(img, style["colours"], limits=limits).rgb
        ax.imshow(crop, interpolation="nearest")
        ax.set_title(
            f"#{r}  attn {rel[i]:.2f}x\nscore {heat.score[i]:+.2f}", color="white", fontsize=8
        )
    fig.suptitle(
        f"{heat.slide_id}: top {len(order)} attended tiles ({side_um:g} µm)",
        color="white",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    x = 0.5 - 0.06 * len(style["names"])
    for name, col in zip(style["names"], style["colours"], strict=True):
        fig.text(x, 0.012, f"■ {name}", color=col, fontsize=8, va="bottom")
        x += 0.12

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", facecolor=fig.get_facecolor())
    finally:
        plt.close(fig)
    return [int(i) for i in order]
