"""Per-slide heatmaps of attention and tile scores, for people and for viewers.

For one slide (``out/slides/<slide_id>/``):

- ``tiles.csv``: every tile's box in level-0 pixels, attention and score;
- ``tiles.geojson``: the tiles as QuPath ``tile`` objects with ``measurements`` (level-0 pixels);
- ``heatmap.ome.tif``: float32 channels ``attention`` and ``score`` at the tiling µm/px, sized so
  that it covers exactly the slide's extent (scale factors to level 0 in the OME metadata and in
  ``slide.json``);
- ``heatmap.png``: marker composite | attention | tile score, with legend and colour bars;
- ``top_tiles.png``: a montage of the top-k attended tiles in the composite colours.

Attention is the MIL weight of a tile (it sums to 1 over all of the patient's tiles);
``attention_rel`` = attention x number of the patient's tiles (1 = uniform attention). The tile
score is the model's response logit when the bag holds only that tile.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from immunoplex.io import open_slide
from immunoplex.io.panel import Panel
from immunoplex.io.slide import Slide
from immunoplex.tiling import read_downsampled, read_resampled, shape_at

NUCLEAR_COLOUR = (0.25, 0.45, 1.0)
PALETTE = [
    (0.15, 1.0, 0.25),
    (1.0, 0.2, 0.55),
    (1.0, 0.85, 0.1),
    (0.1, 0.9, 1.0),
    (1.0, 0.5, 0.0),
    (0.8, 0.8, 0.8),
]


@dataclass
class SlideHeat:
    """One slide's tiles (coords at the tiling µm/px) with attention and scores."""

    slide_id: str
    path: Path
    coords: np.ndarray  # (N, 2) y, x in pixels at tiling_mpp
    tile_size: int
    tiling_mpp: float
    attention: np.ndarray  # (N,)
    score: np.ndarray  # (N,)
    n_patient_tiles: int
    mpp_override: float | None = None
    patient_id: str = ""
    probability: float | None = None
    aliases: dict[str, list[str]] = field(default_factory=dict)

    @property
    def attention_rel(self) -> np.ndarray:
        return self.attention * max(self.n_patient_tiles, 1)


@dataclass(frozen=True)
class Geometry:
    """How tiling pixels map onto the slide's level 0."""

    level0: tuple[int, int]  # (H0, W0)
    slide_mpp: float
    tiling_shape: tuple[int, int]  # (H, W) at the tiling µm/px
    tiling_mpp: float

    @property
    def tile_to_level0(self) -> float:
        """Level-0 pixels per tiling pixel (the scale the tile grid uses)."""
        return self.tiling_mpp / self.slide_mpp

    @property
    def raster_scale(self) -> tuple[float, float]:
        """(sy, sx): level-0 pixels per heatmap pixel so the heatmap covers the slide exactly."""
        return (self.level0[0] / self.tiling_shape[0], self.level0[1] / self.tiling_shape[1])

    @classmethod
    def of(cls, slide: Slide, tiling_mpp: float) -> Geometry:
        mpp = slide.level_mpp(0)
        return cls(tuple(slide.levels[0]), mpp, shape_at(slide, tiling_mpp), tiling_mpp)


def level0_boxes(coords: np.ndarray, tile_size: int, geo: Geometry) -> np.ndarray:
    """Tile boxes (N, 4) x0, y0, x1, y1 in level-0 pixels."""
    s = geo.tile_to_level0
    y0 = coords[:, 0].astype(np.float64) * s
    x0 = coords[:, 1].astype(np.float64) * s
    side = tile_size * s
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1)


# ----------------------------------------------------------------------------- tables
def tile_table(heat: SlideHeat, geo: Geometry) -> pd.DataFrame:
    """One row per tile: grid position, level-0 box, attention (raw, relative, rank), score."""
    boxes = level0_boxes(heat.coords, heat.tile_size, geo)
    order = np.argsort(-np.nan_to_num(heat.attention, nan=-np.inf), kind="stable")
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    return pd.DataFrame(
        {
            "tile": np.arange(len(heat.coords)),
            "y": heat.coords[:, 0],
            "x": heat.coords[:, 1],
            "x0_level0": boxes[:, 0],
            "y0_level0": boxes[:, 1],
            "x1_level0": boxes[:, 2],
            "y1_level0": boxes[:, 3],
            "attention": heat.attention,
            "attention_rel": heat.attention_rel,
            "attention_rank": rank,
            "score": heat.score,
        }
    )


def geojson(heat: SlideHeat, geo: Geometry) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of tile polygons QuPath imports as ``tile`` objects."""
    boxes = np.round(level0_boxes(heat.coords, heat.tile_size, geo), 3).tolist()
    table = tile_table(heat, geo)
    values = {
        k: table[k].to_numpy(np.float64).tolist() for k in ("attention", "attention_rel", "score")
    }
    ranks = table["attention_rank"].to_numpy().tolist()
    feats = []
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        meas: dict[str, float | int] = {k: v[i] for k, v in values.items() if math.isfinite(v[i])}
        meas["attention_rank"] = int(ranks[i])
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        feats.append(
            {
                "type": "Feature",
                "id": f"{heat.slide_id}-tile-{i}",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [ring],
                },
                "properties": {
                    "objectType": "tile",
                    "name": f"tile {i}",
                    "isLocked": False,
                    "measurements": meas,
                },
            }
        )
    return {
        "type": "FeatureCollection",
        "features": feats,
        "properties": {
            "slide_id": heat.slide_id,
            "coordinates": "level-0 pixels (x, y)",
            "level0_mpp": geo.slide_mpp,
        },
    }


# ----------------------------------------------------------------------------- raster
def tile_raster(
    heat: SlideHeat, geo: Geometry, values: np.ndarray, factor: int = 1, fill: float = np.nan
) -> np.ndarray:
    """Values painted on the tiling grid (H, W) (averaged where strided tiles overlap)."""
    H, W = geo.tiling_shape
    h, w = math.ceil(H / factor), math.ceil(W / factor)
    acc = np.zeros((h, w), np.float64)
    cnt = np.zeros((h, w), np.float64)
    T = heat.tile_size
    for (y, x), v in zip(heat.coords.tolist(), values.tolist(), strict=True):
        if not math.isfinite(v):
            continue
        y0, x0 = y // factor, x // factor
        y1, x1 = min(h, math.ceil((y + T) / factor)), min(w, math.ceil((x + T) / factor))
        acc[y0:y1, x0:x1] += v
        cnt[y0:y1, x0:x1] += 1
    out = np.full((h, w), fill, np.float64)
    np.divide(acc, cnt, out=out, where=cnt > 0)
    return out.astype(np.float32)


def write_ome_heatmap(
    path: Path, heat: SlideHeat, geo: Geometry, max_side: int = 16384
) -> dict[str, Any]:
    """OME-TIFF (C=2: attention, score; float32) covering exactly the slide's extent.

    Pixel (i, j) covers level-0 pixels [i sy, (i+1) sy) x [j sx, (j+1) sx) with sy, sx ~ the
    tiling µm/px divided by the level-0 µm/px. Outside tiles: attention 0, score NaN.
    """
    import tifffile

    H, W = geo.tiling_shape
    factor = max(1, math.ceil(max(H, W) / max_side))
    att = tile_raster(heat, geo, heat.attention, factor, fill=0.0)
    sc = tile_raster(heat, geo, heat.score, factor, fill=np.nan)
    data = np.stack([att, sc])
    sy, sx = geo.raster_scale
    sy, sx = sy * factor, sx * factor
    # With factor > 1 the last pixel may overhang: keep the scale that maps pixel 0 exactly.
    meta = {
        "axes": "CYX",
        "Channel": {"Name": ["attention", "score"]},
        "PhysicalSizeX": geo.slide_mpp * sx,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": geo.slide_mpp * sy,
        "PhysicalSizeYUnit": "µm",
        "Description": f"immunoplex heatmap of {heat.slide_id}; level-0 px per pixel "
        f"(x, y) = ({sx:.6g}, {sy:.6g})",
    }
    from immunoplex.predict import atomic_path

    tmp = atomic_path(path.with_name(path.name.replace(".ome.tif", ".tif")))
    levels = []
    lvl = data
    while max(lvl.shape[1:]) > 1024:
        lvl = lvl[:, ::2, ::2]
        levels.append(lvl)
    tile = (256, 256) if max(data.shape[1:]) > 256 else None
    try:
        with tifffile.TiffWriter(tmp, bigtiff=data.nbytes > 2**31, ome=True) as tif:
            tif.write(
                data,
                photometric="minisblack",
                metadata=meta,
                compression="zlib",
                tile=tile,
                subifds=len(levels) or None,
            )
            for sub in levels:
                tif.write(
                    sub, photometric="minisblack", subfiletype=1, compression="zlib", tile=tile
                )
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {
        "shape": [int(data.shape[1]), int(data.shape[2])],
        "level0_per_pixel_x": sx,
        "level0_per_pixel_y": sy,
        "physical_size_um": [geo.slide_mpp * sx, geo.slide_mpp * sy],
    }


# ----------------------------------------------------------------------------- pictures
def composite_channels(
    slide: Slide, markers: Sequence[str], aliases: dict[str, list[str]] | None = None
) -> tuple[list[int], list[str], list[tuple[float, float, float]], list[str]]:
    """Slide channel indices, names and colours for the requested markers (+ those absent)."""
    wanted = list(dict.fromkeys(str(m) for m in markers)) or ["DAPI"]
    panel = Panel(wanted, aliases=aliases or {})
    by_canon: dict[str, int] = {}
    for i, ch in enumerate(slide.channels):
        by_canon.setdefault(panel.canonical(ch), i)
    idx, names, colours, absent = [], [], [], []
    pal = iter(PALETTE)
    for m in wanted:
        i = by_canon.get(panel.canonical(m))
        if i is None:
            absent.append(m)
            continue
        idx.append(i)
        names.append(
            m
            if panel.canonical(slide.channels[i]) == slide.channels[i]
            else f"{m} ({slide.channels[i]})"
        )
        colours.append(NUCLEAR_COLOUR if panel.canonical(m) == "DAPI" else next(pal, (1, 1, 1)))
    if not idx:  # nothing requested is on the slide: show its first channel
        idx, names, colours = [0], [slide.channels[0]], [NUCLEAR_COLOUR]
    return idx, names, colours, absent


def channel_limits(img: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per channel 1st / 99.7th percentiles (on tissue when a mask is given)."""
    lo, hi = [], []
    for ch in img:
        v = ch[mask] if mask is not None and mask.shape == ch.shape and mask.any() else ch
        a, b = np.percentile(v, [1.0, 99.7])
        lo.append(a)
        hi.append(b if b > a else a + 1.0)
    return np.asarray(lo, np.float32), np.asarray(hi, np.float32)


def compose(
    img: np.ndarray, colours: Sequence[tuple[float, float, float]], lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """Additive pseudo-colour RGB (H, W, 3) in [0, 1] with a mild gamma."""
    rgb = np.zeros((*img.shape[1:], 3), np.float32)
    for ch, col, a, b in zip(img, colours, lo, hi, strict=True):
        z = np.clip((ch - a) / (b - a), 0, 1) ** 0.8
        rgb += z[..., None] * np.asarray(col, np.float32)
    return np.clip(rgb, 0, 1)


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
    lo, hi = channel_limits(img, cov)
    rgb = compose(img, colours, lo, hi)
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
    from immunoplex.predict import atomic_path

    tmp = atomic_path(path)
    try:
        fig.savefig(tmp, format="png", facecolor=fig.get_facecolor())
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return {
        "limits": {"low": lo.tolist(), "high": hi.tolist()},
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
    lo = np.asarray(style["limits"]["low"], np.float32)
    hi = np.asarray(style["limits"]["high"], np.float32)
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
        ax.imshow(compose(img, style["colours"], lo, hi), interpolation="nearest")
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
    from immunoplex.predict import atomic_path

    tmp = atomic_path(path)
    try:
        fig.savefig(tmp, format="png", facecolor=fig.get_facecolor())
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return [int(i) for i in order]


def write_slide_heatmaps(
    heat: SlideHeat,
    out_dir: Path,
    markers: Sequence[str] = ("DAPI", "PanCK", "CD8"),
    top_k: int = 16,
    images: bool = True,
    max_side: int = 16384,
) -> dict[str, str]:
    """Every per-slide output; returns {kind: file name relative to ``out_dir``}."""
    from immunoplex.predict import atomic_path, atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    with open_slide(heat.path, mpp=heat.mpp_override) as slide:
        geo = Geometry.of(slide, heat.tiling_mpp)
        tmp = atomic_path(out_dir / "tiles.csv")
        tile_table(heat, geo).to_csv(tmp, index=False)
        os.replace(tmp, out_dir / "tiles.csv")
        files["tiles"] = "tiles.csv"
        if not images:
            return files
        atomic_write_text(out_dir / "tiles.geojson", json.dumps(geojson(heat, geo)))
        files["geojson"] = "tiles.geojson"
        info = write_ome_heatmap(out_dir / "heatmap.ome.tif", heat, geo, max_side)
        files["ome_tiff"] = "heatmap.ome.tif"
        style = render_heatmap_png(out_dir / "heatmap.png", slide, heat, geo, markers)
        files["png"] = "heatmap.png"
        if len(heat.coords):
            render_top_tiles(out_dir / "top_tiles.png", slide, heat, geo, style, k=top_k)
            files["montage"] = "top_tiles.png"
        atomic_write_text(
            out_dir / "heatmap.json",
            json.dumps(
                {
                    "slide_id": heat.slide_id,
                    "level0_shape": list(geo.level0),
                    "level0_mpp": geo.slide_mpp,
                    "tiling_mpp": geo.tiling_mpp,
                    "tile_to_level0": geo.tile_to_level0,
                    "ome_tiff": info,
                    "composite": {"markers": style["names"], "colours": style["colours"]},
                },
                indent=1,
            ),
        )
        files["heatmap_info"] = "heatmap.json"
    return files
