"""Generic TIFF: a multi-page stack (one page per channel) or a multi-sample page."""

from __future__ import annotations

from pathlib import Path

import tifffile

from immunoplex.errors import SlideReadError
from immunoplex.io.base import Plane, Slide, series_planes, strip_suffix, tag_mpp
from immunoplex.io.segments import PageReader


def imagej_mpp(tif: tifffile.TiffFile) -> float | None:
    """µm/px from an ImageJ hyperstack whose unit is microns."""
    meta = tif.imagej_metadata or {}
    unit = str(meta.get("unit", "")).lower().replace("\\u00b5", "µ")
    if unit not in ("micron", "microns", "um", "µm"):
        return None
    tags = tif.pages[0].tags
    if "XResolution" not in tags:
        return None
    num, den = tags["XResolution"].value
    return den / num if num else None


class GenericTiffSlide(Slide):
    """Any other TIFF: channels are pages (tifffile's first series) and/or samples."""

    format = "tiff"

    def __init__(self, path: Path, tif: tifffile.TiffFile, mpp: float | None = None) -> None:
        super().__init__(path, mpp=mpp)
        self._files.append(tif)
        src = str(path)
        if not tif.series:
            raise SlideReadError(f"{src}: no image series")
        series = tif.series[0]
        fd = self._open_fd(path)
        table = series_planes(series, fd, src)
        main = self._main_pages(tif)
        if len(main) > len(series.pages):
            # pages written as separate series (one per channel): stack the main-chain pages
            table = [
                [
                    (PageReader(pg, fd, src), s)
                    for pg in main
                    for s in range(int(pg.samplesperpixel))
                ]
            ]
            table += self._reduced_levels(tif, main, fd, src)
        self._planes = [[Plane(r, s) for r, s in lvl] for lvl in table]
        self.channels = self._names(tif, series)
        page = tif.pages[0]
        self._finish(imagej_mpp(tif) if tif.is_imagej else tag_mpp(page))

    @staticmethod
    def _main_pages(tif: tifffile.TiffFile) -> list[tifffile.TiffPage]:
        """Full-resolution pages of the main IFD chain shaped like the first page."""
        first = tif.pages[0]
        key = (first.imagelength, first.imagewidth, first.dtype, first.samplesperpixel)
        out = []
        for pg in tif.pages:
            pg = pg.keyframe if isinstance(pg, tifffile.TiffFrame) else pg
            if int(pg.subfiletype) & 1:
                continue
            if (pg.imagelength, pg.imagewidth, pg.dtype, pg.samplesperpixel) == key:
                out.append(pg)
        return out

    @staticmethod
    def _reduced_levels(
        tif: tifffile.TiffFile, main: list[tifffile.TiffPage], fd: int, src: str
    ) -> list[list[tuple[PageReader, int]]]:
        """Pyramid levels from each channel page's SubIFDs (when all pages have the same)."""
        subs = [list(pg.pages) if pg.subifds else [] for pg in main]
        n = min(len(x) for x in subs) if subs else 0
        levels = []
        for lv in range(n):
            levels.append(
                [
                    (PageReader(x[lv], fd, src), s)
                    for x in subs
                    for s in range(int(x[lv].samplesperpixel))
                ]
            )
        return levels

    def _names(self, tif: tifffile.TiffFile, series: tifffile.TiffPageSeries) -> list[str]:
        planes = self._planes[0]
        n = len(planes)
        pages = []
        for p in planes:
            if p.reader.page not in pages:
                pages.append(p.reader.page)
        names: list[str] = []
        if len(pages) == n:
            for pg in pages:
                tags = getattr(pg, "tags", None)
                if tags is None or "PageName" not in tags:
                    break
                names.append(strip_suffix(str(tags["PageName"].value)))
        if len(names) == n:
            self.channel_source = "file (PageName tags)"
            return names
        labels = (tif.imagej_metadata or {}).get("Labels") if tif.is_imagej else None
        if labels and len(labels) == n:
            self.channel_source = "file (ImageJ labels)"
            return [str(x) for x in labels]
        self.anonymous = True  # named from outside if possible (see io.names)
        self.channel_source = "none (the file names no channels)"
        return [f"Channel {i}" for i in range(n)]
