"""Spatial features per slide and per patient (slides pooled: counts over summed areas, per-cell
statistics over the pooled cells), one named column per feature; see :func:`feature_catalogue`.

A cell counts for a type when the type is its phenotype or an ancestor of it (a Clever-1+
macrophage is also a macrophage). Neighbour queries use a KD-tree (scipy) per slide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from immunoplex.cells.phenotype import PhenotypeScheme, ancestors
from immunoplex.cells.quantify import CellTable

COMPARTMENTS = ("tissue", "tumour", "stroma", "border")


@dataclass
class SlideCells:
    """What the features need from one phenotyped slide."""

    slide_id: str
    patient_id: str
    phenotype: np.ndarray
    xy: np.ndarray  # (n, 2) µm
    in_tumour: np.ndarray
    in_border: np.ndarray
    distance_um: np.ndarray
    areas_mm2: Mapping[str, float] = field(default_factory=dict)
    intratumoural: np.ndarray | None = None  # immune cells deep enough inside; None = in_tumour

    @property
    def inside(self) -> np.ndarray:
        """Cells counted as intratumoural (``frac_intratumoural_*``)."""
        return self.in_tumour if self.intratumoural is None else self.intratumoural

    @classmethod
    def from_table(
        cls, table: CellTable, areas_mm2: Mapping[str, float], patient_id: str | None = None
    ) -> SlideCells:
        o = table.obs
        sid = str(o["slide_id"].iat[0]) if len(o) else str(table.uns.get("slide_id", ""))
        return cls(
            slide_id=sid,
            patient_id=str(patient_id if patient_id is not None else sid),
            phenotype=o["phenotype"].astype(str).to_numpy(),
            xy=o[["x_um", "y_um"]].to_numpy(np.float64),
            in_tumour=(o["compartment"].astype(str) == "tumour").to_numpy(),
            in_border=o["in_border"].to_numpy(bool),
            distance_um=o["tumour_distance_um"].to_numpy(np.float64),
            areas_mm2=dict(areas_mm2),
            intratumoural=o["intratumoural"].to_numpy(bool) if "intratumoural" in o else None,
        )


@dataclass(frozen=True)
class SpatialParams:
    radius_um: float = 30.0
    nearest: tuple[tuple[str, str], ...] = (
        ("cd8_t", "tumour"),
        ("cd8_t", "clever1_macrophage"),
        ("neutrophil", "tumour"),
    )
    tumour_type: str = "tumour"
    # fractions of counts (k of n) are the posterior mean under a Beta(a, a) prior,
    # (k + a) / (n + 2a): a patient with 3 CD8 T cells, all inside, reads 0.8, not 1.0
    # (Laplace's rule at a = 1); 0 = the raw k / n. No cells of the type (n = 0): NaN.
    fraction_pseudocount: float = 1.0


def _member(scheme: PhenotypeScheme, phen: np.ndarray, t: str) -> np.ndarray:
    names = [r.name for r in scheme.rules if t in ancestors(scheme, r.name)]
    return np.isin(phen, names)


def _safe(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def _fraction(k: int, n: int, a: float) -> float:
    return (k + a) / (n + 2 * a) if n > 0 else float("nan")


def features(
    slides: Sequence[SlideCells], scheme: PhenotypeScheme, params: SpatialParams | None = None
) -> dict[str, float]:
    """One feature row for the pooled ``slides`` (one slide, or all of a patient's)."""
    from scipy.spatial import cKDTree

    p = params or SpatialParams()
    types = [r.name for r in scheme.rules]
    out: dict[str, float] = {}
    area = {c: float(sum(s.areas_mm2.get(c, 0.0) for s in slides)) for c in COMPARTMENTS}
    for c in COMPARTMENTS:
        out[f"area_{c}_mm2"] = area[c]
    out["n_cells"] = float(sum(len(s.phenotype) for s in slides))
    member = [{t: _member(scheme, s.phenotype, t) for t in types} for s in slides]
    for t in types:
        for c in COMPARTMENTS:
            n = 0
            for s, m in zip(slides, member):
                sel = m[t]
                if c == "tumour":
                    sel = sel & s.in_tumour
                elif c == "stroma":
                    sel = sel & ~s.in_tumour
                elif c == "border":
                    sel = sel & s.in_border
                n += int(sel.sum())
            out[f"density_{t}_{c}_per_mm2"] = _safe(n, area[c])
    lineage_tumour = set(r.name for r in scheme.rules if p.tumour_type in ancestors(scheme, r.name))
    for t in types:
        if t in lineage_tumour:
            continue
        n = sum(int(m[t].sum()) for m in member)
        n_in = sum(int((m[t] & s.inside).sum()) for s, m in zip(slides, member))
        out[f"frac_intratumoural_{t}"] = _fraction(n_in, n, p.fraction_pseudocount)
    for r in scheme.rules:
        if r.parent is not None:
            n_par = sum(int(m[r.parent].sum()) for m in member)
            n_ch = sum(int(m[r.name].sum()) for m in member)
            out[f"frac_{r.name}_of_{r.parent}"] = _fraction(n_ch, n_par, p.fraction_pseudocount)
    for t in types:
        d = np.concatenate([s.distance_um[m[t]] for s, m in zip(slides, member)] or [np.empty(0)])
        d = d[np.isfinite(d)]
        out[f"median_tumour_distance_um_{t}"] = float(np.median(d)) if d.size else float("nan")
    for a, b in p.nearest:
        if a not in types or b not in types:
            continue
        dists = []
        for s, m in zip(slides, member):
            pa, pb = s.xy[m[a]], s.xy[m[b]]
            if len(pa) and len(pb):
                dists.append(cKDTree(pb).query(pa, k=1)[0])
        d = np.concatenate(dists) if dists else np.empty(0)
        out[f"nn_median_um_{a}_to_{b}"] = float(np.median(d)) if d.size else float("nan")
    r_tag = f"r{p.radius_um:g}um"
    counts = {(a, b): [0.0, 0.0] for a in types for b in types}  # sum of fractions, n centres
    for s, m in zip(slides, member):
        if not len(s.xy):
            continue
        n = len(s.xy)
        pairs = cKDTree(s.xy).query_pairs(p.radius_um, output_type="ndarray")
        i, j = pairs[:, 0], pairs[:, 1]
        tot = np.bincount(i, minlength=n) + np.bincount(j, minlength=n)
        for b in types:
            mb = m[b].astype(np.float64)
            nb = np.bincount(i, weights=mb[j], minlength=n) + np.bincount(
                j, weights=mb[i], minlength=n
            )
            frac = np.divide(nb, tot, out=np.zeros(n), where=tot > 0)
            for a in types:
                sel = m[a]
                counts[(a, b)][0] += float(frac[sel].sum())
                counts[(a, b)][1] += float((sel & (tot > 0)).sum())
    for (a, b), (num, den) in counts.items():
        out[f"nbr_frac_{b}_around_{a}_{r_tag}"] = _safe(num, den)
    return out


def feature_table(
    slides: Sequence[SlideCells],
    scheme: PhenotypeScheme,
    params: SpatialParams | None = None,
    by: str = "patient",
) -> pd.DataFrame:
    """One row per patient (``by="patient"``) or per slide, columns as in the catalogue."""
    key = "patient_id" if by == "patient" else "slide_id"
    groups: dict[str, list[SlideCells]] = {}
    for s in slides:
        groups.setdefault(getattr(s, key), []).append(s)
    rows = []
    for k, ss in groups.items():
        row: dict[str, object] = {key: k}
        if by == "patient":
            row["n_slides"] = len(ss)
        else:
            row["patient_id"] = ss[0].patient_id
        row.update(features(ss, scheme, params))
        rows.append(row)
    return pd.DataFrame(rows)


def feature_catalogue(scheme: PhenotypeScheme, params: SpatialParams | None = None) -> pd.DataFrame:
    """Every feature column with its unit and meaning."""
    p = params or SpatialParams()
    rows = [(f"area_{c}_mm2", "mm²", f"{c} area") for c in COMPARTMENTS]
    rows.append(("n_cells", "count", "segmented cells"))
    a = p.fraction_pseudocount
    shrink = f"(k + {a:g}) / (n + {2 * a:g}) of k in n cells" if a > 0 else "k / n"
    empty = SlideCells("x", "x", np.empty(0, str), np.empty((0, 2)), np.empty(0, bool),
                       np.empty(0, bool), np.empty(0))  # fmt: skip
    for name in features([empty], scheme, p):
        if name.startswith("density_"):
            rows.append((name, "cells/mm²", "cells of the type per mm² of the compartment"))
        elif name.startswith("frac_intratumoural_"):
            rows.append((name, "fraction", "share of the type's cells inside tumour (at least "
                         "compartments.intratumoural_um deep); " + shrink))  # fmt: skip
        elif name.startswith("frac_"):
            rows.append((name, "fraction", "share of the parent type that is the child type; "
                         + shrink))  # fmt: skip
        elif name.startswith("median_tumour_distance"):
            rows.append((name, "µm", "median signed distance to the tumour border (+ inside)"))
        elif name.startswith("nn_median"):
            rows.append((name, "µm", "median distance from each cell of A to the nearest B"))
        elif name.startswith("nbr_frac"):
            rows.append((name, "fraction", f"mean share of B among neighbours within "
                         f"{p.radius_um:g} µm of cells of A"))  # fmt: skip
    return pd.DataFrame(rows, columns=["feature", "unit", "description"]).drop_duplicates("feature")
