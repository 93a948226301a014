"""One marker -> channel resolver (io.panel.resolve_markers) with the user's aliases everywhere:
panel matching, tissue detection, QC thumbnails and heatmap composites."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from immunoplex.inference.render import composite_channels
from immunoplex.io import open_slide
from immunoplex.io.panel import Panel, match_panel, resolve_markers
from immunoplex.tiles.params import TilingParams
from immunoplex.tiles.qc import qc_channels
from immunoplex.tiles.tissue import resolve_channels, slide_tissue
from tests.io.conftest import write_ome

USER = {"DAPI": ["MyNuc"]}  # a lab's own name for its nuclear stain


def _slide(tmp_path: Path) -> Path:
    """Nuclear signal (as 'MyNuc') on the left half only; 'CD8' bright on the right half."""
    img = np.full((2, 128, 128), 2, np.uint16)
    img[0, 16:112, 8:60] = 3000
    img[1, 16:112, 68:120] = 3000
    return write_ome(tmp_path / "s.ome.tif", img, ["MyNuc", "CD8"], mpp=4.0)


def test_resolver_applies_user_aliases_and_prefers_exact_names() -> None:
    assert resolve_markers(["DAPI", "CD8"], ["MyNuc", "CD8"]) == [None, 1]
    assert resolve_markers(["DAPI", "CD8"], ["MyNuc", "CD8"], USER) == [0, 1]
    assert resolve_markers(["DAPI"], ["HH3", "DAPI"]) == [1]  # both are DAPI: exact name wins
    panel = Panel(["DAPI", "CD8"], aliases=USER)
    assert match_panel(panel, ["MyNuc", "CD8"]).indices == [0, 1]


def test_user_alias_reaches_tissue_detection_qc_and_composites(tmp_path: Path) -> None:
    params = TilingParams(tile_size=8, mpp=4.0, tissue_all_channels=False, mask_mpp=4.0)
    with open_slide(_slide(tmp_path)) as slide:
        assert resolve_channels(slide, ["DAPI"]) == []
        assert resolve_channels(slide, ["DAPI"], USER) == [0]
        assert qc_channels(slide, ["DAPI"], aliases=USER) == [0]
        idx, names, _, absent = composite_channels(slide, ["DAPI", "CD8"], USER)
        assert idx == [0, 1] and names == ["DAPI (MyNuc)", "CD8"] and absent == []
        with_alias, _ = slide_tissue(slide, params, USER)
        without, _ = slide_tissue(slide, params)
    left, right = (
        with_alias[:, : with_alias.shape[1] // 2],
        with_alias[:, with_alias.shape[1] // 2 :],
    )
    assert left.mean() > 0.2 and right.mean() < 0.05  # the nuclear channel alone: left half
    assert without[:, without.shape[1] // 2 :].mean() > 0.2  # no nuclear marker: all channels
