"""Expression features that travel between platforms and cohorts: every one is computed within a
single sample, so a new cohort needs no statistics of its own (no per-cohort z-score).

Families (``FeatureBuilder(families=...)``):

- ``sig``: gene-set scores, singscore-like (Foroutan et al., BMC Bioinformatics 2018): the genes of
  a sample are ranked within the sample, among the model's gene universe present in that sample;
  normalised ranks ``(rank - 0.5) / n`` lie in (0, 1); the score is the mean normalised rank of the
  set's present genes, centred and scaled by its null spread, ``(mean - 0.5) * sqrt(12 k)``
  (k = genes used), so a set of random genes scores ~N(0, 1) whatever k.
- ``impres``: the IMPRES score (Auslander et al., Nat Med 2018): fraction of the 15 published
  checkpoint-gene pairs with ``A > B`` in the sample, over the computable pairs.
- ``pairs``: one indicator ``A > B`` (ties 0.5) per pair: the IMPRES pairs plus every pair among a
  curated list of immune-checkpoint / T-cell genes.
- ``rank``: the within-sample normalised rank of each curated immune gene (every gene of the
  gene sets and of the pair list); ``rank_all=True`` uses every universe gene.

Partial coverage is first-class: :meth:`FeatureBuilder.compute` returns only the features that can
be computed from the genes present (a gene set needs at least ``min_fraction`` of the genes it was
defined with; a pair needs both genes; a rank needs its gene) and a :class:`CoverageReport` saying,
per feature, which genes were used and which were missing. Nothing is filled in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from immunoplex.errors import ExpressionError
from immunoplex.expression.genes import normalise_symbol

FAMILIES = ("sig", "impres", "pairs", "rank")


@dataclass(frozen=True)
class GeneSet:
    """A published (or project) gene set; ``sign`` = a-priori direction (+1 = responder)."""

    name: str
    genes: tuple[str, ...]
    source: str
    sign: int = 1


def _gs(name: str, genes: str, source: str, sign: int = 1) -> GeneSet:
    return GeneSet(name, tuple(genes.split()), source, sign)


GENE_SETS: dict[str, GeneSet] = {
    s.name: s
    for s in (
        _gs("CD8A", "CD8A", "CD8A mRNA"),
        _gs("CD274", "CD274", "PD-L1 (CD274) mRNA"),
        _gs("CYT", "GZMA PRF1", "Rooney et al., Cell 2015"),
        _gs("IFNG6", "IFNG STAT1 IDO1 CXCL9 CXCL10 HLA-DRA", "Ayers et al., JCI 2017"),
        _gs(
            "IFNG18",
            "CD3D IDO1 CIITA CD3E CCL5 GZMK CD2 HLA-DRA CXCL13 IL2RG NKG7 HLA-E CXCR6 LAG3 "
            "TAGAP CXCL10 STAT1 GZMB",
            "Ayers et al., JCI 2017 (expanded immune)",
        ),
        _gs(
            "GEP",
            "CCL5 CD27 CD274 CD276 CD8A CMKLR1 CXCL9 CXCR6 HLA-DQA1 HLA-DRB1 HLA-E IDO1 LAG3 "
            "NKG7 PDCD1LG2 PSMB10 STAT1 TIGIT",
            "Ayers et al., JCI 2017 / Cristescu et al., Science 2018 (T-cell-inflamed GEP)",
        ),
        _gs(
            "TEFF",
            "CD8A CXCL9 CXCL10 GZMA GZMB IFNG PRF1 TBX21",
            "Mariathasan et al., Nature 2018",
        ),
        _gs(
            "TEFF_POPLAR",
            "CD8A GZMA GZMB IFNG EOMES CXCL9 CXCL10 TBX21",
            "Fehrenbacher et al., Lancet 2016",
        ),
        _gs(
            "CHEM12",
            "CCL2 CCL3 CCL4 CCL5 CCL8 CCL18 CCL19 CCL21 CXCL9 CXCL10 CXCL11 CXCL13",
            "Messina et al., Sci Rep 2012 (12-chemokine)",
        ),
        _gs("APM", "B2M HLA-A HLA-B HLA-C TAP1 TAP2", "Senbabaoglu et al., Genome Biol 2016"),
        _gs(
            "PAN_FTBRS",
            "ACTA2 ACTG2 ADAM12 ADAM19 CNN1 COL4A1 CTGF CTPS1 FAM101B FSTL3 HSPB1 IGFBP3 PXDC1 "
            "SEMA7A SH3PXD2A TAGLN TGFBI TNS1 TPM1",
            "Mariathasan et al., Nature 2018 (pan-fibroblast TGF-b)",
            sign=-1,
        ),
        _gs("CHECKPOINT", "PDCD1 CTLA4 LAG3 HAVCR2 TIGIT", "inhibitory receptors (project set)"),
        _gs("T_CELL", "CD2 CD3D CD3E CD3G CD5 CD6", "pan-T-cell markers (project set)"),
        _gs("B_CELL", "CD19 MS4A1 CD79A CD79B CR2 PAX5", "B-cell markers (project set)"),
        _gs("NK", "GNLY NKG7 KLRD1 KLRF1 NCR1", "NK-cell markers (project set)"),
        _gs(
            "MACROPHAGE",
            "CD163 MRC1 STAB1 MSR1 CSF1R",
            "configs/model/expression_encoder/gene_sets.yaml (project set)",
            sign=-1,
        ),
        _gs(
            "NEUTROPHIL_DKK1",
            "DKK1 CHI3L1 CXCR2 CEACAM8 S100A8 S100A9",
            "configs/model/expression_encoder/gene_sets.yaml (project set)",
            sign=-1,
        ),
        _gs(
            "PROLIFERATION",
            "MKI67 TOP2A CCNB1 BIRC5 CDK1 MCM2 PCNA TYMS",
            "proliferation markers (project set)",
            sign=-1,
        ),
    )
}

# IMPRES (Auslander et al., Nat Med 2018): the 15 checkpoint-gene pairs, "A > B" scores 1.
IMPRES_PAIRS: tuple[tuple[str, str], ...] = (
    ("PDCD1", "TNFSF4"), ("CD27", "PDCD1"), ("CTLA4", "TNFSF4"), ("CD40", "CD28"),
    ("CD86", "TNFSF4"), ("CD28", "CD86"), ("CD80", "TNFSF9"), ("CD274", "VSIR"),
    ("CD86", "HAVCR2"), ("CD40", "PDCD1"), ("CD86", "CD200"), ("CD40", "CD80"),
    ("CD28", "CD276"), ("CD40", "CD274"), ("TNFRSF14", "CD86"),
)  # fmt: skip

# Immune checkpoint ligands/receptors and T-cell genes whose pairwise relations form ``pairs``.
_CHECKPOINT = (
    "PDCD1 CD274 PDCD1LG2 CTLA4 LAG3 HAVCR2 TIGIT CD27 CD28 CD40 CD40LG CD80 CD86 ICOS TNFRSF4 "
    "TNFSF4 TNFRSF9 TNFSF9 TNFRSF14 CD276 VSIR CD200 IDO1 CD8A CD4 FOXP3 GZMB IFNG CXCL9 "
    "CXCL13"
)
CHECKPOINT_GENES: tuple[str, ...] = tuple(_CHECKPOINT.split())


@dataclass(frozen=True)
class FeatureSpec:
    """One feature: ``kind`` is ``set`` (singscore), ``impres``, ``pair`` (A > B) or ``rank``."""

    name: str
    kind: str
    genes: tuple[str, ...]
    sign: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "genes": list(self.genes), "sign": self.sign}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSpec:
        kind = str(d["kind"])
        if kind not in ("set", "impres", "pair", "rank"):
            raise ExpressionError(f"unknown feature kind {kind!r}")
        return cls(str(d["name"]), kind, tuple(str(g) for g in d["genes"]), int(d.get("sign", 1)))


@dataclass
class FeatureCoverage:
    """Coverage of one feature on one table: genes used, genes missing, computable or not."""

    name: str
    kind: str
    present: list[str]
    missing: list[str]
    computable: bool

    @property
    def fraction(self) -> float:
        n = len(self.present) + len(self.missing)
        return len(self.present) / n if n else 0.0


@dataclass
class CoverageReport:
    """Per-feature coverage of a table against the model's features (nothing was imputed)."""

    features: list[FeatureCoverage]
    universe_present: int
    universe_size: int
    min_fraction: float

    @property
    def computable(self) -> list[str]:
        return [f.name for f in self.features if f.computable]

    @property
    def not_computable(self) -> list[str]:
        return [f.name for f in self.features if not f.computable]

    def summary(self) -> str:
        n, k = len(self.features), len(self.computable)
        head = ", ".join(self.not_computable[:8]) + (" ..." if len(self.not_computable) > 8 else "")
        return (
            f"{k}/{n} features computable from {self.universe_present}/{self.universe_size} model "
            f"genes (gene sets need >= {self.min_fraction:.0%} of their genes, pairs both genes)"
            + (f"; not computable: {head}" if k < n else "")
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "universe_present": self.universe_present,
            "universe_size": self.universe_size,
            "min_fraction": self.min_fraction,
            "computable": self.computable,
            "not_computable": self.not_computable,
            "features": [
                {"name": f.name, "kind": f.kind, "computable": f.computable,
                 "fraction": round(f.fraction, 4), "present": f.present, "missing": f.missing}
                for f in self.features
            ],
        }  # fmt: skip


def _canon(values: pd.DataFrame) -> pd.DataFrame:
    """Columns as normalised symbols (duplicates averaged), float values."""
    frame = values.astype(np.float64).copy()
    frame.columns = pd.Index([normalise_symbol(c) for c in frame.columns], dtype=object)
    if frame.columns.duplicated().any():
        frame = frame.T.groupby(level=0, sort=False).mean().T
    return frame


def within_sample_ranks(values: pd.DataFrame) -> pd.DataFrame:
    """Normalised within-sample ranks ``(rank - 0.5) / n`` in (0, 1) (ties averaged; a missing
    value is not ranked and ``n`` counts the sample's non-missing genes)."""
    ranks = values.rank(axis=1, method="average")
    n = values.notna().sum(axis=1).replace(0, 1)
    return (ranks - 0.5).div(n, axis=0)


def singscore(ranks: pd.DataFrame, genes: Sequence[str]) -> pd.Series:
    """``(mean normalised rank of genes - 0.5) * sqrt(12 k)`` per sample (k = len(genes))."""
    k = len(genes)
    if k == 0:
        raise ExpressionError("singscore of an empty gene set")
    return (ranks[list(genes)].mean(axis=1) - 0.5) * np.sqrt(12.0 * k)


def _greater(values: pd.DataFrame, a: str, b: str) -> np.ndarray:
    x, y = values[a].to_numpy(), values[b].to_numpy()
    return np.where(x > y, 1.0, np.where(x < y, 0.0, 0.5))


@dataclass
class FeatureBuilder:
    """Defines features on the training genes (:meth:`define`) and computes them on any table
    (:meth:`compute`), reporting coverage. ``min_fraction`` is both the share of a set's published
    genes the training data must have for the set to become a feature and the share of the
    defined genes a new table must have for it to be computed."""

    families: tuple[str, ...] = ("sig",)
    min_fraction: float = 0.5
    gene_sets: Mapping[str, GeneSet] = field(default_factory=lambda: dict(GENE_SETS))
    impres_pairs: tuple[tuple[str, str], ...] = IMPRES_PAIRS
    pair_genes: tuple[str, ...] = CHECKPOINT_GENES
    rank_all: bool = False

    def __post_init__(self) -> None:
        bad = [f for f in self.families if f not in FAMILIES]
        if bad:
            raise ExpressionError(f"unknown feature family {bad[0]!r}; choose from {FAMILIES}")
        if not 0.0 < self.min_fraction <= 1.0:
            raise ExpressionError(f"min_fraction {self.min_fraction} must be in (0, 1]")

    def _pairs(self, have: set[str]) -> list[tuple[str, str]]:
        pairs = [p for p in self.impres_pairs if p[0] in have and p[1] in have]
        seen = set(pairs) | {(b, a) for a, b in pairs}
        genes = [g for g in self.pair_genes if g in have]
        pairs += [p for p in combinations(genes, 2) if p not in seen]
        return pairs

    def define(self, genes: Iterable[str]) -> list[FeatureSpec]:
        """The features these (training) genes support, in a fixed order."""
        have = {normalise_symbol(g) for g in genes}
        specs: list[FeatureSpec] = []
        if "sig" in self.families:
            for s in self.gene_sets.values():
                used = tuple(g for g in s.genes if g in have)
                if used and len(used) >= self.min_fraction * len(s.genes):
                    specs.append(FeatureSpec(f"sig:{s.name}", "set", used, s.sign))
        if "impres" in self.families:
            pairs = [p for p in self.impres_pairs if p[0] in have and p[1] in have]
            if pairs:
                flat = tuple(g for p in pairs for g in p)
                specs.append(FeatureSpec("impres:IMPRES", "impres", flat))
        if "pairs" in self.families:
            specs += [FeatureSpec(f"pair:{a}>{b}", "pair", (a, b)) for a, b in self._pairs(have)]
        if "rank" in self.families:
            curated = {g for s in self.gene_sets.values() for g in s.genes} | set(self.pair_genes)
            curated |= {g for p in self.impres_pairs for g in p}
            pool = have if self.rank_all else have & curated
            specs += [FeatureSpec(f"rank:{g}", "rank", (g,)) for g in sorted(pool)]
        return specs

    def compute(
        self,
        values: pd.DataFrame,
        specs: Sequence[FeatureSpec],
        universe: Sequence[str],
    ) -> tuple[pd.DataFrame, CoverageReport]:
        """Features of every sample of ``values`` (samples x genes, log scale) that its genes
        allow, plus the coverage report. Ranks are taken among the ``universe`` genes (the
        model's training genes) that the table has, so extra genes of a new platform do not
        shift them."""
        frame = _canon(values)
        uni = [normalise_symbol(g) for g in universe]
        present_uni = [g for g in uni if g in frame.columns]
        if not present_uni:
            raise ExpressionError("none of the model's genes is in the expression table")
        sub = frame[present_uni]
        ranks = within_sample_ranks(sub)
        have = set(present_uni)
        cols: dict[str, np.ndarray] = {}
        cover: list[FeatureCoverage] = []
        for spec in specs:
            genes = list(dict.fromkeys(spec.genes))
            present = [g for g in genes if g in have]
            missing = [g for g in genes if g not in have]
            if spec.kind == "set":
                ok = bool(present) and len(present) >= self.min_fraction * len(genes)
                if ok:
                    cols[spec.name] = singscore(ranks, present).to_numpy()
            elif spec.kind == "impres":
                pairs = list(zip(spec.genes[0::2], spec.genes[1::2], strict=True))
                usable = [(a, b) for a, b in pairs if a in have and b in have]
                ok = len(usable) >= self.min_fraction * len(pairs)
                if ok:
                    cols[spec.name] = np.mean([_greater(sub, a, b) for a, b in usable], axis=0)
            elif spec.kind == "pair":
                ok = not missing
                if ok:
                    cols[spec.name] = _greater(sub, *spec.genes)
            else:  # rank
                ok = not missing
                if ok:
                    cols[spec.name] = ranks[spec.genes[0]].to_numpy()
            cover.append(FeatureCoverage(spec.name, spec.kind, present, missing, ok))
        feats = pd.DataFrame(cols, index=values.index, dtype=np.float64)
        report = CoverageReport(cover, len(present_uni), len(uni), self.min_fraction)
        return feats, report


def signature_scores(
    values: pd.DataFrame, names: Sequence[str] | None = None, min_fraction: float = 0.5
) -> tuple[pd.DataFrame, CoverageReport]:
    """Rank-based (singscore) scores of the named published sets, oriented by their a-priori
    sign (higher = responder), plus IMPRES; computed within each sample, no training."""
    builder = FeatureBuilder(families=("sig", "impres"), min_fraction=min_fraction)
    specs = builder.define(values.columns)
    if names is not None:
        wanted = set(names)
        specs = [s for s in specs if s.name.split(":", 1)[1] in wanted]
    feats, report = builder.compute(values, specs, list(values.columns))
    signs = {s.name: s.sign for s in specs}
    out = feats * pd.Series(signs)[feats.columns]
    out.columns = [c.split(":", 1)[1] + ("_rank" if c.startswith("sig:") else "") for c in out]
    return out, report
