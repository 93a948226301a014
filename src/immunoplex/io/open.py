"""``open_slide``: the one reader dispatch, by file content (not by extension).

Every reader imports only :mod:`immunoplex.io.base`; this module imports the readers, so there is
no cycle between the base and the formats.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from immunoplex.errors import SlideReadError
from immunoplex.io.base import TIFF_MAGIC, Slide, check_tiff, open_tiff
from immunoplex.io.folder import FolderSlide
from immunoplex.io.generic import GenericTiffSlide
from immunoplex.io.imc import ImcTxtSlide, looks_like_imc_txt
from immunoplex.io.mcd import McdSlide, is_mcd, split_selector
from immunoplex.io.mibitiff import MibiTiffSlide, is_mibitiff
from immunoplex.io.names import ChannelNames, read_names_file, resolve_names
from immunoplex.io.ngff import NgffSlide, is_ngff
from immunoplex.io.ometiff import OmeTiffSlide
from immunoplex.io.qptiff import QptiffSlide


def open_slide(
    path: str | os.PathLike[str],
    mpp: float | None = None,
    threads: int | None = None,
    channel_names: ChannelNames | Sequence[str] | None = None,
    names_file: str | os.PathLike[str] | None = None,
) -> Slide:
    """Open a slide, choosing the reader by content (not by extension).

    A folder is an OME-Zarr store (zarr metadata) or one single-channel TIFF per marker; a file
    is a TIFF (OME-TIFF, Akoya QPTIFF, Ionpath MIBItiff or generic), an IMC ``.mcd``
    (``file.mcd#<acquisition>``) or an IMC raw ``.txt`` export. ``mpp`` sets/overrides µm/px.
    ``channel_names`` (e.g. the manifest ``channels`` column) names the channels of any slide;
    ``names_file`` (a names/panel file) names only channels the file and a ``panel.csv`` beside
    it leave anonymous (precedence in :mod:`.names`).
    """

    p, selector = split_selector(path)
    names: ChannelNames | None
    if channel_names is None or isinstance(channel_names, ChannelNames):
        names = channel_names
    else:
        names = ChannelNames.of(list(channel_names), "given channel names")
    if names is None and names_file is not None:
        names = read_names_file(names_file)
    slide = _open(p, selector, mpp)
    try:
        resolve_names(slide, names)
    except BaseException:
        slide.close()
        raise
    if threads is not None:
        slide.threads = max(1, int(threads))
    return slide


def _open(p: Path, selector: str | None, mpp: float | None) -> Slide:
    if is_ngff(p):
        return NgffSlide(p, mpp=mpp)
    if p.is_dir():
        return FolderSlide(p, mpp=mpp)
    if p.is_file() and p.stat().st_size > 0:
        with open(p, "rb") as fh:
            head = fh.read(16)
        if head[:4] not in TIFF_MAGIC:
            if selector is not None or is_mcd(p, head):
                return McdSlide(p, selector, mpp=mpp)
            if looks_like_imc_txt(p, head):
                return ImcTxtSlide(p, mpp=mpp)
    check_tiff(p)
    if selector is not None:
        raise SlideReadError(f"{p}: '#{selector}' selects an acquisition, but this is not an .mcd")
    tif = open_tiff(p)
    slide: Slide
    try:
        if tif.is_ome:
            slide = OmeTiffSlide(p, tif, mpp=mpp)
        elif tif.is_qpi:
            slide = QptiffSlide(p, tif, mpp=mpp)
        elif is_mibitiff(tif):
            slide = MibiTiffSlide(p, tif, mpp=mpp)
        else:
            slide = GenericTiffSlide(p, tif, mpp=mpp)
    except SlideReadError:
        tif.close()
        raise
    except Exception as exc:  # metadata we cannot make sense of
        tif.close()
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SlideReadError(f"{p}: cannot read slide structure ({reason})") from None
    return slide
