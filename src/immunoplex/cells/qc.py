"""QC overlay: cell outlines coloured by phenotype over the marker composite of
:mod:`immunoplex.tiles.qc` (PNG).

Small slides show every outline at the working resolution; larger ones are drawn at most
``max_size`` px per side with a dot per cell centroid instead of outlines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from immunoplex.cells.phenotype import PhenotypeScheme
from immunoplex.cells.quantify import CellTable
from immunoplex.cells.window import pick_level, read_window, working_shape
from immunoplex.io import Slide
from immunoplex.utils.atomic import atomic_path

#: Markers shown (those the slide has, by alias; at most six): the nuclear stain, then the
#: rule markers of the phenotype scheme, else these.
QC_MARKERS = ("DAPI", "PanCK", "CD8", "CD68", "STAB1", "CD66b")


def _plane(
    slide: Slide, channel: int, shape: tuple[int, int], mpp: float, budget: int = 64 << 20
) -> np.ndarray:
    """One channel on the ``mpp`` grid, read in row strips of at most ``budget`` bytes at the
    level read, so a slide without a pyramid is not read whole."""
    h, w = shape
    f = max(1.0, mpp / slide.level_mpp(pick_level(slide, mpp)[0]))
    rows = max(1, int(budget / (4 * f * f * max(w, 1))))
    out = np.empty((h, w), np.float32)
    for y in range(0, h, rows):
        n = min(rows, h - y)
        out[y : y + n] = read_window(slide, [channel], y, 0, n, w, mpp)[0]
    return out


def _composite(
    slide: Slide,
    mpp: float,
    shape: tuple[int, int],
    markers: list[str],
    aliases: Mapping[str, Sequence[str]] | None,
) -> tuple[np.ndarray, list[tuple[str, tuple[float, float, float]]]]:
    """The project's one marker composite (:func:`immunoplex.tiles.qc.composite`) at ``mpp``;
    returns it and (channel name, colour) per channel shown."""
    from immunoplex.tiles.qc import composite, marker_colours, qc_channels

    chans = qc_channels(slide, markers, aliases=aliases)
    names = [slide.channels[i] for i in chans]
    colours = marker_colours(names, aliases)
    planes = (_plane(slide, i, shape, mpp) for i in chans)
    rgb = composite(planes, colours).rgb
    return rgb, list(zip(names, colours))


def render_qc(
    path: str | Path,
    slide: Slide,
    table: CellTable,
    mpp: float,
    labels: np.ndarray | None,
    scheme: PhenotypeScheme | None,
    max_size: int,
    title: str = "",
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    h, w = working_shape(slide, mpp)
    f = max(1.0, max(h, w) / max_size)
    qmpp = mpp * f
    shape = working_shape(slide, qmpp)
    markers = list(QC_MARKERS)
    if scheme is not None:
        markers = ["DAPI", *[m for m in scheme.markers() if m != "DAPI"]]
    rgb, legend = _composite(slide, qmpp, shape, markers, aliases)
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
    if legend:
        chan = [plt.Line2D([], [], marker="s", ls="", color=c, label=n) for n, c in legend]
        first = ax.get_legend()
        ax.legend(handles=chan, loc="lower left", fontsize=6, framealpha=0.6, title="markers",
                  title_fontsize=6)  # fmt: skip
        if first is not None:
            ax.add_artist(first)
    fig.suptitle(f"{title}: {len(table)} cells", fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return Path(path)
