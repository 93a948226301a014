"""Panel-agnostic tile encoder: one shared single-channel stem plus a marker-identity embedding.

Each channel is encoded alone by the same CNN stem, tagged with a learned embedding of its marker
name (vocabulary = the training panel's canonical markers), and the per-channel tokens are pooled
over the channels the slide has. One model therefore accepts any subset and order of known
markers; ``channel_mask`` marks the absent ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from immunoplex.errors import ConfigError, PanelMismatchError
from immunoplex.models.encoders import ConvBlock
from immunoplex.models.ops import masked_mean, masked_softmax, mlp


class MarkerEncoder(nn.Module):
    """Encode (M, C, T, T) tiles channel by channel and pool over present channels -> (M, D).

    ``pooling``: ``"attention"`` (gated attention over channels) or ``"mean"`` (masked mean).
    ``channel_dropout``: in training mode each present channel of a tile is hidden with this
    probability (at least one channel always stays), so the model learns to cope with panels
    lacking markers.
    """

    def __init__(
        self,
        n_channels: int,
        markers: Sequence[str] | None = None,
        stem_width: int = 16,
        marker_dim: int = 16,
        out_dim: int = 64,
        pooling: str = "attention",
        channel_dropout: float = 0.2,
        norm: str = "group",
        act: str = "gelu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if pooling not in ("attention", "mean"):
            raise ConfigError(f"unknown channel pooling {pooling!r}; choose 'attention' or 'mean'")
        if not 0.0 <= channel_dropout < 1.0:
            raise ConfigError(f"channel_dropout must be in [0, 1), got {channel_dropout}")
        names = list(markers) if markers is not None else [f"ch{i}" for i in range(n_channels)]
        if len(names) != n_channels:
            raise ConfigError(f"{len(names)} marker names given for {n_channels} channels")
        if len(set(names)) != len(names):
            raise ConfigError(f"duplicated marker names in panel {names}")
        self.markers = names
        self.n_channels = n_channels
        self.out_dim = out_dim
        self.pooling = pooling
        self.channel_dropout = channel_dropout
        w = stem_width
        self.stem = nn.Sequential(
            ConvBlock(1, w, 2, norm, act),
            ConvBlock(w, 2 * w, 2, norm, act),
            ConvBlock(2 * w, 2 * w, 1, norm, act),
        )
        self.marker_embedding = nn.Embedding(len(names), marker_dim)
        self.token = mlp(4 * w + marker_dim, [out_dim], out_dim, act=act, dropout=dropout)
        if pooling == "attention":
            self.attn_v = nn.Linear(out_dim, out_dim // 2)
            self.attn_u = nn.Linear(out_dim, out_dim // 2)
            self.attn_w = nn.Linear(out_dim // 2, 1)
        self.norm = nn.LayerNorm(out_dim)
        self.register_buffer("default_index", torch.arange(len(names)), persistent=False)

    def marker_index(self, names: Sequence[str]) -> Tensor:
        """Vocabulary indices for canonical marker ``names``; unknown markers are an error."""
        lookup = {m: i for i, m in enumerate(self.markers)}
        unknown = [n for n in names if n not in lookup]
        if unknown:
            raise PanelMismatchError(
                f"markers {unknown} are not in the model's panel vocabulary {self.markers}"
            )
        return torch.tensor([lookup[n] for n in names], device=self.default_index.device)

    def _drop_channels(self, mask: Tensor) -> Tensor:
        drop = torch.rand(mask.shape, device=mask.device) < self.channel_dropout
        kept = mask & ~drop
        return torch.where(kept.any(dim=1, keepdim=True), kept, mask)

    def forward(
        self, x: Tensor, channel_mask: Tensor | None = None, marker_index: Tensor | None = None
    ) -> Tensor:
        """``x`` (M, C, T, T); ``marker_index`` (C,) vocabulary index of each channel (default:
        the panel order); returns (M, out_dim)."""
        m, c, t1, t2 = x.shape
        idx = self.default_index[:c] if marker_index is None else marker_index
        mask = (
            torch.ones(m, c, dtype=torch.bool, device=x.device)
            if channel_mask is None
            else channel_mask.bool()
        )
        if self.training and self.channel_dropout > 0:
            mask = self._drop_channels(mask)
        x = x * mask.to(x.dtype)[:, :, None, None]
        f = self.stem(x.reshape(m * c, 1, t1, t2))
        f = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1).reshape(m, c, -1)
        emb = self.marker_embedding(idx).to(f.dtype).unsqueeze(0).expand(m, -1, -1)
        tokens = self.token(torch.cat([f, emb], dim=-1))  # (M, C, D)
        if self.pooling == "mean":
            pooled = masked_mean(tokens, mask, dim=1)
        else:
            scores = self.attn_w(
                torch.tanh(self.attn_v(tokens)) * torch.sigmoid(self.attn_u(tokens))
            )
            weights = masked_softmax(scores.squeeze(-1), mask, dim=1).to(tokens.dtype)
            pooled = (weights.unsqueeze(-1) * tokens).sum(dim=1)
        return self.norm(pooled)
