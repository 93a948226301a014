"""Channel names given from outside a file: manifest column, steinbock ``panel.csv``, names file.

Plain multi-page TIFFs (IMC exports, steinbock ``img/*.tiff``) carry no channel names; readers
then fall back to ``Channel 0..n-1`` and set ``slide.anonymous``. Names are resolved in this
order (the first that applies wins):

1. ``ChannelNames`` given to :func:`open_slide` with ``explicit=True`` (the manifest ``channels``
   column, ``;``-separated): renames any slide, named or not;
2. names stored in the file itself (OME-XML, PageName, ImageJ labels, IMC metadata...);
3. a steinbock ``panel.csv`` beside the image or in its parent folder (kept rows, in order;
   when its ``channel`` column holds metal tags and the file records no pixel size, the slide is
   taken at IMC's 1 µm/px);
4. a channel-names file given on the command line (``--channel-names FILE``);
5. ``Channel 0..n-1`` (anonymous).

A count mismatch, a duplicated name or a panel without a ``name`` column is one
:class:`SlideReadError` line naming the file. ``slide.channel_source`` says where names came from.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from immunoplex.errors import SlideReadError

PANEL_NAMES = ("panel.csv",)
IMC_MPP = 1.0
_METAL = re.compile(r"^(?:[A-Z][a-z]?\d{2,3}|\d{2,3}[A-Z][a-z]?)$")
TRUE_TEXT = {"1", "1.0", "true", "yes", "y", "t"}


@dataclass(frozen=True)
class ChannelNames:
    """Channel names with where they came from (``source`` is shown by immunoplex-inspect)."""

    names: tuple[str, ...]
    source: str
    explicit: bool = True  # True: renames slides that have names of their own too

    @classmethod
    def of(cls, names: Sequence[str], source: str, explicit: bool = True) -> ChannelNames:
        return cls(tuple(str(n).strip() for n in names), source, explicit)


def split_names(text: str, source: str) -> list[str]:
    """``"DAPI; CD8 ;PanCK"`` -> ``["DAPI", "CD8", "PanCK"]``; empty or duplicated names raise."""
    names = [t.strip() for t in str(text).split(";")]
    if names and names[-1] == "":
        names = names[:-1]  # a trailing ';'
    if not names or any(n == "" for n in names):
        raise SlideReadError(f"{source}: empty channel name in {text!r}")
    check_unique(names, source)
    return names


def check_unique(names: Sequence[str], source: str) -> None:
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in seen:
            raise SlideReadError(
                f"{source}: duplicated channel name {n!r} (entries {seen[n] + 1} and {i + 1})"
            )
        seen[n] = i


def _read_csv(path: Path):  # type: ignore[no-untyped-def]  # -> pandas.DataFrame
    import pandas as pd

    sep = "\t" if path.suffix.lower() in {".tsv", ".txt"} else ","
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SlideReadError(f"{path}: cannot read channel panel ({reason})") from None


def read_panel(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """A steinbock ``panel.csv``: (names, metal tags) of the kept rows, in file order.

    Needs a ``name`` column; ``keep`` (1/0) selects rows when present (else all rows are kept);
    ``channel`` (the metal tag) is optional.
    """
    p = Path(path)
    df = _read_csv(p)
    cols = {c.strip().lower(): c for c in df.columns}
    if "name" not in cols:
        raise SlideReadError(f"{p}: channel panel has no 'name' column (has {list(df.columns)})")
    if "keep" in cols:
        df = df[[str(v).strip().lower() in TRUE_TEXT for v in df[cols["keep"]]]]
    names = [str(v).strip() for v in df[cols["name"]]]
    metals = [str(v).strip() for v in df[cols["channel"]]] if "channel" in cols else names
    for i, n in enumerate(names):
        if not n:
            raise SlideReadError(f"{p}: kept panel row {i + 1} has an empty name")
    if not names:
        raise SlideReadError(f"{p}: channel panel keeps no channels")
    check_unique(names, str(p))
    return names, metals


def read_names_file(path: str | os.PathLike[str]) -> ChannelNames:
    """A channel-names file: a panel table (``.csv``/``.tsv`` with a ``name`` column) or plain
    text with one name per line (blank lines and ``#`` comments ignored)."""
    p = Path(path)
    if not p.is_file():
        raise SlideReadError(f"{p}: channel-names file not found")
    if p.suffix.lower() in {".csv", ".tsv"}:
        names, _ = read_panel(p)
    else:
        try:
            lines = p.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise SlideReadError(f"{p}: cannot read channel-names file ({err})") from None
        names = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not names:
            raise SlideReadError(f"{p}: channel-names file lists no names")
        check_unique(names, str(p))
    return ChannelNames.of(names, f"channel-names file {p}", explicit=False)


def find_panel(image: str | os.PathLike[str]) -> Path | None:
    """``panel.csv`` beside ``image`` or in its parent folder (steinbock: ``img/../panel.csv``)."""
    p = Path(image)
    here = p if p.is_dir() and not is_zarr_dir(p) else p.parent
    for d in (here, here.parent):
        for name in PANEL_NAMES:
            cand = d / name
            if cand.is_file():
                return cand
    return None


def is_zarr_dir(p: Path) -> bool:
    return p.is_dir() and any((p / m).is_file() for m in (".zattrs", ".zgroup", "zarr.json"))


def apply_names(slide: object, names: ChannelNames, what: str) -> None:
    """Set ``slide.channels`` from ``names`` (count checked); ``what`` names the names' file."""
    channels = slide.channels  # type: ignore[attr-defined]
    if len(names.names) != len(channels):
        raise SlideReadError(
            f"{slide.path}: {what} gives {len(names.names)} channel names but the image has "  # type: ignore[attr-defined]
            f"{len(channels)} channels"
        )
    check_unique(names.names, what)
    slide.channels = list(names.names)  # type: ignore[attr-defined]
    slide.channel_source = names.source  # type: ignore[attr-defined]
    slide.anonymous = False  # type: ignore[attr-defined]


def resolve_names(slide: object, names: ChannelNames | None = None) -> None:
    """Name ``slide``'s channels by the precedence in the module docstring (in place).

    ``names`` with ``explicit=True`` (manifest column) renames any slide; ``explicit=False``
    (a names file) names only an anonymous slide that no ``panel.csv`` names."""
    if names is not None and names.explicit:
        apply_names(slide, names, names.source)
        return
    if not getattr(slide, "anonymous", False):
        return
    panel = find_panel(slide.path)  # type: ignore[attr-defined]
    if panel is not None:
        found, metals = read_panel(panel)
        apply_names(slide, ChannelNames.of(found, f"panel {panel}"), str(panel))
        slide.channel_labels = metals  # type: ignore[attr-defined]
        if slide.mpp is None and metals and all(_METAL.match(m) for m in metals):  # type: ignore[attr-defined]
            slide.mpp = IMC_MPP  # a steinbock (IMC) panel: IMC's native 1 µm/px  # type: ignore[attr-defined]
        return
    if names is not None:
        apply_names(slide, names, names.source.removeprefix("channel-names file "))


def manifest_names(value: object, where: str, column: str = "channels") -> ChannelNames | None:
    """The ``;``-separated manifest cell ``value`` as explicit names (None when empty)."""
    text = "" if value is None else str(value).strip()
    if text == "" or text.lower() in {"nan", "none", "na"}:
        return None
    return ChannelNames.of(split_names(text, where), f"manifest column {column!r}")


def names_key(image: str | os.PathLike[str], names: ChannelNames | None = None) -> str | None:
    """A digest of everything outside the image file that can name its channels (cache keys)."""
    parts: list[str] = []
    if names is not None:
        parts.append("\x1f".join(names.names) + f":{names.explicit}")
    panel = find_panel(image)
    if panel is not None:
        parts.append("panel:" + hashlib.sha1(panel.read_bytes()).hexdigest())
    if not parts:
        return None
    return hashlib.sha1("\x1e".join(parts).encode()).hexdigest()[:16]
