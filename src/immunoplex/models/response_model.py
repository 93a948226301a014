"""ResponseModel: tiles/embeddings + expression + clinical + treatment -> response logit.

Built by ``hydra.utils.instantiate(cfg.model, n_channels=C, markers=[...], n_genes=G,
gene_names=[...], n_clinical=K, treatments=[...])``. Sub-components come from the config as
``_partial_: true`` factories (or ready modules) and are called here with the data dimensions:

- ``encoder(n_channels=, markers=)``          tile encoder, (M, C, T, T) -> (M, D_tile)
- ``aggregator(in_dim=)``                     MIL pooling, (B, N, D_tile) + mask -> (B, D_img)
- ``expression_encoder(n_genes=, gene_names=)`` (B, G) -> (B, D_expr) [+ gene-set tokens]
- ``fusion(input_dims=, tile_dim=, token_dim=, n_tokens=)`` parts -> (B, D_fused)

Absent modalities (``has_image`` / ``has_expression`` False) are replaced by learned missing
tokens; in training, ``modality_dropout`` hides one present modality of a patient with that
probability so the model learns to predict from either alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from immunoplex.errors import ConfigError
from immunoplex.models.aggregators import GatedAttentionMIL
from immunoplex.models.encoders import SmallCNN
from immunoplex.models.expression import ExpressionEncoder
from immunoplex.models.fusion import ConcatFusion
from immunoplex.models.ops import activation, zero_masked

MODALITIES = ("image", "expression")
TREATMENT_MODES = ("none", "embedding", "head", "both")


def _build(spec: Any, default: Callable[..., nn.Module], what: str, **dims: Any) -> nn.Module:
    """Instantiate a sub-component from a factory (``_partial_``), a module, or a default."""
    if spec is None:
        spec = default
    if isinstance(spec, nn.Module):
        return spec
    if not callable(spec):
        raise ConfigError(f"model.{what} must be a _partial_ factory or a module, got {spec!r}")
    module = spec(**dims)
    if not isinstance(module, nn.Module) or not hasattr(module, "out_dim"):
        raise ConfigError(f"model.{what} did not build a module with an out_dim attribute")
    return module


class ResponseModel(nn.Module):
    """Multimodal immunotherapy-response model (image MIL, expression, clinical, treatment).

    ``modalities``: any non-empty subset of ``["image", "expression"]``.
    ``name`` labels the configuration (reports); it does not change the model.
    ``treatment_mode``: ``"embedding"`` (treatment embedding joins the fusion), ``"head"`` (one
    output per treatment, the patient's own is read), ``"both"`` or ``"none"``.
    ``risk_head``: a second head on the same fused embedding, ``out["risk"]`` = the Cox log
    hazard (task=survival|both; per treatment like the logit head when treatment_mode has heads).
    """

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
        fusion: Any = None,
        use_clinical: bool = True,
        clinical_dim: int = 16,
        treatment_mode: str = "both",
        treatment_dim: int = 8,
        dropout: float = 0.25,
        modality_dropout: float = 0.0,
        channels_last: bool = False,
        name: str | None = None,
        risk_head: bool = False,
    ) -> None:
        super().__init__()
        self.name = name
        mods = [str(m) for m in modalities]
        if not mods or any(m not in MODALITIES for m in mods) or len(set(mods)) != len(mods):
            raise ConfigError(
                f"modalities must be a non-empty subset of {list(MODALITIES)}: {mods}"
            )
        if treatment_mode not in TREATMENT_MODES:
            raise ConfigError(f"treatment_mode {treatment_mode!r} not in {TREATMENT_MODES}")
        if not 0.0 <= modality_dropout <= 0.5:
            raise ConfigError(f"modality_dropout must be in [0, 0.5], got {modality_dropout}")
        self.modalities = [m for m in MODALITIES if m in mods]
        self.markers = list(markers) if markers is not None else None
        self.treatments = list(treatments) if treatments else []
        self.treatment_mode = treatment_mode
        self.modality_dropout = modality_dropout
        self.channels_last = channels_last
        self.n_channels = n_channels
        self.tile_embedding_dim = 0
        parts: dict[str, int] = {}

        if "image" in self.modalities:
            self.encoder = _build(
                encoder, SmallCNN, "encoder", n_channels=n_channels, markers=self.markers
            )
            self.tile_embedding_dim = int(self.encoder.out_dim)
            self.aggregator = _build(
                aggregator, GatedAttentionMIL, "aggregator", in_dim=self.tile_embedding_dim
            )
            parts["image"] = int(self.aggregator.out_dim)
            self.missing_image = nn.Parameter(torch.randn(parts["image"]) * 0.02)

        token_dim = n_tokens = 0
        if "expression" in self.modalities:
            if n_genes < 1:
                raise ConfigError("the expression modality is configured but n_genes is 0")
            self.expression_encoder = _build(
                expression_encoder,
                ExpressionEncoder,
                "expression_encoder",
                n_genes=n_genes,
                gene_names=list(gene_names) if gene_names is not None else None,
            )
            parts["expression"] = int(self.expression_encoder.out_dim)
            token_dim = int(getattr(self.expression_encoder, "token_dim", 0))
            n_tokens = int(getattr(self.expression_encoder, "n_tokens", 0))
            self.missing_expression = nn.Parameter(torch.randn(parts["expression"]) * 0.02)

        self.n_clinical = n_clinical if use_clinical else 0
        if self.n_clinical > 0:
            self.clinical_encoder = nn.Sequential(
                nn.Linear(self.n_clinical, clinical_dim), activation("gelu")
            )
            parts["clinical"] = clinical_dim

        self.n_treatments = max(len(self.treatments), 1)
        if treatment_mode in ("embedding", "both"):
            self.treatment_embedding = nn.Embedding(self.n_treatments, treatment_dim)
            parts["treatment"] = treatment_dim

        self.part_dims = parts
        self.fusion = _build(
            fusion,
            ConcatFusion,
            "fusion",
            input_dims=dict(parts),
            tile_dim=self.tile_embedding_dim or None,
            token_dim=token_dim or None,
            n_tokens=n_tokens or None,
        )
        n_out = self.n_treatments if treatment_mode in ("head", "both") else 1
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(int(self.fusion.out_dim), n_out))
        self.risk_head = (
            nn.Sequential(nn.Dropout(dropout), nn.Linear(int(self.fusion.out_dim), n_out))
            if risk_head
            else None
        )

    # ------------------------------------------------------------------------------------------
    def embed_tiles(self, tiles: Tensor, channel_mask: Tensor | None = None) -> Tensor:
        """The tile encoder alone: (M, C, T, T) -> (M, tile_embedding_dim)."""
        if "image" not in self.modalities:
            raise ConfigError("this model has no image modality: it cannot embed tiles")
        if self.channels_last:
            tiles = tiles.contiguous(memory_format=torch.channels_last)
        return self.encoder(tiles, channel_mask)

    def _tile_embeddings(self, batch: Mapping[str, Tensor], mask: Tensor) -> Tensor:
        if "embeddings" in batch:
            emb = batch["embeddings"]
            if emb.shape[-1] != self.tile_embedding_dim:
                raise ConfigError(
                    f"cached tile embeddings have dimension {emb.shape[-1]} but this model's tile "
                    f"encoder produces {self.tile_embedding_dim}; re-run the embedding step"
                )
            return emb
        tiles = batch["tiles"]
        b, n, c, t1, t2 = tiles.shape
        zero = torch.zeros((), dtype=tiles.dtype, device=tiles.device)
        tiles = torch.where(mask[:, :, None, None, None], tiles, zero)
        cm = batch.get("channel_mask")
        flat_cm = None if cm is None else cm.bool()[:, None, :].expand(b, n, c).reshape(b * n, c)
        h = self.embed_tiles(tiles.reshape(b * n, c, t1, t2), flat_cm)
        return h.reshape(b, n, -1)

    def _modality_dropout(self, img: Tensor, expr: Tensor) -> tuple[Tensor, Tensor]:
        """Hide one of two present modalities per patient with prob ``modality_dropout`` each."""
        both = img & expr
        r = torch.rand(2, img.shape[0], device=img.device)
        drop_img = both & (r[0] < self.modality_dropout)
        drop_expr = both & (r[1] < self.modality_dropout) & ~drop_img
        return img & ~drop_img, expr & ~drop_expr

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """See the module docstring and docs/models.md for the batch contract."""
        out: dict[str, Tensor] = {}
        ref = batch.get("tiles", batch.get("embeddings", batch.get("expression")))
        assert ref is not None, "batch has neither tiles/embeddings nor expression"
        b, device = ref.shape[0], ref.device
        ones = torch.ones(b, dtype=torch.bool, device=device)

        parts: dict[str, Tensor] = {}
        ctx: dict[str, Tensor | None] = {"tiles": None, "tile_mask": None, "tokens": None}
        img_present = expr_present = ones
        pooled_img = pooled_expr = None
        if "image" in self.modalities:
            mask = batch["tile_mask"].bool()
            h = zero_masked(self._tile_embeddings(batch, mask), mask)
            pooled_img, attention = self.aggregator(h, mask)
            out["attention"] = attention
            img_present = batch.get("has_image", ones).bool() & mask.any(dim=1)
            ctx["tiles"], ctx["tile_mask"] = h, mask
        if "expression" in self.modalities:
            expr_present = batch.get("has_expression", ones).bool()
            expr = batch["expression"]
            expr = torch.where(expr_present.unsqueeze(1), expr, torch.zeros_like(expr))
            pooled_expr, tokens = self.expression_encoder.encode(expr)
            ctx["tokens"] = tokens
        if self.training and self.modality_dropout > 0 and len(self.modalities) == 2:
            img_present, expr_present = self._modality_dropout(img_present, expr_present)

        if pooled_img is not None:
            fill = self.missing_image.to(pooled_img.dtype).expand_as(pooled_img)
            parts["image"] = torch.where(img_present.unsqueeze(1), pooled_img, fill)
            out["image_embedding"] = parts["image"]
        if pooled_expr is not None:
            fill = self.missing_expression.to(pooled_expr.dtype).expand_as(pooled_expr)
            parts["expression"] = torch.where(expr_present.unsqueeze(1), pooled_expr, fill)
            out["expression_embedding"] = parts["expression"]
        ctx["image_present"], ctx["expression_present"] = img_present, expr_present

        treatment = batch.get("treatment")
        if treatment is None:
            treatment = torch.zeros(b, dtype=torch.long, device=device)
        # indices are validated by the data layer; clamping keeps forward free of data-dependent
        # checks (torch.compile) and never indexes out of range on an accelerator
        treatment = treatment.long().clamp(0, self.n_treatments - 1)
        if self.n_clinical > 0:
            clinical = batch.get("clinical")
            if clinical is None:  # not provided: the standardised mean, as the data layer fills
                clinical = torch.zeros(b, self.n_clinical, device=device)
            if clinical.shape[1] != self.n_clinical:
                raise ConfigError(
                    f"model expects {self.n_clinical} clinical covariates, batch has "
                    f"{clinical.shape[1]}"
                )
            parts["clinical"] = self.clinical_encoder(clinical)
        if "treatment" in self.part_dims:
            parts["treatment"] = self.treatment_embedding(treatment)

        fused, extras = self.fusion(parts, ctx)
        out.update(extras)
        logits = self.head(fused).float()
        if logits.shape[1] > 1:
            out["treatment_logits"] = logits
            out["logit"] = logits.gather(1, treatment.unsqueeze(1)).squeeze(1)
        else:
            out["logit"] = logits.squeeze(1)
        if self.risk_head is not None:
            risks = self.risk_head(fused).float()
            pick = (
                treatment.unsqueeze(1)
                if risks.shape[1] > 1
                else torch.zeros_like(treatment)[:, None]
            )
            out["risk"] = risks.gather(1, pick).squeeze(1)
        out["fused_embedding"] = fused
        return out

    @torch.no_grad()
    def counterfactual_logits(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Logits (B, n_treatments): the prediction for each patient under every treatment."""
        ref = batch.get("tiles", batch.get("embeddings", batch.get("expression")))
        assert ref is not None
        cols = []
        for t in range(self.n_treatments):
            tb = dict(batch)
            tb["treatment"] = torch.full((ref.shape[0],), t, dtype=torch.long, device=ref.device)
            cols.append(self.forward(tb)["logit"])
        return torch.stack(cols, dim=1)
