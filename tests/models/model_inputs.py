"""Tiny model inputs shared by the model tests (imported as a plain module)."""

from __future__ import annotations

import torch

MARKERS = ["DAPI", "PanCK", "CD8", "CD68", "STAB1", "CD31", "CD66b"]
GENE_NAMES = [f"GENE{i}" for i in range(10)] + [
    "CD163", "MRC1", "STAB1", "IFNG", "STAT1", "CXCL9", "DKK1", "S100A8", "S100A9", "CSF1R",
]  # fmt: skip


def make_batch(
    b: int = 3, n: int = 5, c: int = 7, t: int = 32, g: int = 20, k: int = 2, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Patient 0 has both modalities and padded tiles, patient 1 lacks expression, patient 2 lacks
    the image (all tiles padding); treatments cover both arms so every parameter is used."""
    gen = torch.Generator().manual_seed(seed)
    tile_mask = torch.ones(b, n, dtype=torch.bool)
    tile_mask[0, 3:] = False
    if b > 2:
        tile_mask[2, :] = False
    has_image = tile_mask.any(dim=1)
    has_expression = torch.ones(b, dtype=torch.bool)
    if b > 1:
        has_expression[1] = False
    expression = torch.randn(b, g, generator=gen) * has_expression[:, None]
    return {
        "tiles": torch.rand(b, n, c, t, t, generator=gen),
        "tile_mask": tile_mask,
        "channel_mask": torch.ones(b, c, dtype=torch.bool),
        "has_image": has_image,
        "expression": expression,
        "has_expression": has_expression,
        "clinical": torch.randn(b, k, generator=gen),
        "treatment": torch.arange(b) % 2,
        "label": torch.tensor([1.0, 0.0, 1.0][:b] + [0.0] * max(0, b - 3)),
    }
