"""Expression encoder: MLP/SNN variants and gene-set tokens."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from immunoplex.errors import ConfigError
from immunoplex.models import ExpressionEncoder, resolve_gene_sets

GENES = ["CD163", "mrc1", "STAB1", "IFNG", "STAT1", "DKK1", "ACTB", "GAPDH"]


def test_mlp_shapes_and_norm() -> None:
    enc = ExpressionEncoder(8, GENES, hidden_dims=[16], out_dim=6, norm="layer")
    assert any(isinstance(m, nn.LayerNorm) for m in enc.modules())
    emb, tokens = enc.encode(torch.randn(4, 8))
    assert emb.shape == (4, 6) and tokens is None
    assert enc(torch.randn(4, 8)).shape == (4, 6)


def test_snn_uses_selu_and_alpha_dropout() -> None:
    enc = ExpressionEncoder(8, GENES, hidden_dims=[16, 16], out_dim=6, snn=True, dropout=0.1)
    kinds = {type(m) for m in enc.modules()}
    assert nn.SELU in kinds and nn.AlphaDropout in kinds
    assert nn.LayerNorm not in kinds and nn.BatchNorm1d not in kinds
    first = enc.body[0]
    assert abs(first.weight.std().item() - 8**-0.5) < 0.15


def test_gene_set_tokens() -> None:
    sets = {"macrophage": ["CD163", "MRC1", "STAB1", "MSR1"], "ifng": ["IFNG", "STAT1"]}
    with pytest.warns(UserWarning, match="MSR1"):
        enc = ExpressionEncoder(8, GENES, out_dim=6, gene_sets=sets, token_dim=5)
    assert enc.gene_set_names == ["macrophage", "ifng"] and enc.n_tokens == 2
    x = torch.randn(3, 8)
    emb, tokens = enc.encode(x)
    assert emb.shape == (3, 6) and tokens.shape == (3, 2, 5)
    # the macrophage token depends only on its genes (case-insensitive match: mrc1 == MRC1)
    y = x.clone()
    y[:, [3, 4, 5, 6, 7]] = torch.randn(3, 5)
    torch.testing.assert_close(enc.tokens(y)[:, 0], tokens[:, 0])
    assert not torch.allclose(enc.tokens(y)[:, 1], tokens[:, 1])


def test_gene_set_errors() -> None:
    with pytest.raises(ConfigError, match="neutrophil"):
        resolve_gene_sets({"neutrophil": ["CXCR2", "CEACAM8"]}, GENES)
    with pytest.raises(ConfigError, match="gene_names"):
        resolve_gene_sets({"x": ["CD163"]}, None)
    assert resolve_gene_sets({"x": ["stab1", "CD163"]}, GENES) == {"x": [2, 0]}
