"""Imaging mass cytometry (IMC) raw exports: the Fluidigm/Standard BioTools ``.txt`` table.

One row per pixel, tab-separated: ``Start_push End_push Pushes_duration X Y Z`` then one column
per channel named ``<target>_<clone>((<lot>))<metal>(<metal>Di)``, e.g.
``Cytoker_651((3356))Pr141(Pr141Di)`` -> target ``Cytoker``, metal ``Pr141``. A column without a
target (``107Ag(Ag107Di)``) is named by its metal. Pixels are placed by the X/Y columns (the
image is max(Y)+1 x max(X)+1; pixels not listed are 0). IMC ablates at 1 µm steps: 1 µm/px
unless ``mpp`` says otherwise. The whole acquisition is read into memory (float32), as these
files are small (a 1000 x 1000 x 40 acquisition is 160 MB as float32).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from immunoplex.errors import SlideReadError
from immunoplex.io.arraybase import ArraySlide

IMC_MPP = 1.0
META_COLUMNS = ("Start_push", "End_push", "Pushes_duration", "X", "Y", "Z")
_COLUMN = re.compile(r"^(?P<label>.*?)\((?P<tag>[A-Z][a-z]?\d{2,3})(?:Di)?\)\s*$")


def parse_channel(column: str) -> tuple[str, str]:
    """(target, metal tag) of an IMC channel header: 'CD8a_1(Dy162Di)' -> ('CD8a', 'Dy162').

    The target is what precedes the metal: a trailing ``((lot))`` and ``_clone`` number are
    dropped; without a target the metal tag is the name ('107Ag(Ag107Di)' -> ('Ag107', 'Ag107')).
    """
    text = str(column).strip()
    m = _COLUMN.match(text)
    if m is None:
        return text, text
    tag = m.group("tag")
    label = m.group("label").strip()
    element, mass = re.match(r"([A-Za-z]+)(\d+)", tag).groups()  # type: ignore[union-attr]
    for metal in (tag, f"{mass}{element}"):  # 'Cytoker_651((3356))Pr141' -> '...((3356))'
        if label.endswith(metal):
            label = label[: -len(metal)]
            break
    label = re.sub(r"\(\([^()]*\)\)$", "", label).strip()
    label = re.sub(r"_\d+$", "", label).strip(" _-")
    return (label or tag), tag


def unique_targets(targets: Sequence[str], metals: Sequence[str]) -> list[str]:
    """Targets, with ' (metal)' added to names two channels share ('DNA (Ir191)')."""
    out = []
    for t, m in zip(targets, metals, strict=True):
        out.append(f"{t} ({m})" if list(targets).count(t) > 1 and t != m else t)
    return out


def looks_like_imc_txt(path: Path, head: bytes) -> bool:
    return path.suffix.lower() == ".txt" or head.startswith(b"Start_push")


class ImcTxtSlide(ArraySlide):
    """An IMC acquisition exported as text. ``channel_labels`` keeps the metal tags."""

    format = "imc-txt"

    def __init__(self, path: Path, mpp: float | None = None) -> None:
        super().__init__(path, mpp=mpp)
        import pandas as pd

        src = str(path)
        try:
            df = pd.read_csv(path, sep="\t", low_memory=False)
        except (OSError, ValueError, UnicodeDecodeError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SlideReadError(f"{src}: cannot read IMC .txt ({reason})") from None
        df.columns = [str(c).strip() for c in df.columns]
        for axis in ("X", "Y"):
            if axis not in df.columns:
                raise SlideReadError(
                    f"{src}: IMC .txt has no {axis!r} column (columns: {list(df.columns)[:8]})"
                )
        cols = [c for c in df.columns if c not in META_COLUMNS]
        if not cols:
            raise SlideReadError(f"{src}: IMC .txt has no channel columns")
        if df.empty:
            raise SlideReadError(f"{src}: IMC .txt has no pixel rows")
        try:
            xs = df["X"].to_numpy(np.float64)
            ys = df["Y"].to_numpy(np.float64)
            values = df[cols].to_numpy(np.float32)
        except (ValueError, TypeError) as err:
            raise SlideReadError(f"{src}: IMC .txt has non-numeric values ({err})") from None
        for name, v in (("X", xs), ("Y", ys)):
            if not np.isfinite(v).all() or (v < 0).any() or (v != np.round(v)).any():
                raise SlideReadError(f"{src}: IMC .txt column {name!r} is not a pixel index")
        xi, yi = xs.astype(np.int64), ys.astype(np.int64)
        h, w = int(yi.max()) + 1, int(xi.max()) + 1
        img = np.zeros((len(cols), h, w), np.float32)
        img[:, yi, xi] = values.T
        parsed = [parse_channel(c) for c in cols]
        metals = [m for _, m in parsed]
        self.channels = unique_targets([t for t, _ in parsed], metals)
        self.channel_labels = metals
        self.channel_source = "file (IMC column headers)"
        self._finish_arrays([img], IMC_MPP)
