"""Marker panels matched to slides by name through one alias table.

``configs/panel/default.yaml`` holds the alias table (canonical name -> synonyms); a Panel can
extend it. Names compare case- and punctuation-insensitively after stripping mass/fluor suffixes
such as "CD8 (158)" or "DAPI (DAPI)". Channel order never matters; extra channels are ignored.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from immunoplex.errors import ConfigError, PanelMismatchError

_SUFFIX = re.compile(r"\s*[\(\[][^\)\]]*[\)\]]\s*$")
# isotope tags of mass cytometry/MIBI exports: "CD8_158Gd", "158Gd_CD8", "Nd142-CD8"
_ISOTOPE_TAIL = re.compile(r"[\s_\-\.]+\(?\d{2,3}[A-Z][a-z]?\)?$|[\s_\-\.]+[A-Z][a-z]?\d{2,3}$")
_ISOTOPE_HEAD = re.compile(r"^\(?\d{2,3}[A-Z][a-z]?\)?[\s_\-\.]+|^[A-Z][a-z]?\d{2,3}[\s_\-\.]+")
_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def _alias_file() -> Path | None:
    from immunoplex.paths import config_dir, repo_root

    candidates = [config_dir() / "panel" / "default.yaml"]
    root = repo_root()
    if root is not None:
        candidates.append(root / "configs" / "panel" / "default.yaml")
    return next((c for c in candidates if c.is_file()), None)


@functools.lru_cache(maxsize=1)
def default_panel_config() -> dict[str, Any]:
    """The shipped ``panel/default.yaml`` (markers, required, aliases)."""
    path = _alias_file()
    if path is None:
        raise ConfigError("panel/default.yaml not found in the configs directory")
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    return data


def default_aliases() -> dict[str, list[str]]:
    """Canonical marker -> synonyms from the shipped alias table."""
    raw = default_panel_config().get("aliases") or {}
    return {str(k): [str(x) for x in (v or [])] for k, v in raw.items()}


def clean_name(name: str) -> str:
    """Strip a trailing '(…)' suffix and isotope tags: 'CD8 (158)' -> 'CD8'."""
    s = str(name).strip()
    prev = None
    while prev != s:
        prev = s
        s = _SUFFIX.sub("", s).strip() or s
    s = _ISOTOPE_TAIL.sub("", s) or s
    s = _ISOTOPE_HEAD.sub("", s) or s
    return s.strip()


def marker_key(name: str) -> str:
    """Comparison key: suffix-stripped, lower case, letters and digits only."""
    key = _NON_ALNUM.sub("", clean_name(name).lower())
    return key or _NON_ALNUM.sub("", str(name).lower())


def build_lookup(aliases: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """key -> canonical name, for canonical names and all their synonyms."""
    lookup: dict[str, str] = {}
    for canon, syns in aliases.items():
        for n in [canon, *syns]:
            lookup.setdefault(marker_key(n), canon)
        lookup[marker_key(canon)] = canon
    return lookup


def merge_aliases(
    base: Mapping[str, Sequence[str]], extra: Mapping[str, Sequence[str]] | None
) -> dict[str, list[str]]:
    """``base`` extended by ``extra`` (synonym lists are unioned)."""
    out = {k: list(v) for k, v in base.items()}
    for k, v in (extra or {}).items():
        # an extra entry may name an existing canonical marker through one of its synonyms
        target = build_lookup(out).get(marker_key(k), k)
        cur = out.setdefault(target, [])
        for s in [k, *v] if target != k else v:
            if s not in cur and s != target:
                cur.append(s)
    return out


def canonical_marker(name: str, aliases: Mapping[str, Sequence[str]] | None = None) -> str:
    """Canonical marker name ('CD8 (158)' -> 'CD8', 'PanKeratin' -> 'PanCK').

    Unknown names come back cleaned but otherwise as given.
    """
    table = merge_aliases(default_aliases(), aliases)
    return build_lookup(table).get(marker_key(name), clean_name(name))


@dataclass(frozen=True)
class PanelMatch:
    """For each panel marker, the slide channel index (None when absent), and what is missing."""

    indices: list[int | None]
    missing: list[str]

    @property
    def present(self) -> list[bool]:
        return [i is not None for i in self.indices]


@dataclass
class Panel:
    """An ordered list of markers (model channel order) with an extendable alias table."""

    markers: list[str]
    aliases: dict[str, list[str]] | None = field(default=None)

    def __post_init__(self) -> None:
        self.markers = [str(m) for m in self.markers]
        if not self.markers:
            raise ConfigError("a panel needs at least one marker")
        table = merge_aliases(default_aliases(), self.aliases)
        self._table = table
        self._lookup = build_lookup(table)
        canon = [self.canonical(m) for m in self.markers]
        dup = sorted({c for c in canon if canon.count(c) > 1})
        if dup:
            raise ConfigError(f"panel lists the same marker twice (as aliases): {dup}")

    def canonical(self, name: str) -> str:
        return self._lookup.get(marker_key(name), clean_name(name))

    def __len__(self) -> int:
        return len(self.markers)

    def to_dict(self) -> dict[str, Any]:
        return {"markers": list(self.markers), "aliases": dict(self.aliases or {})}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Panel:
        aliases = d.get("aliases") or {}
        return cls(
            markers=list(d["markers"]),
            aliases={str(k): [str(x) for x in (v or [])] for k, v in dict(aliases).items()},
        )

    @classmethod
    def default(cls) -> Panel:
        """The panel of ``configs/panel/default.yaml``."""
        return cls(markers=list(default_panel_config()["markers"]))


def resolve_markers(
    markers: Sequence[str],
    slide_channels: Sequence[str],
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> list[int | None]:
    """The slide channel of each marker by (aliased) name, ``None`` where the slide lacks it.

    The one marker -> channel resolver (panel matching, tissue detection, QC and heatmap
    composites): names are compared after canonicalisation with the shipped alias table plus
    ``aliases``; when several channels carry one stain (e.g. DAPI and HH3) the exact name wins.
    """
    lookup = build_lookup(merge_aliases(default_aliases(), aliases))

    def canon(name: str) -> str:
        return lookup.get(marker_key(name), clean_name(name))

    by_canon: dict[str, list[int]] = {}
    for i, ch in enumerate(slide_channels):
        by_canon.setdefault(canon(ch), []).append(i)
    out: list[int | None] = []
    for m in markers:
        cands = by_canon.get(canon(m), [])
        exact = [i for i in cands if marker_key(slide_channels[i]) == marker_key(m)]
        out.append((exact or cands)[0] if cands else None)
    return out


def match_panel(
    panel: Panel,
    slide_channels: Sequence[str],
    source: str | Path = "slide",
    required: Sequence[str] | None = None,
) -> PanelMatch:
    """Map each panel marker to a slide channel by (aliased) name.

    ``required=None`` requires every panel marker; ``required=[]`` allows any to be missing.
    Raises PanelMismatchError naming the missing markers and the slide's channels.
    """
    indices = resolve_markers(panel.markers, slide_channels, panel.aliases)
    missing = [m for m, i in zip(panel.markers, indices, strict=True) if i is None]
    req = list(panel.markers) if required is None else [str(r) for r in required]
    req_canon = {panel.canonical(r) for r in req}
    unknown = [
        r for r in req if panel.canonical(r) not in {panel.canonical(m) for m in panel.markers}
    ]
    if unknown:
        raise ConfigError(f"required marker(s) {unknown} are not in the panel {panel.markers}")
    missing_req = [m for m in missing if panel.canonical(m) in req_canon]
    if missing_req:
        raise PanelMismatchError(
            f"{source}: missing required marker(s) {missing_req}; the slide has "
            f"{list(slide_channels)}"
        )
    return PanelMatch(indices=indices, missing=missing)
