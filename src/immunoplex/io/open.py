"""``open_slide``: the one reader dispatch, by file content (not by extension).

Every reader imports only :mod:`immunoplex.io.base`; this module imports the readers, so there is
no cycle between the base and the formats.
"""

from __future__ import annotations

import os
from pathlib import Path

from immunoplex.errors import SlideReadError
from immunoplex.io.base import Slide, open_tiff
from immunoplex.io.folder import FolderSlide
from immunoplex.io.generic import GenericTiffSlide
from immunoplex.io.mibitiff import MibiTiffSlide, is_mibitiff
from immunoplex.io.ometiff import OmeTiffSlide
from immunoplex.io.qptiff import QptiffSlide


def open_slide(
    path: str | os.PathLike[str], mpp: float | None = None, threads: int | None = None
) -> Slide:
    """Open a slide, choosing the reader by content (not by extension).

    Folders are read as one single-channel TIFF per marker; files must be TIFFs and are read as
    OME-TIFF, Akoya QPTIFF, Ionpath MIBItiff or generic TIFF. ``mpp`` sets/overrides µm/px.
    """

    p = Path(path)
    if p.is_dir():
        slide: Slide = FolderSlide(p, mpp=mpp)
    else:
        tif = open_tiff(p)
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
    if threads is not None:
        slide.threads = max(1, int(threads))
    return slide
