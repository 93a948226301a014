"""OME-TIFF: channel names and physical pixel size from the OME-XML; pyramids as SubIFDs or
series levels (both exposed by tifffile as ``series.levels``)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import tifffile

from immunoplex.errors import SlideReadError
from immunoplex.io.base import Plane, Slide, series_planes

_UNIT_UM = {
    "µm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "nm": 1e-3,
    "Å": 1e-4,
    "pm": 1e-6,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_ome(xml: str) -> list[dict[str, object]]:
    """Per OME Image: name, channel names and µm/px (None when not recorded)."""
    try:
        root = ET.fromstring(xml.encode("utf-8") if isinstance(xml, str) else xml)
    except ET.ParseError as exc:
        raise ValueError(f"invalid OME-XML ({exc})") from None
    images = []
    for image in root:
        if _local(image.tag) != "Image":
            continue
        pixels = next((e for e in image if _local(e.tag) == "Pixels"), None)
        if pixels is None:
            continue
        names = [ch.get("Name") for ch in pixels if _local(ch.tag) == "Channel"]
        mpp = None
        sx, sy = pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeY")
        if sx:
            unit = pixels.get("PhysicalSizeXUnit", "µm")
            factor = _UNIT_UM.get(unit)
            vals = [float(sx)] + ([float(sy)] if sy else [])
            if factor is not None and all(v > 0 for v in vals):
                mpp = factor * sum(vals) / len(vals)
        images.append({"name": image.get("Name"), "channels": names, "mpp": mpp})
    return images


class OmeTiffSlide(Slide):
    """OME-TIFF, tiled or stripped, pyramidal through SubIFDs or series levels."""

    format = "ome-tiff"

    def __init__(self, path: Path, tif: tifffile.TiffFile, mpp: float | None = None) -> None:
        super().__init__(path, mpp=mpp)
        self._files.append(tif)
        src = str(path)
        try:
            images = parse_ome(tif.ome_metadata or "")
        except ValueError as exc:
            raise SlideReadError(f"{src}: {exc}") from None
        series = list(tif.series)
        if not series:
            raise SlideReadError(f"{src}: no image series")

        # the main image is the largest series (macro/label images are separate, smaller series)
        def area(s: tifffile.TiffPageSeries) -> int:
            kf = s.keyframe
            return int(kf.imagelength) * int(kf.imagewidth)

        si = max(range(len(series)), key=lambda i: (area(series[i]), -i))
        main = series[si]
        meta = next((m for m in images if m["name"] and m["name"] == main.name), None)
        if meta is None and si < len(images):
            meta = images[si]
        fd = self._open_fd(path)
        table = series_planes(main, fd, src)
        self._planes = [[Plane(r, s) for r, s in lvl] for lvl in table]
        n = len(self._planes[0])
        names = list(meta["channels"]) if meta else []  # type: ignore[arg-type]
        if len(names) != n or any(not nm for nm in names):
            spp = self._planes[0][0].reader.layout.samples
            if len(names) * spp == n and spp > 1 and all(names):
                names = [f"{nm} {s}" for nm in names for s in range(spp)]
            else:
                names = [nm or f"Channel {i}" for i, nm in enumerate(names[:n])]
                names += [f"Channel {i}" for i in range(len(names), n)]
        self.channels = [str(nm) for nm in names]
        self.channel_source = "file (OME-XML)"
        if all(nm == f"Channel {i}" for i, nm in enumerate(self.channels)):
            self.anonymous = True
            self.channel_source = "none (the OME-XML names no channels)"
        self._finish(meta["mpp"] if meta else None)  # type: ignore[arg-type]
