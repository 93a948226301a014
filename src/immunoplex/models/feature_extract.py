"""Fixed, interpretable feature extractors for the feature model (``model=cell_features``).

- :class:`TileMarkerCounts` (the tile "encoder"): per tile, the share of its pixels that are
  tissue, tumour (smoothed PanCK), stroma and peritumoural stroma (within ``border_um`` of
  tumour), and for each cell type (a marker or a marker combination, e.g. Clever-1+ macrophages
  = CD68+ STAB1+) the share of pixels positive for it in tumour, stroma and the border band.
  No learned weights: the thresholds are buffers, so they travel in the checkpoint, they enter
  the embedding-cache fingerprint, and predict computes exactly what training computed.
- :class:`MarkerFeatures` (the "aggregator"): sums the counts over a patient's valid tiles and
  turns them into named biology features: log area fractions per compartment, intratumoural
  fractions (logit), the Clever-1+ share of macrophages, tumour fraction.
- :class:`GeneSetScores` (the expression "encoder"): the mean normalised expression of each gene
  set (genes matched case-insensitively; absent genes dropped, a set with none is an error).
- :class:`RunningStandardizer`: feature means/SDs accumulated over the training batches (buffers,
  in the checkpoint), applied in training and at inference alike.

Tiles arrive normalised to [0, 1] per slide and channel (``data.transforms.normalise_tiles``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from immunoplex.errors import ConfigError

log = logging.getLogger(__name__)

#: cell type -> (markers that must all be positive, human-readable name)
DEFAULT_TYPES: dict[str, list[str]] = {
    "cd8_t": ["CD8"],
    "macrophage": ["CD68"],
    "clever1_macrophage": ["CD68", "STAB1"],
    "neutrophil": ["CD66b"],
    "endothelial": ["CD31"],
}
TYPE_LABELS = {
    "cd8_t": "CD8+ T cell",
    "macrophage": "CD68+ macrophage",
    "clever1_macrophage": "Clever-1+ (STAB1+CD68+) macrophage",
    "neutrophil": "CD66b+ neutrophil",
    "endothelial": "CD31+ endothelium",
}
COMPARTMENTS = ("tumour", "stroma", "border")
AREAS = ("tissue", "tumour", "stroma", "border")


def _index(markers: Sequence[str], name: str, what: str) -> int:
    low = [m.lower() for m in markers]
    if name.lower() not in low:
        raise ConfigError(f"model.encoder: {what} marker {name!r} is not in the panel {markers}")
    return low.index(name.lower())


class TileMarkerCounts(nn.Module):
    """(M, C, T, T) normalised tiles -> (M, K) pixel shares (see the module docstring).

    Column order: the four areas (``AREAS``), then per cell type its positive share in tumour,
    stroma and border (``COMPARTMENTS``). ``column_names`` lists them.
    """

    def __init__(
        self,
        n_channels: int,
        markers: Sequence[str] | None = None,
        cell_types: Mapping[str, Sequence[str]] | None = None,
        thresholds: Mapping[str, float] | None = None,
        tumour_marker: str = "PanCK",
        nuclear_marker: str = "DAPI",
        tumour_threshold: float = 0.35,
        tissue_threshold: float = 0.2,
        smooth_px: int = 5,
        mpp: float = 2.0,
        border_um: float = 20.0,
        relative: float | None = 8.0,
        relative_floor: float = 0.05,
    ) -> None:
        super().__init__()
        markers = list(markers or [])
        if len(markers) != n_channels:
            raise ConfigError("model.encoder: TileMarkerCounts needs the panel's marker names")
        types = {str(k): [str(m) for m in v] for k, v in (cell_types or DEFAULT_TYPES).items()}
        thr = {str(k).lower(): float(v) for k, v in (thresholds or {}).items()}
        used = sorted({m for ms in types.values() for m in ms}, key=markers.index)
        self.markers = markers
        self.types = list(types)
        self.tumour_idx = _index(markers, tumour_marker, "tumour")
        self.nuclear_idx = _index(markers, nuclear_marker, "nuclear")
        self.channel_idx = [_index(markers, m, "cell-type") for m in used]
        member = torch.zeros(len(types), len(used))
        for i, ms in enumerate(types.values()):
            for m in ms:
                member[i, used.index(m)] = 1.0
        self.register_buffer("membership", member)
        self.members = [[used.index(m) for m in ms] for ms in types.values()]
        self.register_buffer(
            "thresholds", torch.tensor([thr.get(m.lower(), 0.5) for m in used], dtype=torch.float32)
        )
        self.register_buffer("area_thresholds", torch.tensor([tumour_threshold, tissue_threshold]))
        # relative positivity: linear intensity > relative x the tile's median + floor (per
        # channel), which no stain gain or per-slide scaling changes; None: fixed thresholds
        self.relative = None if relative is None else float(relative)
        self.relative_floor = float(relative_floor)
        # buffers too, so the embedding-cache fingerprint changes with them
        rel = torch.tensor([-1.0 if relative is None else float(relative), float(relative_floor)])
        self.register_buffer("relative_params", rel)
        self.smooth_px = int(smooth_px) | 1
        self.border_px = max(1, int(round(border_um / mpp))) * 2 + 1
        self.column_names = list(AREAS) + [f"{t}_{c}" for t in self.types for c in COMPARTMENTS]
        self.out_dim = len(self.column_names)

    def extra_repr(self) -> str:
        # every setting that is not a buffer (the embedding-cache fingerprint hashes this)
        return (
            f"markers={self.markers}, types={dict(zip(self.types, self.members))}, "
            f"tumour_idx={self.tumour_idx}, nuclear_idx={self.nuclear_idx}, "
            f"channel_idx={self.channel_idx}, smooth_px={self.smooth_px}, "
            f"border_px={self.border_px}"
        )

    def forward(self, x: Tensor, channel_mask: Tensor | None = None) -> Tensor:
        x = x.float()
        if channel_mask is not None:
            x = x * channel_mask.to(x.dtype)[:, :, None, None]
        k = self.smooth_px
        panck = F.avg_pool2d(x[:, self.tumour_idx : self.tumour_idx + 1], k, 1, k // 2,
                             count_include_pad=False)  # fmt: skip
        dapi = F.avg_pool2d(x[:, self.nuclear_idx : self.nuclear_idx + 1], k, 1, k // 2,
                            count_include_pad=False)  # fmt: skip
        tumour = (panck > self.area_thresholds[0]).float()
        tissue = torch.maximum(tumour, (dapi > self.area_thresholds[1]).float())
        r = self.border_px
        near = F.max_pool2d(F.max_pool2d(tumour, (r, 1), 1, (r // 2, 0)), (1, r), 1, (0, r // 2))
        stroma = tissue * (1.0 - tumour)
        border = stroma * near
        xc = x[:, self.channel_idx]
        if self.relative is None:
            pos = (xc > self.thresholds[None, :, None, None]).float()  # (M, U, T, T)
        else:  # back to linear scale (data.transforms: arcsinh, cofactor 0.05)
            lin = torch.sinh(xc * math.asinh(1.0 / 0.05)) * 0.05
            med = lin.flatten(2).median(dim=2).values[:, :, None, None]
            pos = (lin > self.relative * med + self.relative_floor).float()
        # a type is positive where all its markers are: product over its members
        typed = torch.stack(
            [pos[:, members].prod(dim=1) for members in self.members], dim=1
        )  # (M, n_types, T, T)
        cols = [tissue, tumour, stroma, border]
        areas = torch.cat(cols, dim=1).mean(dim=(2, 3))  # (M, 4)
        comp = torch.stack([tumour[:, 0], stroma[:, 0], border[:, 0]], dim=1)  # (M, 3, T, T)
        counts = torch.einsum("mthw,mchw->mtc", typed, comp) / (x.shape[-1] * x.shape[-2])
        return torch.cat([areas, counts.reshape(x.shape[0], -1)], dim=1)


class MarkerFeatures(nn.Module):
    """Patient features from summed tile counts: (B, N, K) + mask -> (B, F), attention (B, N)."""

    def __init__(
        self,
        in_dim: int,
        cell_types: Sequence[str] | None = None,
        eps: float = 1e-4,
        attention_types: Sequence[str] | None = None,
        families: Sequence[str] | None = (
            "area_tissue",
            "intratumoural",
            "clever1_share",
            "tumour_fraction",
        ),  # fmt: skip
    ) -> None:
        super().__init__()
        self.types = list(cell_types or DEFAULT_TYPES)
        expect = len(AREAS) + 3 * len(self.types)
        if in_dim != expect:
            raise ConfigError(
                f"model.aggregator: {in_dim} tile columns, expected {expect} "
                f"for cell types {self.types}"
            )
        self.eps = float(eps)
        names: list[str] = ["tumour_fraction_logit"]
        labels: list[str] = ["tumour area, share of tissue (logit)"]
        for t in self.types:
            lab = TYPE_LABELS.get(t, t)
            for where, den in (("tissue", "tissue"), ("tumour", "tumour"), ("stroma", "stroma")):
                names.append(f"{t}_area_{where}_log")
                labels.append(f"{lab} area, share of {den} (log)")
            names.append(f"{t}_intratumoural_logit")
            labels.append(f"{lab}: intratumoural share (logit)")
            names.append(f"{t}_border_of_stroma_logit")
            labels.append(f"{lab}: share of stromal cells within the border band (logit)")
        if "macrophage" in self.types and "clever1_macrophage" in self.types:
            names.append("clever1_of_macrophage_logit")
            labels.append("Clever-1+ share of macrophages (logit)")
        fam = {
            "tumour_fraction": "tumour_fraction_logit",
            "area_tissue": "_area_tissue_log",
            "area_tumour": "_area_tumour_log",
            "area_stroma": "_area_stroma_log",
            "intratumoural": "_intratumoural_logit",
            "border": "_border_of_stroma_logit",
            "clever1_share": "clever1_of_macrophage_logit",
        }
        chosen = list(fam) if families is None else [str(f) for f in families]
        bad = [f for f in chosen if f not in fam]
        if bad:
            raise ConfigError(f"model.aggregator.families: unknown {bad}; known: {list(fam)}")
        keep = [i for i, n in enumerate(names) if any(n.endswith(fam[f]) for f in chosen)]
        self.keep = keep
        self.feature_names = [names[i] for i in keep]
        self.feature_labels = [labels[i] for i in keep]
        self.out_dim = len(keep)
        att = [t for t in (attention_types or self.types) if t in self.types]
        self.attention_types = [self.types.index(t) for t in att]

    def _logit(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.log(a + self.eps) - torch.log(b + self.eps)

    def forward(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        m = mask.to(h.dtype)
        s = (h * m[..., None]).sum(dim=1)  # (B, K)
        tissue, tumour, stroma, border = (s[:, i] for i in range(4))
        typed = s[:, 4:].reshape(s.shape[0], len(self.types), 3)  # tumour, stroma, border
        eps = self.eps
        feats = [self._logit(tumour, stroma)]
        for i in range(len(self.types)):
            t_in, t_st, t_bd = typed[:, i, 0], typed[:, i, 1], typed[:, i, 2]
            feats.append(torch.log((t_in + t_st + eps) / (tissue + eps)))
            feats.append(torch.log((t_in + eps) / (tumour + eps)))
            feats.append(torch.log((t_st + eps) / (stroma + eps)))
            feats.append(self._logit(t_in, t_st))
            feats.append(self._logit(t_bd, t_st - t_bd))
        if "clever1_macrophage" in self.types and "macrophage" in self.types:
            c = self.types.index("clever1_macrophage")
            mac = self.types.index("macrophage")
            feats.append(
                self._logit(
                    typed[:, c, :2].sum(1), typed[:, mac, :2].sum(1) - typed[:, c, :2].sum(1)
                )
            )
        out = torch.stack(feats, dim=1)[:, self.keep]
        # attention: each tile's share of the counted positive pixels (tumour + stroma)
        pos = h[..., 4:].reshape(*h.shape[:2], len(self.types), 3)[..., self.attention_types, :2]
        w = pos.sum(dim=(-1, -2)) * m
        total = w.sum(dim=1, keepdim=True)
        uniform = m / m.sum(dim=1, keepdim=True).clamp_min(1.0)
        attention = torch.where(total > 0, w / total.clamp_min(1e-12), uniform)
        return out, attention


class GeneSetScores(nn.Module):
    """(B, G) normalised expression -> (B, S) mean of each gene set's present genes."""

    def __init__(
        self,
        n_genes: int,
        gene_names: Sequence[str] | None = None,
        gene_sets: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        super().__init__()
        if not gene_sets:
            raise ConfigError("model.expression_encoder: GeneSetScores needs gene_sets")
        names = [str(g).upper() for g in (gene_names or [])]
        if len(names) != n_genes:
            raise ConfigError("model.expression_encoder: GeneSetScores needs the gene names")
        weights = torch.zeros(len(gene_sets), n_genes)
        for i, (name, genes) in enumerate(gene_sets.items()):
            idx = [names.index(g.upper()) for g in genes if g.upper() in names]
            absent = [g for g in genes if g.upper() not in names]
            if absent:  # a set with no gene present scores 0 (= the training mean) for everyone
                log.warning("gene set %s: %d gene(s) absent: %s", name, len(absent), absent[:5])
            if idx:
                weights[i, idx] = 1.0 / len(idx)
        if not weights.any():  # every score would be 0 for every patient: nothing to learn from
            kind = (
                " (expression_norm=features gives feature columns, not genes: use "
                "model/expression_encoder=mlp with it)"
                if names and all(":" in n for n in names)
                else ""
            )
            raise ConfigError(
                f"model.expression_encoder: none of the {len(gene_sets)} gene sets has a gene "
                f"among the {n_genes} expression inputs (first: {names[:3]}){kind}"
            )
        self.register_buffer("weights", weights)
        self.set_names = [str(k) for k in gene_sets]
        self.out_dim = len(self.set_names)

    def forward(self, x: Tensor) -> Tensor:
        return x.float() @ self.weights.t()

    def encode(self, x: Tensor) -> tuple[Tensor, None]:
        """The ExpressionEncoder interface (ResponseModel): scores as the embedding, no tokens."""
        return self.forward(x), None


class RunningStandardizer(nn.Module):
    """z-scores features with means/SDs pooled over every training batch seen (buffers).

    In training mode each batch first updates the pooled statistics (exact pooled mean and
    variance, Chan et al.), then is standardised with them; ``weights`` (B, F) in [0, 1] exclude
    missing entries from the statistics. Evaluation uses the stored statistics only.
    """

    def __init__(self, dim: int, min_sd: float = 1e-3) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros(dim))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("m2", torch.zeros(dim))
        self.min_sd = float(min_sd)

    @torch.no_grad()
    def update(self, x: Tensor, weights: Tensor) -> None:
        w = weights.to(x.dtype)
        n = w.sum(0)
        if not bool((n > 0).any()):
            return
        mean_b = (w * x).sum(0) / n.clamp_min(1.0)
        m2_b = (w * (x - mean_b) ** 2).sum(0)
        tot = self.count + n
        delta = mean_b - self.mean
        frac = torch.where(tot > 0, n / tot.clamp_min(1.0), torch.zeros_like(n))
        self.mean += delta * frac
        self.m2 += m2_b + delta**2 * self.count * frac
        self.count.copy_(tot)

    def sd(self) -> Tensor:
        var = self.m2 / (self.count - 1.0).clamp_min(1.0)
        return var.sqrt().clamp_min(self.min_sd)

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        if self.training:
            self.update(x.detach().float(), weights)
        z = (x - self.mean) / self.sd()
        return torch.where(weights > 0, z, torch.zeros_like(z))


def finite(x: Tensor) -> Tensor:
    """NaN/inf -> 0 (a slide with no tissue pixel gives log(eps/eps) = 0 anyway)."""
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


__all__ = [
    "DEFAULT_TYPES",
    "GeneSetScores",
    "MarkerFeatures",
    "RunningStandardizer",
    "TileMarkerCounts",
    "finite",
]
