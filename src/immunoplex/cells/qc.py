"""QC overlay: cell outlines coloured by phenotype over a marker composite (PNG).

Small slides show every outline at the working resolution; larger ones are drawn at most
``max_size`` px per side with a dot per cell centroid instead of outlines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from immunoplex.cells.phenotype import PhenotypeScheme
from immunoplex.cells.quantify import CellTable
from immunoplex.cells.window import channel_indices, read_window, working_shape
from immunoplex.io import Slide
from immunoplex.utils.atomic import atomic_path

COMPOSITE = (("DAPI", (0.2, 0.4, 1.0)), ("PanCK", (1.0, 0.3, 0.3)), ("CD8", (0.2, 1.0, 0.2)),
             ("CD68", (1.0, 0.8, 0.1)), ("STAB1", (1.0, 0.2, 1.0)))  # fmt: skip


def _composite(slide: Slide, mpp: float, shape: tuple[int, int]) -> np.ndarray:
    rgb = np.zeros((*shape, 3), np.float32)
    for marker, colour in COMPOSITE:
        idx = channel_indices(slide.channels, [marker])
        if not idx:
            continue
        img = read_window(slide, idx[:1], 0, 0, shape[0], shape[1], mpp)[0]
        top = np.percentile(img, 99.5)
        img = np.clip(img / top, 0, 1) if top > 0 else img
        rgb += img[..., None] * np.asarray(colour, np.float32)
    return np.clip(rgb, 0, 1)


def render_qc(
    path: str | Path,
    slide: Slide,
    table: CellTable,
    mpp: float,
    labels: np.ndarray | None,
    scheme: PhenotypeScheme | None,
    max_size: int,
    title: str = "",
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    h, w = working_shape(slide, mpp)
    f = max(1.0, max(h, w) / max_size)
    qmpp = mpp * f
    shape = working_shape(slide, qmpp)
    rgb = _composite(slide, qmpp, shape)
    colours = scheme.colours() if scheme is not None else {}
    phen = table.obs["phenotype"].astype(str).to_numpy() if "phenotype" in table.obs else None

    def colour_of(names: np.ndarray) -> np.ndarray:
        return np.array([colours.get(n, (255, 255, 255)) for n in names], np.float32) / 255.0

    if labels is not None and f == 1.0 and len(table):
        edge = find_boundaries(labels, mode="inner")
        lut = np.zeros((int(labels.max()) + 1, 3), np.float32) + 1.0
        ids = table.obs["cell_id"].to_numpy()
        if phen is not None:
            lut[ids] = colour_of(phen)
        rgb[edge] = lut[labels[edge]]
    elif len(table):
        i = np.clip((table.obs["y_um"].to_numpy() / qmpp).astype(int), 0, shape[0] - 1)
        j = np.clip((table.obs["x_um"].to_numpy() / qmpp).astype(int), 0, shape[1] - 1)
        rgb[i, j] = colour_of(phen) if phen is not None else 1.0
    dpi = 100
    fig = plt.figure(figsize=(max(4, shape[1] / dpi), max(4, shape[0] / dpi) + 0.6), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 0.92))
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    if phen is not None:
        names, counts = np.unique(phen, return_counts=True)
        handles = [
            plt.Line2D([], [], marker="s", ls="", color=np.asarray(colours.get(n, (255,) * 3)) / 255,
                       label=f"{n} ({c})") for n, c in zip(names, counts)
        ]  # fmt: skip
        ax.legend(handles=handles, loc="upper right", fontsize=6, framealpha=0.6)
    fig.suptitle(f"{title}: {len(table)} cells", fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return Path(path)
