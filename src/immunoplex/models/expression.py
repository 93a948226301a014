"""Expression encoder: (B, G) normalised expression -> (B, D), optionally with gene-set tokens.

Gene sets are configured as lists of gene symbols; each becomes one token (a small MLP over the
set's genes that are present in ``gene_names``), usable as queries for cross-attention to tiles.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from immunoplex.errors import ConfigError
from immunoplex.models.ops import mlp, mlp_body


def resolve_gene_sets(
    gene_sets: Mapping[str, Sequence[str]], gene_names: Sequence[str] | None
) -> dict[str, list[int]]:
    """Map each named set to column indices of its genes present in ``gene_names``.

    Matching is case-insensitive. Absent genes are dropped with a warning; a set with no gene
    present is a ``ConfigError`` naming the set.
    """
    if gene_names is None:
        raise ConfigError("gene sets are configured but the data provides no gene_names")
    column = {g.upper(): i for i, g in enumerate(gene_names)}
    resolved: dict[str, list[int]] = {}
    for name, genes in gene_sets.items():
        genes = [str(g) for g in genes]
        present = [column[g.upper()] for g in genes if g.upper() in column]
        absent = [g for g in genes if g.upper() not in column]
        if not present:
            raise ConfigError(
                f"gene set {name!r}: none of its genes {genes} is in the expression data"
            )
        if absent:
            warnings.warn(
                f"gene set {name!r}: genes {absent} are absent from the expression data; "
                f"using {len(present)}/{len(genes)}",
                stacklevel=2,
            )
        resolved[str(name)] = present
    return resolved


def _lecun_normal_(module: nn.Module) -> None:
    """LeCun-normal init (std = 1/sqrt(fan_in)) for SELU networks (Klambauer et al. 2017)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=1.0 / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)


class ExpressionEncoder(nn.Module):
    """MLP over the expression vector, with normalisation and dropout.

    ``snn=True`` builds a self-normalising network (SELU, AlphaDropout, LeCun init, no norm).
    ``gene_sets`` ({name: [symbols]}) adds one token per set; tokens also feed the embedding.
    ``forward`` returns the embedding; ``encode`` returns ``(embedding, tokens | None)``.
    """

    def __init__(
        self,
        n_genes: int,
        gene_names: Sequence[str] | None = None,
        hidden_dims: Sequence[int] = (128,),
        out_dim: int = 64,
        dropout: float = 0.3,
        input_dropout: float = 0.0,
        norm: str = "layer",
        act: str = "gelu",
        snn: bool = False,
        gene_sets: Mapping[str, Sequence[str]] | None = None,
        token_dim: int = 32,
        token_hidden: int = 16,
    ) -> None:
        super().__init__()
        if n_genes < 1:
            raise ConfigError("the expression encoder needs at least one gene (n_genes=0)")
        if gene_names is not None and len(gene_names) != n_genes:
            raise ConfigError(f"{len(gene_names)} gene names given for n_genes={n_genes}")
        if snn:
            act, norm = "selu", "none"
        self.n_genes = n_genes
        self.out_dim = out_dim
        hidden = list(hidden_dims)
        self.input_dropout = (nn.AlphaDropout if snn else nn.Dropout)(input_dropout)
        self.body = mlp_body(n_genes, hidden, act=act, dropout=dropout, norm=norm)
        body_dim = hidden[-1] if hidden else n_genes

        sets = resolve_gene_sets(gene_sets, gene_names) if gene_sets else {}
        self.gene_set_names = list(sets)
        self.token_dim = token_dim if sets else 0
        self.token_mlps = nn.ModuleList(
            mlp(len(idx), [token_hidden], token_dim, act=act, final_act=True)
            for idx in sets.values()
        )
        for i, idx in enumerate(sets.values()):
            self.register_buffer(f"set_index_{i}", torch.tensor(idx, dtype=torch.long))
        self.out = nn.Linear(body_dim + len(sets) * token_dim, out_dim)
        if snn:
            _lecun_normal_(self)

    @property
    def n_tokens(self) -> int:
        return len(self.gene_set_names)

    def tokens(self, x: Tensor) -> Tensor | None:
        """Gene-set tokens (B, S, token_dim), or None when no sets are configured."""
        if not self.gene_set_names:
            return None
        out = [
            mlp_(x.index_select(1, getattr(self, f"set_index_{i}")))
            for i, mlp_ in enumerate(self.token_mlps)
        ]
        return torch.stack(out, dim=1)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """``x`` (B, G) -> ``(embedding (B, out_dim), tokens (B, S, token_dim) | None)``."""
        x = self.input_dropout(x)
        h = self.body(x)
        tok = self.tokens(x)
        if tok is not None:
            h = torch.cat([h, tok.flatten(1)], dim=1)
        return self.out(h), tok

    def forward(self, x: Tensor) -> Tensor:
        return self.encode(x)[0]
