"""Ionpath MIBItiff: one page per mass channel, marker in the PageName tag ("CD8 (158)")."""

from __future__ import annotations

import json
from pathlib import Path

import tifffile

from immunoplex.errors import SlideReadError
from immunoplex.io.base import Plane, Slide, strip_suffix, tag_mpp
from immunoplex.io.segments import PageReader


def _description_json(page: tifffile.TiffPage) -> dict[str, object]:
    desc = page.description or ""
    if not desc.lstrip().startswith("{"):
        return {}
    try:
        data = json.loads(desc)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def is_mibitiff(tif: tifffile.TiffFile) -> bool:
    """Ionpath software tag, or ``mibi.*`` keys in the JSON description."""
    page = tif.pages[0]
    software = str(page.tags["Software"].value) if "Software" in page.tags else ""
    if software.startswith("IonpathMIBI"):
        return True
    return any(str(k).startswith("mibi.") for k in _description_json(page))


class MibiTiffSlide(Slide):
    """MIBItiff field of view. ``channel_labels`` keeps the PageName text ("CD8 (158)")."""

    format = "mibitiff"

    def __init__(self, path: Path, tif: tifffile.TiffFile, mpp: float | None = None) -> None:
        super().__init__(path, mpp=mpp)
        self._files.append(tif)
        src = str(path)
        fd = self._open_fd(path)
        planes: list[Plane] = []
        labels: list[str] = []
        for i, page in enumerate(tif.pages):
            page = page.keyframe if isinstance(page, tifffile.TiffFrame) else page
            if int(page.subfiletype) & 1:  # reduced-resolution page
                continue
            meta = _description_json(page)
            if "PageName" in page.tags:
                label = str(page.tags["PageName"].value)
            elif "channel.target" in meta:
                label = str(meta["channel.target"])
            else:
                raise SlideReadError(f"{src}: MIBItiff page {i} has no PageName")
            labels.append(label)
            planes.append(Plane(PageReader(page, fd, src), 0))
        self.channel_labels = labels
        self.channels = [strip_suffix(x) for x in labels]
        self.channel_source = "file (PageName tags)"
        self._planes = [planes]
        meta0 = _description_json(tif.pages[0])
        file_mpp = None
        size_um = meta0.get("mibi.size")
        if isinstance(size_um, (int, float)) and size_um > 0:
            file_mpp = float(size_um) / planes[0].reader.layout.width
        else:
            file_mpp = tag_mpp(tif.pages[0])
        self._finish(file_mpp)
