"""A folder of single-channel TIFFs, one per marker, file stem = marker name (MIBI/ark, CODEX)."""

from __future__ import annotations

from pathlib import Path

from immunoplex.errors import SlideReadError
from immunoplex.io.base import Plane, Slide, open_tiff, series_planes, tag_mpp
from immunoplex.io.panel import marker_key

TIFF_SUFFIXES = (".tif", ".tiff")


def marker_files(folder: Path) -> list[Path]:
    """TIFF files of a folder slide, sorted by name (hidden files ignored)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in TIFF_SUFFIXES
    )


def stem(path: Path) -> str:
    name = path.name
    for suf in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


def check_channel_names(folder: Path, files: list[Path]) -> None:
    """Markers are matched by :func:`~immunoplex.io.panel.marker_key` (case, punctuation and
    suffixes ignored), so ``CD8.tif`` and ``cd8.tif`` (or ``CD8.tif`` and ``CD8.tiff``) would be
    the same channel: refuse instead of resolving one of them silently."""
    seen: dict[str, Path] = {}
    for f in files:
        key = marker_key(stem(f))
        if key in seen:
            raise SlideReadError(
                f"{folder}: {seen[key].name} and {f.name} name the same channel "
                f"({stem(seen[key])!r} vs {stem(f)!r}, marker names ignore case and punctuation); keep one"
            )
        seen[key] = f


class FolderSlide(Slide):
    """One channel per TIFF; all files must share the size (and pyramid, to use its levels)."""

    format = "folder"

    def __init__(self, path: Path, mpp: float | None = None) -> None:
        super().__init__(path, mpp=mpp)
        files = marker_files(path)
        if not files:
            raise SlideReadError(f"{path}: folder contains no .tif/.tiff files")
        check_channel_names(path, files)
        per_file: list[list[Plane]] = []
        mpps: list[float | None] = []
        for f in files:
            tif = open_tiff(f)
            self._files.append(tif)
            fd = self._open_fd(f)
            table = series_planes(tif.series[0], fd, str(f))
            if len(table[0]) != 1:
                raise SlideReadError(
                    f"{f}: folder slides need single-channel TIFFs (found {len(table[0])} channels)"
                )
            per_file.append([Plane(*lvl[0]) for lvl in table])
            mpps.append(tag_mpp(tif.pages[0]))
        shapes = {(p[0].reader.layout.height, p[0].reader.layout.width) for p in per_file}
        if len(shapes) != 1:
            raise SlideReadError(f"{path}: marker images differ in size {sorted(shapes)}")
        n_levels = min(len(p) for p in per_file)
        self._planes = [[p[lv] for p in per_file] for lv in range(n_levels)]
        self.channels = [stem(f) for f in files]
        self.channel_source = "file names (one TIFF per marker)"
        known = {round(m, 6) for m in mpps if m is not None}
        file_mpp = mpps[0] if len(known) == 1 and None not in mpps else None
        self._finish(file_mpp)
