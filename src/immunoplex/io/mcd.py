"""Imaging mass cytometry ``.mcd`` files (Fluidigm/Standard BioTools), read with ``readimc``.

An ``.mcd`` holds one or more acquisitions (ROIs); each is a slide, selected as
``file.mcd#<acquisition id or description>`` (a file with one acquisition needs no selector).
readimc parses the file's XML schema (UTF-16, at the end of the file); the pixels of an
acquisition are float32 records ``X, Y, Z, channel...`` between ``DataStartOffset`` and
``DataEndOffset``. When the records are in raster order (the instrument's normal output) windows
are read straight from a memory map of them (bounded memory); otherwise readimc places the
records by X/Y and the acquisition is held in memory. Channel names are the targets of the
channel labels (cleaned as in the ``.txt`` export: ``CD8a_1234((99))Dy162`` -> ``CD8a``),
falling back to the metal tags (``Dy162``). µm/px comes from ``AblationDistanceBetweenShotsX/Y``,
else IMC's 1 µm/px.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from immunoplex.errors import SlideReadError
from immunoplex.io.arraybase import ArraySlide
from immunoplex.io.imc import IMC_MPP, parse_channel, unique_targets

MCD_MARK = "<MCDSchema".encode("utf-16-le")


def split_selector(path: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """``"a.mcd#2"`` -> (Path("a.mcd"), "2"); paths that exist as given are not split."""
    text = os.fspath(path)
    p = Path(text)
    if "#" not in p.name or p.exists():
        return p, None
    head, _, sel = text.rpartition("#")
    return Path(head), sel


def slide_file(path: str | os.PathLike[str]) -> Path:
    """The file or folder on disk that ``path`` (maybe ``file.mcd#acquisition``) refers to."""
    return split_selector(path)[0]


def is_mcd(path: Path, head: bytes) -> bool:
    if path.suffix.lower() == ".mcd":
        return True
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(0, size - (4 << 20)))
        return MCD_MARK in fh.read()


def _open_mcd(path: Path) -> Any:
    from readimc import MCDFile

    f = MCDFile(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f.open()
    except Exception as exc:  # readimc raises IOError/ParseError/ValueError for broken files
        f.close()
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        cause = exc.__cause__
        if cause is not None and str(cause):
            reason += f": {str(cause).splitlines()[0]}"
        raise SlideReadError(f"{path}: corrupt or unreadable MCD file ({reason})") from None
    return f


def acquisitions(path: str | os.PathLike[str]) -> list[tuple[int, str]]:
    """(id, description) of every acquisition of an ``.mcd`` file, in id order."""
    p = slide_file(path)
    f = _open_mcd(p)
    try:
        return [(int(a.id), str(a.description or "")) for s in f.slides for a in s.acquisitions]
    finally:
        f.close()


def _pick(path: Path, acqs: list[Any], sel: str | None) -> Any:
    listing = ", ".join(f"{a.id} {a.description or ''!r}" for a in acqs)
    if not acqs:
        raise SlideReadError(f"{path}: MCD file has no acquisitions")
    if sel is None:
        if len(acqs) == 1:
            return acqs[0]
        raise SlideReadError(
            f"{path}: {len(acqs)} acquisitions ({listing}); select one as {path.name}#<id or "
            "description>"
        )
    by_id = [a for a in acqs if str(a.id) == sel.strip()]
    by_desc = [a for a in acqs if str(a.description or "").strip().lower() == sel.strip().lower()]
    found = by_id or by_desc
    if len(found) != 1:
        why = "matches several" if found else "matches none"
        raise SlideReadError(f"{path}: acquisition {sel!r} {why} of the file's ({listing})")
    return found[0]


def channel_names(acq: Any) -> tuple[list[str], list[str]]:
    """(names, metal tags): targets from the channel labels, else the metal tags."""
    metals = [str(m) for m in acq.channel_names]  # 'Dy162'
    targets = []
    for label, metal in zip(acq.channel_labels, metals, strict=True):
        label = str(label or "").strip()
        target = parse_channel(f"{label}({metal}Di)")[0] if label else metal
        targets.append(target or metal)
    return unique_targets(targets, metals), metals


class McdSlide(ArraySlide):
    """One acquisition of an ``.mcd`` file (``acquisition``: id and description)."""

    format = "imc-mcd"

    def __init__(self, path: Path, selector: str | None = None, mpp: float | None = None) -> None:
        super().__init__(path, mpp=mpp)
        f = _open_mcd(path)
        self._mcd = f
        try:
            acqs = [a for s in f.slides for a in s.acquisitions]
            acq = _pick(path, acqs, selector)
            self.acquisition = {"id": int(acq.id), "description": str(acq.description or "")}
            self.acquisitions = [(int(a.id), str(a.description or "")) for a in acqs]
            self.channels, self.channel_labels = channel_names(acq)
            self.channel_source = "file (MCD channel labels, else metal tags)"
            arr = self._pixels(f, acq, path)
            sx, sy = acq.pixel_size_x_um, acq.pixel_size_y_um
            file_mpp = IMC_MPP
            if sx and sy and sx > 0 and sy > 0:
                file_mpp = 0.5 * (float(sx) + float(sy))
            self._finish_arrays([arr], file_mpp)
        except SlideReadError:
            f.close()
            raise
        except Exception as exc:
            f.close()
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SlideReadError(f"{path}: corrupt or unreadable MCD file ({reason})") from None
        if selector is not None:
            self.path = Path(f"{path}#{selector}")

    def _pixels(self, f: Any, acq: Any, path: Path) -> Any:
        """(C, H, W) array-like: a transposed view of the memory-mapped records when they are
        in raster order, else readimc's in-memory placement by X/Y."""
        md = acq.metadata
        try:
            start, end = int(md["DataStartOffset"]), int(md["DataEndOffset"])
            value_bytes = int(md["ValueBytes"])
            w, h = int(md["MaxX"]), int(md["MaxY"])
        except (KeyError, ValueError):
            raise SlideReadError(f"{path}: acquisition {acq.id} lacks its data offsets") from None
        c = acq.num_channels
        rec = (c + 3) * value_bytes
        size = os.path.getsize(path)
        if value_bytes != 4 or not 0 <= start <= end <= size or (end - start) % rec:
            raise SlideReadError(
                f"{path}: acquisition {acq.id} data block [{start}, {end}) does not hold "
                f"float32 records of {c} channels (file has {size} bytes)"
            )
        n = (end - start) // rec
        if w <= 0 or h <= 0 or n == 0:
            raise SlideReadError(f"{path}: acquisition {acq.id} has no pixels ({w} x {h})")
        if n == w * h and _in_raster_order(path, start, h, w, c):
            mm = np.memmap(path, dtype="<f4", mode="r", offset=start, shape=(h, w, c + 3))
            return _RecordView(mm, c)
        logging.getLogger(__name__).info("%s: acquisition %s not in raster order", path, acq.id)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return f.read_acquisition(acq, strict=False)

    def describe(self) -> dict[str, object]:
        info = super().describe()
        info["acquisition"] = dict(self.acquisition)
        info["acquisitions"] = [list(a) for a in self.acquisitions]
        return info

    def close(self) -> None:
        super().close()
        self._arrays = []
        with contextlib.suppress(Exception):
            self._mcd.close()


def _in_raster_order(path: Path, start: int, h: int, w: int, c: int) -> bool:
    """Records row by row, X then Y (checked in blocks of rows; the map is dropped after)."""
    chk = np.memmap(path, dtype="<f4", mode="r", offset=start, shape=(h, w, c + 3))
    try:
        xs = np.arange(w, dtype=np.float32)
        step = max(1, (8 << 20) // max(1, w * (c + 3) * 4))
        for y0 in range(0, h, step):
            block = chk[y0 : y0 + step, :, :2]
            if not (block[:, :, 0] == xs).all():
                return False
            if not (block[:, :, 1] == np.arange(y0, y0 + len(block))[:, None]).all():
                return False
        return True
    finally:
        del chk


class _RecordView:
    """(C, H, W) view over memory-mapped (H, W, 3 + C) records; slicing copies only the window."""

    def __init__(self, records: np.memmap, c: int) -> None:
        self.records = records
        self.shape = (c, records.shape[0], records.shape[1])
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, key: tuple[Any, slice, slice]) -> np.ndarray:
        ch, ys, xs = key
        idx = np.arange(self.shape[0])[ch] + 3
        win = self.records[ys, xs]  # (h, w, 3 + C) rows of records: the window's pages only
        return np.ascontiguousarray(np.moveaxis(win[:, :, idx], -1, 0), dtype=np.float32)
