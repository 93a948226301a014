"""Cell phenotypes from a YAML rule table over per-marker positivity.

Positivity: intensities are transformed as ``asinh(x / cofactor)``; a marker is positive above a
threshold that is a user gate (``gates``, in transformed units) or else Otsu's threshold of that
marker over the cells of the slide (``scope: slide``) or of all slides given (``scope: cohort``).

Rules are matched by marker alias. Rules without a ``parent`` are tried in order and the first
that matches gives the cell its lineage; then the children of that rule are tried the same way,
and so on, so ``phenotype`` is the deepest matching rule. Cells no rule matches are ``other``. A
rule whose positive marker the slide lacks cannot match (it is listed in ``uns``); a rule naming
a marker the alias table does not know is a one-line :class:`ConfigError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from immunoplex.cells.quantify import CellTable
from immunoplex.cells.window import canonical
from immunoplex.errors import ConfigError
from immunoplex.io.panel import default_aliases, marker_key, merge_aliases

OTHER = "other"


@dataclass(frozen=True)
class Rule:
    name: str
    positive: tuple[str, ...] = ()
    negative: tuple[str, ...] = ()
    parent: str | None = None
    colour: tuple[int, int, int] = (160, 160, 160)
    label: str = ""
    # resolve: margin scales this rule's margin: < 1 for a marker that spills over its
    # neighbours (PanCK fills a nest, so an immune cell inside it is PanCK+ too)
    margin_weight: float = 1.0


@dataclass
class PhenotypeScheme:
    """The rule table with its positivity settings (``configs/cells/phenotypes/*.yaml``)."""

    rules: list[Rule]
    cofactor: float = 5.0
    scope: str = "slide"
    gates: dict[str, float] = field(default_factory=dict)
    nuclear_markers: tuple[str, ...] = ()
    aliases: dict[str, list[str]] = field(default_factory=dict)
    min_separation: float = 1.0  # asinh units between the two classes' means
    threshold: str = "min_error"  # automatic split: min_error (Kittler-Illingworth) or otsu
    resolve: str = "margin"  # several top-level rules match: the clearest (margin) or the first
    # a positive cell whose marker is under ``spill_ratio`` of a positive neighbour's (within
    # ``spill_radius_um``, above background) reads the neighbour's signal: not positive; 0 = off
    spill_ratio: float = 0.0
    spill_radius_um: float = 10.0
    source: str = "phenotype rules"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "phenotype rules") -> PhenotypeScheme:
        d = dict(d)
        known = {"rules", "cofactor", "scope", "gates", "nuclear_markers", "aliases",
                 "min_separation", "threshold", "resolve", "spillover"}  # fmt: skip
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; allowed {sorted(known)}")
        rules = []
        for i, r in enumerate(d.get("rules") or []):
            r = dict(r)
            keys = {"name", "positive", "negative", "parent", "colour", "label", "margin_weight"}
            bad = sorted(set(r) - keys)
            if bad or "name" not in r:
                raise ConfigError(f"{source}: rule {i + 1}: needs 'name', unknown key(s) {bad}")
            rules.append(
                Rule(
                    name=str(r["name"]),
                    positive=tuple(str(m) for m in r.get("positive") or ()),
                    negative=tuple(str(m) for m in r.get("negative") or ()),
                    parent=None if r.get("parent") is None else str(r["parent"]),
                    colour=tuple(int(v) for v in r.get("colour") or (160, 160, 160)),  # type: ignore[arg-type]
                    label=str(r.get("label") or r["name"]),
                    margin_weight=float(r.get("margin_weight", 1.0)),
                )
            )
        spill = dict(d.get("spillover") or {})
        bad = sorted(set(spill) - {"ratio", "radius_um"})
        if bad:
            raise ConfigError(
                f"{source}: spillover: unknown key(s) {bad}; allowed ratio, radius_um"
            )
        scheme = cls(
            rules=rules,
            cofactor=float(d.get("cofactor", 5.0)),
            scope=str(d.get("scope", "slide")),
            gates={str(k): float(v) for k, v in dict(d.get("gates") or {}).items()},
            nuclear_markers=tuple(str(m) for m in d.get("nuclear_markers") or ()),
            aliases={
                str(k): [str(x) for x in v or []] for k, v in dict(d.get("aliases") or {}).items()
            },
            min_separation=float(d.get("min_separation", 1.0)),
            threshold=str(d.get("threshold", "min_error")),
            resolve=str(d.get("resolve", "margin")),
            spill_ratio=float(spill.get("ratio", 0.0)),
            spill_radius_um=float(spill.get("radius_um", 10.0)),
            source=source,
        )
        scheme.validate()
        return scheme

    @classmethod
    def load(cls, path: str | Path) -> PhenotypeScheme:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: phenotype rule file not found")
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(yaml.safe_load(fh) or {}, source=str(path))

    @property
    def table(self) -> dict[str, list[str]]:
        return merge_aliases(default_aliases(), self.aliases)

    def canonical(self, marker: str) -> str:
        return canonical(marker, self.aliases)

    def validate(self) -> None:
        if not self.rules:
            raise ConfigError(f"{self.source}: no rules")
        if self.scope not in ("slide", "cohort"):
            raise ConfigError(
                f"{self.source}: scope must be 'slide' or 'cohort', not {self.scope!r}"
            )
        if self.threshold not in ("min_error", "otsu"):
            raise ConfigError(
                f"{self.source}: threshold must be 'min_error' or 'otsu', not {self.threshold!r}"
            )
        for r in self.rules:
            if not r.margin_weight > 0:
                raise ConfigError(f"{self.source}: rule {r.name!r}: margin_weight must be > 0")
        if self.resolve not in ("margin", "first"):
            raise ConfigError(
                f"{self.source}: resolve must be 'margin' or 'first', not {self.resolve!r}"
            )
        if not self.cofactor > 0:
            raise ConfigError(f"{self.source}: cofactor must be > 0")
        if not (0.0 <= self.spill_ratio < 1.0 and self.spill_radius_um > 0):
            raise ConfigError(
                f"{self.source}: spillover needs 0 <= ratio < 1 and radius_um > 0, got "
                f"ratio {self.spill_ratio}, radius_um {self.spill_radius_um}"
            )
        known = {marker_key(n) for k, v in self.table.items() for n in [k, *v]}
        names = [r.name for r in self.rules]
        for r in self.rules:
            if names.count(r.name) > 1 or r.name == OTHER:
                raise ConfigError(f"{self.source}: rule name {r.name!r} is repeated or reserved")
            if r.parent is not None and r.parent not in names:
                raise ConfigError(f"{self.source}: rule {r.name!r}: unknown parent {r.parent!r}")
            if not r.positive and not r.negative:
                raise ConfigError(f"{self.source}: rule {r.name!r} names no marker")
            for m in (*r.positive, *r.negative):
                if marker_key(m) not in known:
                    raise ConfigError(
                        f"{self.source}: rule {r.name!r}: unknown marker {m!r} "
                        "(add it to the panel aliases)"
                    )
        for m in self.gates:
            if marker_key(m) not in known:
                raise ConfigError(f"{self.source}: gate for unknown marker {m!r}")

    def markers(self) -> list[str]:
        """Canonical markers the rules use, in first-use order."""
        out: list[str] = []
        for r in self.rules:
            for m in (*r.positive, *r.negative):
                c = self.canonical(m)
                if c not in out:
                    out.append(c)
        return out

    def colours(self) -> dict[str, tuple[int, int, int]]:
        return {**{r.name: r.colour for r in self.rules}, OTHER: (128, 128, 128)}

    def children(self, parent: str | None) -> list[Rule]:
        return [r for r in self.rules if r.parent == parent]


def measured(table: CellTable, scheme: PhenotypeScheme, marker: str) -> np.ndarray | None:
    """A marker's per-cell mean (nuclear for ``nuclear_markers``, else whole-cell), or None."""
    canon = {scheme.canonical(m): k for k, m in enumerate(table.markers)}
    k = canon.get(scheme.canonical(marker))
    if k is None:
        return None
    use_nuc = scheme.canonical(marker) in {scheme.canonical(m) for m in scheme.nuclear_markers}
    x = (table.nuclear if use_nuc else table.X)[:, k].astype(np.float64)
    return np.nan_to_num(x, nan=0.0)


def transformed(table: CellTable, scheme: PhenotypeScheme, marker: str) -> np.ndarray | None:
    """``asinh(x / cofactor)`` of a marker's per-cell mean (nuclear for ``nuclear_markers``)."""
    x = measured(table, scheme, marker)
    return None if x is None else np.arcsinh(x / scheme.cofactor)


def spill_positives(
    xy: np.ndarray, values: np.ndarray, positive: np.ndarray, ratio: float, radius_um: float
) -> np.ndarray:
    """Positive cells whose signal is a brighter positive neighbour's spill-over.

    A cell touching a CD8 T cell or a macrophage carries part of that cell's signal over its
    own mask. Above the background (the median of the negative cells), a positive cell whose
    value is under ``ratio`` times a positive neighbour's (centres within ``radius_um``) is
    flagged; two positives of similar brightness (cells of a cluster) both stay positive.
    """
    from scipy.spatial import cKDTree

    flagged = np.zeros(len(values), bool)
    idx = np.flatnonzero(positive)
    if ratio <= 0 or idx.size < 2:
        return flagged
    neg = values[~positive]
    bg = float(np.median(neg)) if neg.size else 0.0
    above = np.maximum(values[idx] - bg, 0.0)
    pairs = cKDTree(xy[idx]).query_pairs(radius_um, output_type="ndarray")
    if not len(pairs):
        return flagged
    i, j = pairs[:, 0], pairs[:, 1]
    brightest = np.zeros(idx.size)  # the brightest positive neighbour of each positive cell
    np.maximum.at(brightest, i, above[j])
    np.maximum.at(brightest, j, above[i])
    flagged[idx[above < ratio * brightest]] = True
    return flagged


def otsu_threshold(values: np.ndarray) -> tuple[float, float]:
    """Otsu's split of a 1-D sample computed on the sorted values (no histogram), placed in the
    middle of the gap between the two classes; returns (threshold, gap between class means)."""
    v = np.sort(np.asarray(values, np.float64))
    n = len(v)
    c = np.cumsum(v)[:-1]
    k = np.arange(1, n)
    mu0, mu1 = c / k, (v.sum() - c) / (n - k)
    between = k * (n - k) * (mu0 - mu1) ** 2
    between[v[1:] == v[:-1]] = -1  # only split between distinct values
    i = int(np.argmax(between))
    return float(0.5 * (v[i] + v[i + 1])), float(mu1[i] - mu0[i])


def min_error_threshold(values: np.ndarray, min_class: int = 3) -> tuple[float, float, bool]:
    """Kittler-Illingworth minimum-error split of a 1-D sample (two Gaussians with their own
    priors and spreads), on the sorted values, placed mid-gap; returns (threshold, gap between
    class means, whether two classes fit better than one). Unlike Otsu it finds a small positive class (CD8 T cells are a few % of the
    cells) next to a broad negative one (tumour and stromal cells at different backgrounds)."""
    v = np.sort(np.asarray(values, np.float64))
    n = len(v)
    k = np.arange(1, n)
    c1, c2 = np.cumsum(v)[:-1], np.cumsum(v * v)[:-1]
    s1, s2 = v.sum(), float((v * v).sum())
    mu0, mu1 = c1 / k, (s1 - c1) / (n - k)
    # spreads floored at 2% of the range, so that a few equal values are not a perfect class
    floor = (0.02 * (v[-1] - v[0])) ** 2 + 1e-12
    var0 = np.maximum(c2 / k - mu0**2, 0) + floor
    var1 = np.maximum((s2 - c2) / (n - k) - mu1**2, 0) + floor
    p0, p1 = k / n, (n - k) / n
    j = p0 * np.log(var0) + p1 * np.log(var1) - 2 * (p0 * np.log(p0) + p1 * np.log(p1))
    m = min(max(min_class, 1), n // 2)
    j[(k < m) | (n - k < m) | (v[1:] == v[:-1])] = np.inf
    if not np.isfinite(j).any():
        return (*otsu_threshold(v), False)  # type: ignore[return-value]
    i = int(np.argmin(j))
    # two classes explain the sample better than one Gaussian (J of one class: ln var)
    bimodal = bool(j[i] < np.log(float(v.var()) + floor))
    return float(0.5 * (v[i] + v[i + 1])), float(mu1[i] - mu0[i]), bimodal  # type: ignore[return-value]


def top_split(values: np.ndarray, min_separation: float, min_class: int = 3) -> float | None:
    """The positive class from a hierarchy of minimum-error splits: split, and while the upper
    class is itself two populations split it again; the split whose classes' means differ most
    (and by at least ``min_separation``) is the threshold (None: no positive class).

    A marker with few positives on a slide whose negatives sit at two backgrounds (tumour and
    stroma) first splits the backgrounds; the positives are then split off the upper one.
    """
    v = np.asarray(values, np.float64)
    best, widest = None, float(min_separation)
    while v.size >= 2 and np.ptp(v) > 0:
        t, gap, bimodal = min_error_threshold(v, min_class)  # type: ignore[misc]
        if not bimodal:
            break
        if gap >= widest:
            best, widest = t, gap
        v = v[v > t]
    return best


def fit_thresholds(tables: Sequence[CellTable], scheme: PhenotypeScheme) -> dict[str, float]:
    """Per-marker thresholds (transformed units): gates, else the automatic split
    (``scheme.threshold``: minimum error or Otsu) of the pooled cells."""
    gates = {scheme.canonical(m): v for m, v in scheme.gates.items()}
    out: dict[str, float] = {}
    for m in scheme.markers():
        if m in gates:
            out[m] = float(gates[m])
            continue
        vals = [v for t in tables if (v := transformed(t, scheme, m)) is not None]
        pooled = np.concatenate(vals) if vals else np.empty(0)
        if pooled.size >= 2 and np.ptp(pooled) > 0:
            if scheme.threshold == "min_error":
                top = top_split(pooled, scheme.min_separation)
                out[m] = float(pooled.max()) if top is None else top
                continue
            t, gap = otsu_threshold(pooled)
            # one population (a marker nobody expresses): no split, nobody positive
            out[m] = t if gap >= scheme.min_separation else float(pooled.max())
    return out


def assign_phenotypes(
    table: CellTable, scheme: PhenotypeScheme, thresholds: Mapping[str, float] | None = None
) -> CellTable:
    """Add ``obs["lineage"]``, ``obs["phenotype"]`` and ``obs["<marker>_pos"]`` in place;
    thresholds default to this slide's (:func:`fit_thresholds` on it alone)."""
    import pandas as pd

    thr = dict(thresholds) if thresholds is not None else fit_thresholds([table], scheme)
    n = len(table)
    pos: dict[str, np.ndarray] = {}
    margin: dict[str, np.ndarray] = {}  # (value - threshold) / (positives' median - threshold)
    spill_on = scheme.spill_ratio > 0 and {"x_um", "y_um"} <= set(table.obs.columns)
    xy = table.obs[["x_um", "y_um"]].to_numpy(np.float64) if spill_on else np.empty((0, 2))
    n_spill: dict[str, int] = {}
    for m in scheme.markers():
        x = measured(table, scheme, m)
        v = None if x is None else np.arcsinh(x / scheme.cofactor)  # as transformed()
        if v is not None and m in thr:
            pos[m] = v > thr[m]
            if spill_on:
                assert x is not None
                spill = spill_positives(xy, x, pos[m], scheme.spill_ratio, scheme.spill_radius_um)
                n_spill[m] = int(spill.sum())
                pos[m] &= ~spill
            above = v[pos[m]]
            scale = float(np.median(above)) - thr[m] if above.size else 1.0
            margin[m] = (v - thr[m]) / max(scale, 1e-6)
    disabled = []

    def matches(rule: Rule) -> np.ndarray | None:
        ok = np.ones(n, bool)
        for m in rule.positive:
            p = pos.get(scheme.canonical(m))
            if p is None:
                return None
            ok &= p
        for m in rule.negative:
            p = pos.get(scheme.canonical(m))
            if p is not None:
                ok &= ~p
        return ok

    masks = {}
    for r in scheme.rules:
        mk = matches(r)
        if mk is None:
            disabled.append(r.name)
        masks[r.name] = mk
    lineage = np.full(n, OTHER, dtype=object)
    phen = np.full(n, OTHER, dtype=object)

    def score(rule: Rule) -> np.ndarray:
        """How clearly a cell passes the rule: its weakest positive marker's margin."""
        ms = [margin[scheme.canonical(m)] for m in rule.positive]
        return rule.margin_weight * np.minimum.reduce(ms) if ms else np.zeros(n)

    def descend(parent: str | None, sel: np.ndarray, out: np.ndarray) -> None:
        free = sel.copy()
        if parent is None and scheme.resolve == "margin":
            # a cell several top-level rules match (a CD8 T cell in a tumour nest picks up PanCK
            # from its neighbours) goes to the rule it passes most clearly
            tops = [r for r in scheme.children(None) if masks[r.name] is not None]
            if tops:
                sc = np.stack([np.where(masks[r.name], score(r), -np.inf) for r in tops])
                best = np.argmax(sc, axis=0)
                anyhit = np.isfinite(sc.max(axis=0)) & free
                for k, r in enumerate(tops):
                    hit = anyhit & (best == k)
                    out[hit] = r.name
                    phen[hit] = r.name
                    free &= ~hit
                    descend(r.name, hit, out)
            return
        for r in scheme.children(parent):
            mk = masks[r.name]
            if mk is None:
                continue
            hit = free & mk
            out[hit] = r.name
            phen[hit] = r.name
            free &= ~hit
            descend(r.name, hit, out)

    descend(None, np.ones(n, bool), lineage)
    for r in scheme.rules:  # lineage = the top-level ancestor
        top = r
        while top.parent is not None:
            top = next(x for x in scheme.rules if x.name == top.parent)
        lineage[phen == r.name] = top.name
    cats = [r.name for r in scheme.rules] + [OTHER]
    table.obs["lineage"] = pd.Categorical(lineage, categories=cats)
    table.obs["phenotype"] = pd.Categorical(phen, categories=cats)
    for m, p in pos.items():
        table.obs[f"{m}_pos"] = p
    table.uns["phenotype"] = {
        "thresholds": thr,
        "cofactor": scheme.cofactor,
        "scope": scheme.scope,
        "threshold": scheme.threshold,
        "resolve": scheme.resolve,
        "spillover": {
            "ratio": scheme.spill_ratio,
            "radius_um": scheme.spill_radius_um,
            "n_revoked": n_spill,
        },  # fmt: skip
        "gated": sorted(scheme.canonical(m) for m in scheme.gates),
        "disabled_rules": disabled,
        "rules": [
            {
                "name": r.name,
                "positive": list(r.positive),
                "negative": list(r.negative),
                "parent": r.parent,
                "margin_weight": r.margin_weight,
            }
            for r in scheme.rules
        ],  # fmt: skip
    }
    return table


def ancestors(scheme: PhenotypeScheme, name: str) -> list[str]:
    """``name`` and its parents up to the top-level rule."""
    out = [name]
    by = {r.name: r for r in scheme.rules}
    while by[out[-1]].parent is not None:
        out.append(str(by[out[-1]].parent))
    return out
