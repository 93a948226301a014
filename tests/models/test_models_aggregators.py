"""MIL aggregators: masking, permutation invariance, attention semantics."""

from __future__ import annotations

import pytest
import torch

from immunoplex.models import GatedAttentionMIL, MaxMIL, MeanMIL, TransformerMIL
from immunoplex.models.aggregators import MILAggregator

D = 12
FACTORIES = {
    "mean": lambda: MeanMIL(D, dim=8, dropout=0.0),
    "max": lambda: MaxMIL(D, dim=8, dropout=0.0),
    "gated_attention": lambda: GatedAttentionMIL(D, dim=8, attn_dim=4, dropout=0.0),
    "transformer_cls": lambda: TransformerMIL(D, dim=8, depth=2, n_heads=2, dropout=0.0),
    "transformer_attn": lambda: TransformerMIL(
        D, dim=8, depth=1, n_heads=2, pooling="attention", dropout=0.0
    ),
}


@pytest.fixture(params=sorted(FACTORIES))
def agg(request: pytest.FixtureRequest) -> MILAggregator:
    torch.manual_seed(0)
    return FACTORIES[request.param]().eval()


def _bag() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    h = torch.randn(3, 6, D)
    mask = torch.tensor(
        [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool
    )
    return h, mask


def test_shapes_and_attention(agg: MILAggregator) -> None:
    h, mask = _bag()
    pooled, attention = agg(h, mask)
    assert pooled.shape == (3, agg.out_dim)
    assert attention.shape == (3, 6)
    assert (attention[~mask] == 0).all()
    assert (attention >= 0).all()
    torch.testing.assert_close(attention.sum(dim=1), torch.ones(3))


def test_padding_is_ignored(agg: MILAggregator) -> None:
    h, mask = _bag()
    garbage = h.clone()
    garbage[~mask] = torch.randn(int((~mask).sum()), D) * 1e4
    garbage[0, 5] = float("nan")
    with torch.no_grad():
        p1, a1 = agg(h, mask)
        p2, a2 = agg(garbage, mask)
        # extra padding positions change nothing either
        h3 = torch.cat([h, torch.randn(3, 4, D) * 100], dim=1)
        m3 = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
        p3, a3 = agg(h3, m3)
    torch.testing.assert_close(p1, p2)
    torch.testing.assert_close(a1, a2)
    torch.testing.assert_close(p1, p3, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a1, a3[:, :6], rtol=1e-5, atol=1e-6)


def test_permutation_invariance(agg: MILAggregator) -> None:
    h, mask = _bag()
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        p1, a1 = agg(h, mask)
        p2, a2 = agg(h[:, perm], mask[:, perm])
    torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a1[:, perm], a2, rtol=1e-5, atol=1e-6)


def test_empty_bag_is_finite(agg: MILAggregator) -> None:
    h = torch.randn(2, 4, D)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    pooled, attention = agg(h, mask)
    assert torch.isfinite(pooled).all()
    assert (attention[1] == 0).all()
    pooled.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in agg.parameters() if p.grad is not None)


def test_mean_attention_is_uniform() -> None:
    h, mask = _bag()
    _, attention = MeanMIL(D, dim=8)(h, mask)
    torch.testing.assert_close(attention[0], torch.tensor([0.25] * 4 + [0.0] * 2))


def test_max_attention_counts_won_dimensions() -> None:
    agg = MaxMIL(D, dim=8, dropout=0.0)
    h, mask = _bag()
    pooled, attention = agg(h, mask)
    z = agg.project(h)
    winners = z.masked_fill(~mask[..., None], -1e9).argmax(dim=1)  # (B, dim)
    for i in range(3):
        counts = torch.bincount(winners[i], minlength=6).float() / 8
        torch.testing.assert_close(attention[i], counts)
    torch.testing.assert_close(pooled[2], z[2, 0])


def test_gated_attention_pooled_is_weighted_mean() -> None:
    agg = GatedAttentionMIL(D, dim=8, attn_dim=4, dropout=0.0)
    h, mask = _bag()
    pooled, attention = agg(h, mask)
    z = agg.project(h)
    torch.testing.assert_close(pooled, (attention[..., None] * z).sum(dim=1))
