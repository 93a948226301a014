"""``data.transforms.encode_tile_batches``: the one tile -> embedding loop."""

from __future__ import annotations

import numpy as np
import torch

from immunoplex.data.transforms import encode_tile_batches


def test_batches_in_any_order_land_in_their_rows() -> None:
    tiles = torch.arange(10, dtype=torch.float32)[:, None, None, None].expand(10, 2, 3, 3)

    def encode(x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))  # (M, 2)

    orders = [np.array([7, 2, 9]), np.array([0, 1, 3, 4]), np.array([8, 6, 5])]
    shuffled = encode_tile_batches(encode, ((r, tiles[r]) for r in orders), 10, "cpu")
    sliced = encode_tile_batches(
        encode, ((slice(a, a + 4), tiles[a : a + 4]) for a in range(0, 10, 4)), 10, "cpu"
    )
    assert torch.equal(shuffled, encode(tiles)) and torch.equal(sliced, encode(tiles))
    assert encode_tile_batches(encode, iter(()), 0, "cpu", dim=5).shape == (0, 5)
