"""FeatureModel: a regularised linear (or small MLP) response model over named biology features.

Inputs follow the batch contract of :class:`~immunoplex.models.response_model.ResponseModel`
(``tiles`` or ``embeddings`` + ``tile_mask``, ``expression`` + ``has_expression``,
``clinical``, ``treatment``), so training, the embedding cache, the checkpoint, predict,
calibration and explanations are shared. The parts:

- image: ``encoder`` (default :class:`TileMarkerCounts`, fixed per-tile pixel counts) and
  ``aggregator`` (default :class:`MarkerFeatures`, counts -> features); the counts are the
  "tile embeddings" of the two-stage cache (``frozen_tile_features: true`` makes training embed
  once; predict computes them from the slide with the same module);
- expression: ``expression_encoder`` (default :class:`GeneSetScores`);
- clinical: the standardised clinical inputs as they are;
- everything is z-scored by a :class:`RunningStandardizer` (missing modality -> 0, the training
  mean), then ``logit_t = b_t + sum_f (w_f + v_tf) x_f`` (+ an optional MLP term): ``w`` the
  main effects, ``v`` the treatment interactions, with their own L2 penalties
  (:meth:`penalty`, added to the training loss).

``out["feature_contributions"]`` (B, F) = x_f (w_f + v_tf) for the patient's treatment: they sum
to ``logit - b_t`` for the linear model, in logit units, one per named feature
(``feature_labels`` read as biology, e.g. "Clever-1+ (STAB1+CD68+) macrophage area, share of
stroma (log)").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from immunoplex.errors import ConfigError
from immunoplex.models.feature_extract import (
    DEFAULT_TYPES,
    GeneSetScores,
    MarkerFeatures,
    RunningStandardizer,
    TileMarkerCounts,
    finite,
)
from immunoplex.models.ops import zero_masked

MODALITIES = ("image", "expression")


def _make(spec: Any, default: Any, what: str, **dims: Any) -> nn.Module:
    if spec is None:
        spec = default
    if isinstance(spec, nn.Module):
        return spec
    if not callable(spec):
        raise ConfigError(f"model.{what} must be a _partial_ factory or a module, got {spec!r}")
    module = spec(**dims)
    if not hasattr(module, "out_dim"):
        raise ConfigError(f"model.{what} did not build a module with an out_dim attribute")
    return module


class FeatureModel(nn.Module):
    """Linear / small-MLP response model over image, expression and clinical features."""

    def __init__(
        self,
        n_channels: int,
        markers: Sequence[str] | None = None,
        n_genes: int = 0,
        gene_names: Sequence[str] | None = None,
        n_clinical: int = 0,
        treatments: Sequence[str] | None = None,
        modalities: Sequence[str] = MODALITIES,
        encoder: Any = None,
        aggregator: Any = None,
        expression_encoder: Any = None,
        fusion: Any = None,  # accepted for the shared build path (embedding stage); unused
        use_clinical: bool = True,
        clinical_names: Sequence[str] | None = None,
        interactions: bool = True,
        interaction_features: Sequence[str] | None = None,
        l2_main: float = 1e-2,
        l2_interaction: float = 3e-2,
        hidden_dim: int = 0,
        dropout: float = 0.0,
        lr_scale: float = 20.0,
        frozen_tile_features: bool = True,
        name: str | None = None,
        risk_head: bool = False,
        table_features: Sequence[str] = (),
        table_labels: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        del fusion, frozen_tile_features  # the latter is read by the training run
        self.name = name
        mods = [str(m) for m in modalities]
        if any(m not in MODALITIES for m in mods) or not (mods or table_features):
            raise ConfigError(
                f"modalities must be a subset of {list(MODALITIES)}, non-empty unless a patient "
                "feature table is read"
            )
        self.modalities = [m for m in MODALITIES if m in mods]
        self.markers = list(markers) if markers is not None else None
        self.treatments = list(treatments) if treatments else []
        self.n_treatments = max(len(self.treatments), 1)
        self.n_channels = n_channels
        self.tile_embedding_dim = 0
        names: list[str] = []
        labels: list[str] = []
        if "image" in self.modalities:
            self.encoder = _make(
                encoder, TileMarkerCounts, "encoder", n_channels=n_channels, markers=self.markers
            )
            self.tile_embedding_dim = int(self.encoder.out_dim)
            types = list(getattr(self.encoder, "types", DEFAULT_TYPES))
            self.aggregator = _make(
                aggregator,
                MarkerFeatures,
                "aggregator",
                in_dim=self.tile_embedding_dim,
                cell_types=types,
            )
            names += [f"image:{n}" for n in self.aggregator.feature_names]
            labels += list(self.aggregator.feature_labels)
        self.n_image = len(names)
        if "expression" in self.modalities:
            if n_genes < 1:
                raise ConfigError("the expression modality is configured but n_genes is 0")
            self.expression_encoder = _make(
                expression_encoder,
                GeneSetScores,
                "expression_encoder",
                n_genes=n_genes,
                gene_names=list(gene_names) if gene_names is not None else None,
            )
            sets = list(getattr(self.expression_encoder, "set_names", []))
            sets = sets or [f"e{i}" for i in range(int(self.expression_encoder.out_dim))]
            names += [f"expression:{s}" for s in sets]
            labels += [f"gene set {s} (mean z-score)" for s in sets]
        self.n_expression = len(names) - self.n_image
        # a patient feature table (data.features, e.g. the cell stage's cell_features.csv)
        self.table_features = [str(c) for c in table_features]
        tl = list(table_labels or self.table_features)
        names += [f"cells:{c}" for c in self.table_features]
        labels += [str(tl[i]) if i < len(tl) else c for i, c in enumerate(self.table_features)]
        self.n_table = len(self.table_features)
        self.n_clinical = int(n_clinical) if use_clinical else 0
        cn = list(clinical_names or [])
        for i in range(self.n_clinical):
            col = cn[i // 2] if i // 2 < len(cn) else f"clinical{i // 2}"
            names.append(f"clinical:{col}" + ("" if i % 2 == 0 else "_observed"))
            labels.append(f"{col} (standardised)" if i % 2 == 0 else f"{col} observed")
        self.feature_names = names
        self.feature_labels = labels
        n_feat = len(names)
        if n_feat == 0:
            raise ConfigError("FeatureModel: no feature (no modality and no clinical input)")
        self.n_features = n_feat
        # the shared optimiser's lr suits the CNNs; Adam moves each raw weight ~lr per step, so
        # the linear weights are stored divided by lr_scale (a larger effective step)
        self.lr_scale = float(lr_scale)
        self.standardizer = RunningStandardizer(n_feat)
        self.main = nn.Linear(n_feat, 1, bias=False)
        nn.init.zeros_(self.main.weight)
        self.bias = nn.Parameter(torch.zeros(self.n_treatments))
        # survival head (task=survival|both): a second linear map of the same features
        self.risk = nn.Linear(n_feat, 1, bias=False) if risk_head else None
        if self.risk is not None:
            nn.init.zeros_(self.risk.weight)
        self.interaction = nn.Parameter(
            torch.zeros(self.n_treatments, n_feat), requires_grad=bool(interactions)
        )
        self.use_interactions = bool(interactions)
        # which features get a per-treatment delta (None: all); names as in feature_names
        keep = torch.ones(n_feat)
        if interaction_features is not None:
            groups = {n.split(":")[0] for n in names}  # a part not built here is not an error
            unknown = [
                f for f in interaction_features if f not in names and f.split(":")[0] in groups
            ]
            if unknown:
                raise ConfigError(f"model.interaction_features: unknown feature(s) {unknown}")
            keep = torch.tensor([1.0 if n in set(interaction_features) else 0.0 for n in names])
        self.register_buffer("interaction_mask", keep)
        self.l2_main, self.l2_interaction = float(l2_main), float(l2_interaction)
        self.mlp: nn.Module | None = None
        if hidden_dim > 0:
            self.mlp = nn.Sequential(
                nn.Linear(n_feat + self.n_treatments, hidden_dim),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden_dim, 1),
            )

    # ------------------------------------------------------------------------------------------
    def embed_tiles(self, tiles: Tensor, channel_mask: Tensor | None = None) -> Tensor:
        """Per-tile counts: (M, C, T, T) -> (M, tile_embedding_dim)."""
        if "image" not in self.modalities:
            raise ConfigError("this model has no image modality: it cannot embed tiles")
        return self.encoder(tiles, channel_mask)

    def _tile_embeddings(self, batch: Mapping[str, Tensor], mask: Tensor) -> Tensor:
        if "embeddings" in batch:
            emb = batch["embeddings"]
            if emb.shape[-1] != self.tile_embedding_dim:
                raise ConfigError(
                    f"cached tile embeddings have dimension {emb.shape[-1]} but this model's tile "
                    f"encoder produces {self.tile_embedding_dim}; re-run the embedding step"
                )
            return emb.float()
        tiles = batch["tiles"]
        b, n, c, t1, t2 = tiles.shape
        zero = torch.zeros((), dtype=tiles.dtype, device=tiles.device)
        tiles = torch.where(mask[:, :, None, None, None], tiles, zero)
        cm = batch.get("channel_mask")
        flat_cm = None if cm is None else cm.bool()[:, None, :].expand(b, n, c).reshape(b * n, c)
        return self.embed_tiles(tiles.reshape(b * n, c, t1, t2), flat_cm).reshape(b, n, -1)

    def features(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Raw features (B, F), their presence weights (B, F) and extra outputs."""
        ref = batch.get("tiles", batch.get("embeddings", batch.get("expression")))
        if ref is None:
            ref = batch["clinical"]
        b, device = ref.shape[0], ref.device
        ones = torch.ones(b, dtype=torch.bool, device=device)
        cols: list[Tensor] = []
        present: list[Tensor] = []
        extra: dict[str, Tensor] = {}
        if "image" in self.modalities:
            mask = batch["tile_mask"].bool()
            h = zero_masked(self._tile_embeddings(batch, mask), mask)
            feats, attention = self.aggregator(h, mask)
            extra["attention"] = attention
            img = batch.get("has_image", ones).bool() & mask.any(dim=1)
            cols.append(finite(feats))
            present.append(img[:, None].expand(-1, feats.shape[1]))
        if "expression" in self.modalities:
            has = batch.get("has_expression", ones).bool()
            expr = batch["expression"]
            expr = torch.where(has[:, None], expr, torch.zeros_like(expr))
            scores = self.expression_encoder(expr)
            cols.append(finite(scores))
            present.append(has[:, None].expand(-1, scores.shape[1]))
        if self.n_table:
            tab = batch.get("features")
            if tab is None or tab.shape[1] != self.n_table:
                got = "none" if tab is None else tab.shape[1]
                raise ConfigError(
                    f"model reads {self.n_table} patient-table features "
                    f"({self.table_features[:3]}...), the batch has {got}"
                )
            has = batch.get("has_features", ones).bool()[:, None] & torch.isfinite(tab)
            cols.append(torch.where(has, tab.float(), torch.zeros_like(tab, dtype=torch.float)))
            present.append(has)
        if self.n_clinical > 0:
            clin = batch.get("clinical")
            if clin is None:
                clin = torch.zeros(b, self.n_clinical, device=device)
            if clin.shape[1] != self.n_clinical:
                raise ConfigError(
                    f"model expects {self.n_clinical} clinical covariates, batch has "
                    f"{clin.shape[1]}"
                )
            cols.append(clin.float())
            present.append(ones[:, None].expand(-1, self.n_clinical))
        return torch.cat(cols, dim=1), torch.cat(present, dim=1).float(), extra

    def _treatment(self, batch: Mapping[str, Tensor], b: int, device: torch.device) -> Tensor:
        t = batch.get("treatment")
        if t is None:
            t = torch.zeros(b, dtype=torch.long, device=device)
        return t.long().clamp(0, self.n_treatments - 1)

    def weights(self) -> Tensor:
        """Effective weights (n_treatments, F): main effect + interaction per treatment."""
        inter = self.interaction * self.interaction_mask
        if not self.use_interactions:
            inter = torch.zeros_like(inter)
        return (self.main.weight + inter) * self.lr_scale

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        raw, weight, out = self.features(batch)
        z = self.standardizer(raw, weight)
        b = z.shape[0]
        w = self.weights()  # (T, F)
        all_logits = z @ w.t() + self.bias * self.lr_scale  # (B, T)
        if self.mlp is not None:
            eye = torch.eye(self.n_treatments, device=z.device, dtype=z.dtype)
            zz = z[:, None, :].expand(-1, self.n_treatments, -1)
            tt = eye[None].expand(b, -1, -1)
            all_logits = all_logits + self.mlp(torch.cat([zz, tt], dim=-1)).squeeze(-1)
        treatment = self._treatment(batch, b, z.device)
        out["treatment_logits"] = all_logits.float()
        out["logit"] = all_logits.gather(1, treatment[:, None]).squeeze(1).float()
        if self.risk is not None:  # task=survival|both: linear Cox log hazard on the features
            out["risk"] = (z @ self.risk.weight.t() * self.lr_scale).squeeze(1).float()
        out["features"] = z
        out["feature_contributions"] = z * w[treatment]
        out["fused_embedding"] = z
        ni, ne, nt = self.n_image, self.n_expression, self.n_table
        if ni or nt:  # the cell table is image-derived
            img = [z[:, :ni]] if ni else []
            out["image_embedding"] = torch.cat(
                img + ([z[:, ni + ne : ni + ne + nt]] if nt else []), 1
            )
        if ne:
            out["expression_embedding"] = z[:, ni : ni + ne]
        return out

    def penalty(self) -> Tensor:
        """L2 penalty on main effects and treatment interactions (added to the loss)."""
        s2 = self.lr_scale**2
        pen = self.l2_main * s2 * self.main.weight.pow(2).sum()
        if self.risk is not None:  # the survival head: same L2 as the main effects
            pen = pen + self.l2_main * s2 * self.risk.weight.pow(2).sum()
        if self.use_interactions:
            inter = self.interaction * self.interaction_mask
            pen = pen + self.l2_interaction * s2 * inter.pow(2).sum()
        return pen

    @torch.no_grad()
    def counterfactual_logits(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Logits (B, n_treatments): the prediction for each patient under every treatment."""
        return self.forward(batch)["treatment_logits"]
