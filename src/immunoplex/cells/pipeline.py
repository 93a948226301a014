"""One slide through the cell stage: segment tile by tile, measure, phenotype, write outputs.

Tiles stream through once: each is measured, its outlines traced and its labels pasted into
strips that go straight to the OME-TIFF masks, so memory is bounded by a few tiles and strips
whatever the slide size. The tumour map is computed separately at a coarse µm/px.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from immunoplex.cells.io import (
    MaskWriter,
    OutlineSpool,
    cell_outlines,
    write_geojson,
    write_h5ad,
    write_parquet_table,
)
from immunoplex.cells.phenotype import PhenotypeScheme, assign_phenotypes
from immunoplex.cells.quantify import (
    CellTable,
    CompartmentParams,
    build_table,
    compartment_areas_mm2,
    measure_tile,
    tumour_map,
)
from immunoplex.cells.segment import (
    LabelStrips,
    SegmentParams,
    StripSink,
    iter_tiles,
    make_segmenter,
)
from immunoplex.cells.window import marker_names
from immunoplex.io import Slide

OUTPUTS = {
    "h5ad": "cells.h5ad",
    "parquet": "cells.parquet",
    "mask": "cells_mask.ome.tif",
    "nuclei_mask": "nuclei_mask.ome.tif",
    "geojson": "cells.geojson",
    "qc": "qc.png",
}


@dataclass
class SlideCellResult:
    """The phenotyped table, compartment areas (mm²) and the files written."""

    table: CellTable
    areas_mm2: dict[str, float]
    files: dict[str, Path] = field(default_factory=dict)


def run_slide(
    slide: Slide,
    slide_id: str,
    out_dir: str | Path | None = None,
    segment: SegmentParams | None = None,
    compartments: CompartmentParams | None = None,
    scheme: PhenotypeScheme | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
    outputs: Sequence[str] = tuple(OUTPUTS),
    tissue_um: float = 50.0,
    qc_max_size: int = 2048,
    backend: Any = None,
    thresholds: Mapping[str, float] | None = None,
) -> SlideCellResult:
    """Segment, quantify and (with ``scheme``) phenotype one slide; write ``outputs`` under
    ``out_dir`` (nothing is written without it). ``thresholds`` (transformed units per marker,
    e.g. pooled over a cohort by :func:`~immunoplex.cells.phenotype.fit_thresholds`) replace
    the slide's own."""
    segment = segment or SegmentParams()
    compartments = compartments or CompartmentParams()
    table_aliases = dict(aliases or {})
    if scheme is not None:
        for k, v in scheme.aliases.items():
            table_aliases.setdefault(k, []).extend(v)
    seg = make_segmenter(slide, segment, table_aliases, backend)
    g = seg.geometry
    out = Path(out_dir) if out_dir is not None else None
    want = set(outputs) if out is not None else set()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    writers: dict[str, MaskWriter] = {}
    if "mask" in want:
        writers["cells"] = MaskWriter(out / OUTPUTS["mask"], (g.height, g.width), seg.mpp, g.tile)  # type: ignore[operator]
    if "nuclei_mask" in want:
        writers["nuclei"] = MaskWriter(
            out / OUTPUTS["nuclei_mask"],
            (g.height, g.width),
            seg.mpp,
            g.tile,
            "nuclei",  # type: ignore[operator]
        )
    small = g.height * g.width <= qc_max_size**2
    qc_labels = np.zeros((g.height, g.width), np.uint32) if "qc" in want and small else None

    def qc_sink(y: int, strip: np.ndarray) -> None:
        if qc_labels is not None:
            qc_labels[y : y + strip.shape[0]] = strip

    sinks: dict[str, list[StripSink]] = {
        "cells": [w.put for k, w in writers.items() if k == "cells"] + [qc_sink],
        "nuclei": [w.put for k, w in writers.items() if k == "nuclei"],
    }
    strips = {k: LabelStrips(g, v) for k, v in sinks.items()}
    scale = seg.mpp / slide.level_mpp(0)  # level-0 px per working px
    parts = []
    spool = OutlineSpool(out) if "geojson" in want else None
    try:
        row = 0
        for i, tile in enumerate(iter_tiles(seg)):
            if i // g.cols != row:
                for s in strips.values():
                    s.row_done(row)
                row = i // g.cols
            parts.append(measure_tile(tile, seg.mpp))
            if spool is not None:
                spool.update(cell_outlines(tile.cells, tile.ids, tile.y0, tile.x0, scale))
            strips["cells"].paste(tile.y0, tile.x0, tile.cells)
            strips["nuclei"].paste(tile.y0, tile.x0, tile.nuclei)
            tile.image = tile.image[:0]  # free the pixels now
        for s in strips.values():
            s.finish()
    except BaseException:
        for w in writers.values():
            w.abort()
        if spool is not None:
            spool.close()
        raise
    for w in writers.values():
        w.close()
    tmap = tumour_map(slide, compartments, table_aliases)
    markers = marker_names(slide.channels, table_aliases)
    table = build_table(
        parts, slide, slide_id, seg.mpp, markers, tmap, compartments.border_um,
        compartments.intratumoural_um,
    )  # fmt: skip
    x, y = table.obs["x_um"].to_numpy(), table.obs["y_um"].to_numpy()
    areas = compartment_areas_mm2(tmap, x, y, compartments.border_um, tissue_um)
    table.uns.update(
        slide_id=slide_id,
        areas_mm2=areas,
        segmentation=segment.to_dict(),
        compartments=compartments.to_dict(),
        nuclear_channels=[slide.channels[i] for i in seg.nuclear],
        membrane_channels=[slide.channels[i] for i in seg.membrane],
        n_cells=len(table),
    )
    if scheme is not None:
        assign_phenotypes(table, scheme, thresholds)
    result = SlideCellResult(table, areas)
    if out is None:
        return result
    for k, w in writers.items():
        result.files["mask" if k == "cells" else "nuclei_mask"] = w.path
    try:
        if spool is not None:
            colours = scheme.colours() if scheme is not None else None
            result.files["geojson"] = write_geojson(
                out / OUTPUTS["geojson"], table, spool, colours, 1.0 / slide.level_mpp(0)
            )
    finally:
        if spool is not None:
            spool.close()
    if "qc" in want:
        from immunoplex.cells.qc import render_qc

        result.files["qc"] = render_qc(out / OUTPUTS["qc"], slide, table, seg.mpp, qc_labels,
                                       scheme, qc_max_size, slide_id, table_aliases)  # fmt: skip
    if "parquet" in want:
        result.files["parquet"] = write_parquet_table(out / OUTPUTS["parquet"], table)
    if "h5ad" in want:  # last: its presence marks the slide as finished
        result.files["h5ad"] = write_h5ad(out / OUTPUTS["h5ad"], table)
    return result
