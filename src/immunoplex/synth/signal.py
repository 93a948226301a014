"""Low-resolution truth masks of where the response-relevant biology sits in each slide.

``signal/<slide_id>.npy`` is a uint8 bit mask on the ``signal_mpp`` grid (4 µm/px by default): a
coarse pixel has a bit set when the feature is present in that 4x4 µm area (cells: their centre).
"""

from __future__ import annotations

import numpy as np

from immunoplex.synth.cells import Cells, CellType
from immunoplex.synth.fields import block_mean
from immunoplex.synth.tissue import TissueLayout

TISSUE = 1 << 0
TUMOUR = 1 << 1
BORDER = 1 << 2  # tumour-stroma border band (+- border_um)
CD8_INTRATUMOURAL = 1 << 3
CD8_STROMAL = 1 << 4
CLEVER1_MACROPHAGE = 1 << 5  # STAB1+ CD68+ cell
NEUTROPHIL = 1 << 6  # CD66b+ immature neutrophil (DKK1 axis)
VESSEL = 1 << 7

BITS = {
    "tissue": TISSUE,
    "tumour": TUMOUR,
    "border": BORDER,
    "cd8_intratumoural": CD8_INTRATUMOURAL,
    "cd8_stromal": CD8_STROMAL,
    "clever1_macrophage": CLEVER1_MACROPHAGE,
    "neutrophil": NEUTROPHIL,
    "vessel": VESSEL,
}

#: The regions whose content drives the true response probability.
RELEVANT = CD8_INTRATUMOURAL | BORDER | CLEVER1_MACROPHAGE | NEUTROPHIL


def relevant_regions(mask: np.ndarray) -> np.ndarray:
    """Boolean map of the response-relevant regions of a signal mask."""
    return (mask & RELEVANT) > 0


def signal_mask(layout: TissueLayout, cells: Cells, border_um: float) -> np.ndarray:
    """The uint8 bit mask for one slide (shape of the coarse grid)."""
    tissue = layout.coarse_tissue > 0.5
    tumour = (layout.coarse_tumour > 0.5) & tissue
    out = np.zeros(tissue.shape, np.uint8)
    out[tissue] |= TISSUE
    out[tumour] |= TUMOUR
    border = tissue & (
        (~tumour & (layout.dist_to_tumour_um <= border_um))
        | (tumour & (layout.dist_in_tumour_um <= border_um))
    )
    out[border] |= BORDER
    step = layout.step
    out[block_mean(layout.vessel_wall > 0.3, step) > 0.1] |= VESSEL
    cy, cx = cells.y // step, cells.x // step

    def mark(sel: np.ndarray, bit: int) -> None:
        np.bitwise_or.at(out, (cy[sel], cx[sel]), np.uint8(bit))

    cd8 = cells.kind == CellType.CD8
    mark(cd8 & cells.intratumoural, CD8_INTRATUMOURAL)
    mark(cd8 & ~cells.intratumoural, CD8_STROMAL)
    mark((cells.kind == CellType.MACROPHAGE) & cells.clever1, CLEVER1_MACROPHAGE)
    mark(cells.kind == CellType.NEUTROPHIL, NEUTROPHIL)
    return out
