"""Fusion of per-patient modality embeddings into one vector for the response head.

Factories are called by ``ResponseModel`` as ``fusion(input_dims={name: dim}, tile_dim=...,
token_dim=..., n_tokens=...)``; ``input_dims`` keeps the model's part order (``image``, ``expression``,
``clinical``, ``treatment``; only those in use). ``forward(parts, ctx)`` gets the part tensors
(B, d) and a context dict (``tiles`` (B, N, Dt), ``tile_mask``, ``tokens`` (B, S, Dk),
``image_present``, ``expression_present``) and returns ``(fused (B, out_dim), extras)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from immunoplex.errors import ConfigError
from immunoplex.models.ops import activation, mlp_body, safe_key_padding_mask


class ConcatFusion(nn.Module):
    """Late fusion: concatenate parts -> [elementwise sigmoid gate] -> MLP to ``hidden_dim``."""

    def __init__(
        self,
        input_dims: Mapping[str, int],
        tile_dim: int | None = None,
        token_dim: int | None = None,
        n_tokens: int | None = None,
        hidden_dim: int = 64,
        gated: bool = False,
        dropout: float = 0.25,
        act: str = "gelu",
    ) -> None:
        super().__init__()
        self.names = list(input_dims)
        total = sum(input_dims.values())
        self.gate = nn.Linear(total, total) if gated else None
        self.mlp = mlp_body(total, [hidden_dim], act=act, dropout=dropout)
        self.out_dim = hidden_dim

    def forward(
        self, parts: Mapping[str, Tensor], ctx: Mapping[str, Tensor | None]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        z = torch.cat([parts[n] for n in self.names], dim=1)
        if self.gate is not None:
            z = z * torch.sigmoid(self.gate(z))
        return self.mlp(z), {}


class GatedBilinearFusion(nn.Module):
    """Gated bilinear (Kronecker) fusion of image and expression, PORPOISE-style.

    Each modality is projected to ``gate_dim`` and gated by a sigmoid of a bilinear form of both
    modalities; a constant 1 is appended to each (keeping unimodal terms), their outer product is
    flattened and passed, with the gated vectors and any other parts (clinical, treatment), through
    an MLP to ``hidden_dim``.
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        tile_dim: int | None = None,
        token_dim: int | None = None,
        n_tokens: int | None = None,
        gate_dim: int = 16,
        hidden_dim: int = 64,
        dropout: float = 0.25,
        act: str = "gelu",
    ) -> None:
        super().__init__()
        if "image" not in input_dims or "expression" not in input_dims:
            raise ConfigError(
                "bilinear fusion needs both modalities: set modalities: [image, expression]"
            )
        d_i, d_e = input_dims["image"], input_dims["expression"]
        self.others = [n for n in input_dims if n not in ("image", "expression")]
        self.proj_i = nn.Sequential(nn.Linear(d_i, gate_dim), nn.ReLU())
        self.proj_e = nn.Sequential(nn.Linear(d_e, gate_dim), nn.ReLU())
        self.gate_i = nn.Bilinear(d_i, d_e, gate_dim)
        self.gate_e = nn.Bilinear(d_i, d_e, gate_dim)
        self.post_kron = nn.Sequential(
            nn.Dropout(dropout), nn.Linear((gate_dim + 1) ** 2, hidden_dim), activation(act)
        )
        rest = hidden_dim + 2 * gate_dim + sum(input_dims[n] for n in self.others)
        self.mlp = mlp_body(rest, [hidden_dim], act=act, dropout=dropout)
        self.out_dim = hidden_dim

    def forward(
        self, parts: Mapping[str, Tensor], ctx: Mapping[str, Tensor | None]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        xi, xe = parts["image"], parts["expression"]
        oi = self.proj_i(xi) * torch.sigmoid(self.gate_i(xi, xe))
        oe = self.proj_e(xe) * torch.sigmoid(self.gate_e(xi, xe))
        one = torch.ones_like(oi[:, :1])
        kron = torch.einsum("bi,bj->bij", torch.cat([oi, one], 1), torch.cat([oe, one], 1))
        z = [self.post_kron(kron.flatten(1)), oi, oe, *(parts[n] for n in self.others)]
        return self.mlp(torch.cat(z, dim=1)), {}


class CrossAttentionFusion(nn.Module):
    """Gene-set tokens (queries) attend to tile embeddings (keys/values, padding masked).

    The attended tokens are flattened into a co-attention vector, replaced by a learned missing
    token where either modality is absent, and concatenated with all parts before an MLP. The
    head-averaged attention (B, S, N) is returned as ``extras["cross_attention"]``.
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        tile_dim: int | None = None,
        token_dim: int | None = None,
        n_tokens: int | None = None,
        dim: int = 64,
        n_heads: int = 4,
        hidden_dim: int = 64,
        dropout: float = 0.25,
        act: str = "gelu",
    ) -> None:
        super().__init__()
        if tile_dim is None or "image" not in input_dims:
            raise ConfigError("cross-attention fusion needs the image modality")
        if not token_dim or not n_tokens or "expression" not in input_dims:
            raise ConfigError(
                "cross-attention fusion needs the expression modality with gene_sets configured"
            )
        if dim % n_heads:
            raise ConfigError(f"dim {dim} is not divisible by n_heads {n_heads}")
        self.names = list(input_dims)
        self.q = nn.Linear(token_dim, dim)
        self.kv = nn.Linear(tile_dim, dim)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, n_heads, dropout=dropout, batch_first=True)
        self.norm_out = nn.LayerNorm(dim)
        self.co = nn.Sequential(nn.Linear(n_tokens * dim, dim), activation(act))
        self.missing = nn.Parameter(torch.randn(dim) * 0.02)
        self.mlp = mlp_body(sum(input_dims.values()) + dim, [hidden_dim], act=act, dropout=dropout)
        self.out_dim = hidden_dim

    def forward(
        self, parts: Mapping[str, Tensor], ctx: Mapping[str, Tensor | None]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        tiles, mask, tokens = ctx["tiles"], ctx["tile_mask"], ctx["tokens"]
        assert tiles is not None and mask is not None and tokens is not None
        q = self.norm_q(self.q(tokens))
        kv = self.norm_kv(self.kv(tiles))
        a, w = self.attn(q, kv, kv, key_padding_mask=safe_key_padding_mask(mask))
        co = self.co(self.norm_out(q + a).flatten(1))
        both = ctx["image_present"] & ctx["expression_present"]  # type: ignore[operator]
        co = torch.where(both.unsqueeze(1), co, self.missing.to(co.dtype).expand_as(co))
        z = torch.cat([*(parts[n] for n in self.names), co], dim=1)
        return self.mlp(z), {"cross_attention": w.float() * mask.unsqueeze(1)}
