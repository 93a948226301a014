"""Segmentation on discs with known centres: counts, centroids, areas, seams, units, backends."""

from __future__ import annotations

import numpy as np
import pytest

from immunoplex.cells import SegmentParams, make_backend, register_backend, segment_slide
from immunoplex.cells.backends import BackendError
from immunoplex.cells.metrics import match_masks, match_points
from immunoplex.cells.pipeline import run_slide
from immunoplex.errors import PanelMismatchError
from immunoplex.io import open_slide

from .conftest import disc_image, grid_centres, write_slide


def _centroids_um(labels: np.ndarray, mpp: float) -> np.ndarray:
    from scipy import ndimage as ndi

    ids = np.arange(1, labels.max() + 1)
    com = np.array(ndi.center_of_mass(labels > 0, labels, ids))
    return (com[:, ::-1] + 0.5) * mpp


def test_discs_count_centroid_area(disc_slide):
    path, centres = disc_slide
    cells, nuclei, mpp = segment_slide(open_slide(path))
    assert mpp == 1.0
    assert cells.max() == len(centres) == 30
    score, match = match_points(_centroids_um(cells, mpp), centres, max_distance=1.0)
    assert score.f1 == 1.0
    nuc_area = np.bincount(nuclei.ravel())[1:] * mpp**2
    assert nuc_area.mean() == pytest.approx(np.pi * 3.0**2, rel=0.35)
    cell_area = np.bincount(cells.ravel())[1:] * mpp**2
    assert (cell_area > nuc_area).all()
    assert cell_area.mean() == pytest.approx(np.pi * 5.0**2, rel=0.3)  # bounded by the membrane
    assert set(np.unique(nuclei)) <= set(np.unique(cells))


def test_tiled_equals_one_shot(disc_slide):
    path, centres = disc_slide
    slide = open_slide(path)
    one, one_n, _ = segment_slide(slide, SegmentParams(tile_um=512))
    for tile in (16.0, 32.0, 48.0):
        tiled, tiled_n, _ = segment_slide(slide, SegmentParams(tile_um=tile, halo_um=16))
        ids = np.unique(tiled[tiled > 0])
        assert len(ids) == tiled.max() == len(centres)  # unique ids, no duplicate on a seam
        assert np.array_equal(tiled > 0, one > 0)
        assert match_masks(tiled, one, 0.99).f1 == 1.0
        assert match_masks(tiled_n, one_n, 0.99).f1 == 1.0


@pytest.mark.parametrize("threshold,tol", [("otsu", 0.02), ("local", 0.3)])
def test_physical_units(tmp_path, threshold, tol):
    """The same tissue at 0.5 and 1 µm/px: the same cells, centroids and areas in µm².

    Areas are compared with the rendered discs (pixelation makes a 3.5 µm disc 32 µm² at
    1 µm/px and 39 µm² at 0.5 µm/px); Otsu recovers them exactly, the local threshold (the
    default, better on real tissue) takes in some of the blurred rim.
    """
    centres = grid_centres(4, 3, 20.0)
    cents = {}
    for mpp in (0.5, 1.0):
        img, names = disc_image(centres, (70.0, 90.0), mpp, radius_um=3.5)
        slide = open_slide(write_slide(tmp_path / f"m{mpp}.ome.tif", img, names, mpp))
        params = SegmentParams(backend_params={"threshold": threshold})
        res = run_slide(slide, "s", segment=params)
        assert len(res.table) == len(centres)
        rendered = np.count_nonzero(img[0] > 50) * mpp**2 / len(centres)
        area = res.table.obs["nucleus_area_um2"].to_numpy()
        assert area.mean() == pytest.approx(rendered, rel=tol)
        cents[mpp] = res.table.obs[["x_um", "y_um"]].to_numpy()
    score, _ = match_points(cents[0.5], cents[1.0], max_distance=0.5)
    assert score.f1 == 1.0


def test_working_resolution_is_physical(tmp_path):
    """A 0.5 µm/px slide segmented on a 1 µm/px grid: centroids stay in µm."""
    centres = grid_centres(4, 3, 20.0)
    img, names = disc_image(centres, (70.0, 90.0), 0.5)
    slide = open_slide(write_slide(tmp_path / "h.ome.tif", img, names, 0.5))
    res = run_slide(slide, "s", segment=SegmentParams(mpp=1.0))
    assert res.table.uns["mpp"] == 1.0 and res.table.uns["slide_mpp"] == 0.5
    assert match_points(res.table.obs[["x_um", "y_um"]].to_numpy(), centres, 1.0)[0].f1 == 1.0


def test_no_nuclear_channel_is_one_line(tmp_path):
    img, names = disc_image(grid_centres(2, 2, 18.0), (40.0, 40.0), 1.0)
    names = ["CD3", "CD45", "PanCK"]
    slide = open_slide(write_slide(tmp_path / "x.ome.tif", img, names, 1.0))
    with pytest.raises(PanelMismatchError) as err:
        segment_slide(slide)
    msg = str(err.value)
    assert "\n" not in msg and "no nuclear channel" in msg and "CD3" in msg


def test_empty_slide_gives_empty_table(tmp_path):
    img, names = disc_image(np.empty((0, 2)), (40.0, 40.0), 1.0)
    slide = open_slide(write_slide(tmp_path / "e.ome.tif", img, names, 1.0))
    res = run_slide(slide, "e", tmp_path / "out")
    assert len(res.table) == 0
    assert (tmp_path / "out" / "cells.h5ad").is_file()


class _Squares:
    """A fake backend: one 4x4 square per 10 px, grown by 1 px."""

    def segment(self, nuclear, membrane, mpp):
        lab = np.zeros(nuclear.shape, np.int32)
        k = 0
        for y in range(2, nuclear.shape[0] - 5, 10):
            for x in range(2, nuclear.shape[1] - 5, 10):
                k += 1
                lab[y : y + 4, x : x + 4] = k
        cells = lab.copy()
        cells[cells == 0] = 0
        return lab, cells


def test_fake_backend_through_registry(disc_slide):
    path, _ = disc_slide
    register_backend("fake-squares")(lambda **kw: _Squares())
    backend = make_backend("fake-squares")
    cells, nuclei, _ = segment_slide(open_slide(path), SegmentParams(backend="fake-squares"))
    assert cells.max() == 10 * 12 and len(np.unique(cells)) == 10 * 12 + 1
    assert (np.bincount(cells.ravel())[1:] == 16).all()
    # tiles see windows whose grid differs, yet each square is kept once
    tiled, _, _ = segment_slide(open_slide(path), SegmentParams(tile_um=32, halo_um=8),
                                backend=backend)  # fmt: skip
    assert len(np.unique(tiled)) - 1 == tiled.max()


def test_unknown_and_missing_backends():
    with pytest.raises(BackendError, match="unknown segmentation backend"):
        make_backend("nope")
    pytest.importorskip("numpy")
    try:
        import cellpose  # noqa: F401
    except ImportError:
        with pytest.raises(BackendError, match="not installed"):
            make_backend("cellpose", model_path="/nonexistent")
