"""Akoya QPTIFF (Vectra/PhenoImager) and inForm component_data TIFFs.

Each page carries a PerkinElmer-QPI XML description: ``ImageType`` is FullResolution (a channel),
ReducedResolution (a pyramid level), or Thumbnail/Overview/Label (never channels); the channel
name is the top-level ``Name`` element.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import tifffile

from immunoplex.errors import SlideReadError
from immunoplex.io.base import Plane, Slide, tag_mpp
from immunoplex.io.segments import PageReader

_DECL = re.compile(r"^\s*<\?xml[^>]*\?>")


def qpi_xml(page: tifffile.TiffPage) -> ET.Element | None:
    desc = page.description or ""
    try:
        return ET.fromstring(_DECL.sub("", desc))
    except ET.ParseError:
        return None


class QptiffSlide(Slide):
    """QPTIFF / inForm component data; ``channel_colors`` holds the file's display colours."""

    format = "qptiff"

    def __init__(self, path: Path, tif: tifffile.TiffFile, mpp: float | None = None) -> None:
        super().__init__(path, mpp=mpp)
        self._files.append(tif)
        src = str(path)
        fd = self._open_fd(path)
        full: list[tuple[tifffile.TiffPage, ET.Element | None]] = []
        reduced: list[tifffile.TiffPage] = []
        for page in tif.pages:
            page = page.keyframe if isinstance(page, tifffile.TiffFrame) else page
            root = qpi_xml(page)
            kind = (root.findtext("ImageType") if root is not None else None) or ""
            kind = kind.strip()
            if kind == "FullResolution" or (not kind and not full):
                full.append((page, root))
            elif kind == "ReducedResolution":
                reduced.append(page)
            # Thumbnail / Overview / Label / Macro: not channels, not levels
        if not full:
            raise SlideReadError(f"{src}: QPTIFF without full-resolution pages")
        names: list[str] = []
        colors: list[str | None] = []
        planes: list[Plane] = []
        for i, (page, root) in enumerate(full):
            name = (root.findtext("Name") if root is not None else None) or f"Channel {i}"
            reader = PageReader(page, fd, src)
            spp = reader.layout.samples
            for s in range(spp):
                names.append(name.strip() if spp == 1 else f"{name.strip()} {s}")
                colors.append(root.findtext("Color") if root is not None else None)
                planes.append(Plane(reader, s))
        self._planes = [planes]
        # reduced-resolution pages come in groups of one page per channel, largest first
        n_pages = len(full)
        for k in range(0, len(reduced) - n_pages + 1, n_pages):
            group = reduced[k : k + n_pages]
            level: list[Plane] = []
            for page in group:
                reader = PageReader(page, fd, src)
                level.extend(Plane(reader, s) for s in range(reader.layout.samples))
            self._planes.append(level)
        self.channels = names
        self.channel_source = "file (QPI XML)"
        self.channel_colors = colors
        page0, root0 = full[0]
        file_mpp = tag_mpp(page0)
        if file_mpp is None and root0 is not None:
            px = root0.findtext(".//ScanResolution/PixelSizeMicrons")
            file_mpp = float(px) if px else None
        self._finish(file_mpp)
