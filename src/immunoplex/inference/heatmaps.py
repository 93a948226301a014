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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from immunoplex.inference.render import render_heatmap_png, render_top_tiles
from immunoplex.inference.slideheat import Geometry, SlideHeat, level0_boxes, tile_raster
from immunoplex.io import open_slide
from immunoplex.io.write import write_ome_tiff
from immunoplex.utils.atomic import write_csv, write_json, write_text


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


def write_ome_heatmap(
    path: Path, heat: SlideHeat, geo: Geometry, max_side: int = 16384
) -> dict[str, Any]:
    """OME-TIFF (C=2: attention, score; float32) covering exactly the slide's extent.

    Pixel (i, j) covers level-0 pixels [i sy, (i+1) sy) x [j sx, (j+1) sx) with sy, sx ~ the
    tiling µm/px divided by the level-0 µm/px. Outside tiles: attention 0, score NaN.
    """
    H, W = geo.tiling_shape
    factor = max(1, math.ceil(max(H, W) / max_side))
    att = tile_raster(heat, geo, heat.attention, factor, fill=0.0)
    sc = tile_raster(heat, geo, heat.score, factor, fill=np.nan)
    data = np.stack([att, sc])
    sy, sx = geo.raster_scale
    sy, sx = sy * factor, sx * factor
    # With factor > 1 the last pixel may overhang: keep the scale that maps pixel 0 exactly.
    n = 1  # reduced levels while the larger side exceeds 1024 px
    while max(data.shape[1:]) > 1024 * 2 ** (n - 1):
        n += 1
    write_ome_tiff(
        path,
        data,
        ["attention", "score"],
        (geo.slide_mpp * sy, geo.slide_mpp * sx),
        levels=n,
        name=heat.slide_id,
        description=f"immunoplex heatmap of {heat.slide_id}; level-0 px per pixel "
        f"(x, y) = ({sx:.6g}, {sy:.6g})",
    )
    return {
        "shape": [int(data.shape[1]), int(data.shape[2])],
        "level0_per_pixel_x": sx,
        "level0_per_pixel_y": sy,
        "physical_size_um": [geo.slide_mpp * sx, geo.slide_mpp * sy],
    }


def write_slide_heatmaps(
    heat: SlideHeat,
    out_dir: Path,
    markers: Sequence[str] = ("DAPI", "PanCK", "CD8"),
    top_k: int = 16,
    images: bool = True,
    max_side: int = 16384,
) -> dict[str, str]:
    """Every per-slide output; returns {kind: file name relative to ``out_dir``}."""

    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    with open_slide(heat.path, mpp=heat.mpp_override, channel_names=heat.channel_names) as slide:
        geo = Geometry.of(slide, heat.tiling_mpp)
        write_csv(out_dir / "tiles.csv", tile_table(heat, geo))
        files["tiles"] = "tiles.csv"
        if not images:
            return files
        write_json(out_dir / "tiles.geojson", geojson(heat, geo), indent=None)
        files["geojson"] = "tiles.geojson"
        info = write_ome_heatmap(out_dir / "heatmap.ome.tif", heat, geo, max_side)
        files["ome_tiff"] = "heatmap.ome.tif"
        style = render_heatmap_png(out_dir / "heatmap.png", slide, heat, geo, markers)
        files["png"] = "heatmap.png"
        if len(heat.coords):
            render_top_tiles(out_dir / "top_tiles.png", slide, heat, geo, style, k=top_k)
            files["montage"] = "top_tiles.png"
        write_text(
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
