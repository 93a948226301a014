"""MIL aggregators: a bag of tile embeddings (B, N, D) with a padding mask -> (B, dim).

Every aggregator first projects tiles to ``dim`` (Linear -> act -> dropout), is invariant to the
order of tiles, ignores padded tiles exactly, and returns ``(pooled (B, dim), attention (B, N))``:
attention is zero at padded positions; for attention models it sums to 1 over valid tiles; for
mean it is uniform; for max it is the fraction of feature dimensions each tile wins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from immunoplex.errors import ConfigError
from immunoplex.models.ops import activation, masked_mean, masked_softmax, zero_masked


class MILAggregator(nn.Module):
    """Base class: the shared input projection and the ``out_dim`` attribute."""

    def __init__(self, in_dim: int, dim: int = 64, dropout: float = 0.25, act: str = "gelu"):
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = dim
        self.project = nn.Sequential(nn.Linear(in_dim, dim), activation(act), nn.Dropout(dropout))

    def _project(self, h: Tensor, mask: Tensor) -> Tensor:
        return zero_masked(self.project(zero_masked(h, mask)), mask)


class MeanMIL(MILAggregator):
    """Masked mean of projected tiles; attention is uniform over valid tiles."""

    def forward(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        z = self._project(h, mask)
        m = mask.float()
        attention = m / m.sum(dim=1, keepdim=True).clamp_min(1.0)
        return masked_mean(z, mask, dim=1), attention


class MaxMIL(MILAggregator):
    """Per-dimension max over valid tiles; attention = share of dimensions each tile wins."""

    def forward(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        z = self._project(h, mask)
        filled = z.masked_fill(~mask.unsqueeze(-1), torch.finfo(z.dtype).min)
        values, winners = filled.max(dim=1)  # (B, dim)
        any_valid = mask.any(dim=1, keepdim=True)
        pooled = torch.where(any_valid, values, torch.zeros_like(values))
        wins = F.one_hot(winners, num_classes=z.shape[1]).float().mean(dim=1)  # (B, N)
        return pooled, wins * mask


class GatedAttentionMIL(MILAggregator):
    """Gated attention pooling (ABMIL, Ilse et al. 2018): a_i ∝ exp(w·(tanh(V h_i) ⊙ σ(U h_i)))."""

    def __init__(
        self,
        in_dim: int,
        dim: int = 64,
        attn_dim: int = 32,
        dropout: float = 0.25,
        act: str = "gelu",
    ) -> None:
        super().__init__(in_dim, dim, dropout, act)
        self.attn_v = nn.Linear(dim, attn_dim)
        self.attn_u = nn.Linear(dim, attn_dim)
        self.attn_w = nn.Linear(attn_dim, 1)

    def forward(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        z = self._project(h, mask)
        scores = self.attn_w(torch.tanh(self.attn_v(z)) * torch.sigmoid(self.attn_u(z)))
        attention = masked_softmax(scores.squeeze(-1), mask, dim=1)
        pooled = torch.bmm(attention.to(z.dtype).unsqueeze(1), z).squeeze(1)
        return pooled, attention


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block that can return head-averaged attention weights."""

    def __init__(self, dim: int, n_heads: int, ff_mult: int, dropout: float, act: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, n_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, ff_mult * dim),
            activation(act),
            nn.Dropout(dropout),
            nn.Linear(ff_mult * dim, dim),
        )
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, key_padding_mask: Tensor, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        q = self.norm1(x)
        a, w = self.attn(q, q, q, key_padding_mask=key_padding_mask, need_weights=need_weights)
        x = x + self.drop(a)
        x = x + self.drop(self.ff(self.norm2(x)))
        return x, w


class TransformerMIL(MILAggregator):
    """A small transformer over the bag (no positional encoding: order-invariant).

    ``pooling="cls"`` reads a learned CLS token (attention = the CLS row of the last layer,
    renormalised over valid tiles); ``pooling="attention"`` gated-attention-pools the outputs.
    """

    def __init__(
        self,
        in_dim: int,
        dim: int = 64,
        depth: int = 2,
        n_heads: int = 4,
        ff_mult: int = 2,
        pooling: str = "cls",
        dropout: float = 0.1,
        act: str = "gelu",
    ) -> None:
        super().__init__(in_dim, dim, dropout, act)
        if pooling not in ("cls", "attention"):
            raise ConfigError(f"unknown pooling {pooling!r}; choose 'cls' or 'attention'")
        if depth < 1:
            raise ConfigError(f"transformer depth must be >= 1, got {depth}")
        if dim % n_heads:
            raise ConfigError(f"dim {dim} is not divisible by n_heads {n_heads}")
        self.pooling = pooling
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, n_heads, ff_mult, dropout, act) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        if pooling == "attention":
            self.pool = GatedAttentionMIL(dim, dim, max(dim // 2, 1), dropout=0.0, act=act)

    def forward(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        b = h.shape[0]
        z = self._project(h, mask)
        x = torch.cat([self.cls.to(z.dtype).expand(b, -1, -1), z], dim=1)
        valid = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        kpm = ~valid
        weights: Tensor | None = None
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            x, weights = block(x, kpm, need_weights=last and self.pooling == "cls")
        x = self.norm(x)
        if self.pooling == "attention":
            return self.pool(x[:, 1:], mask)
        assert weights is not None
        cls_row = weights[:, 0, 1:].float() * mask
        attention = cls_row / cls_row.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return x[:, 0], attention
