"""Panel-agnostic marker encoder: order/subset invariance and channel dropout."""

from __future__ import annotations

import pytest
import torch

from immunoplex.errors import ConfigError, PanelMismatchError
from immunoplex.models import MarkerEncoder

from .model_inputs import MARKERS


@pytest.fixture(params=["attention", "mean"])
def enc(request: pytest.FixtureRequest) -> MarkerEncoder:
    torch.manual_seed(0)
    return MarkerEncoder(len(MARKERS), MARKERS, stem_width=8, out_dim=16, pooling=request.param)


def test_same_output_under_channel_permutation(enc: MarkerEncoder) -> None:
    enc.eval()
    x = torch.rand(3, 7, 32, 32)
    perm = [4, 0, 6, 2, 1, 5, 3]
    names = [MARKERS[i] for i in perm]
    with torch.no_grad():
        ref = enc(x)
        out = enc(x[:, perm], marker_index=enc.marker_index(names))
    torch.testing.assert_close(ref, out, rtol=1e-5, atol=1e-5)


def test_missing_channel(enc: MarkerEncoder) -> None:
    enc.eval()
    x = torch.rand(3, 7, 32, 32)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[:, MARKERS.index("CD8")] = False
    with torch.no_grad():
        full = enc(x)
        missing = enc(x, mask)
        # the slide that lacks CD8 is a 6-marker panel: same as feeding those 6 channels alone
        keep = [i for i, m in enumerate(MARKERS) if m != "CD8"]
        subset = enc(x[:, keep], marker_index=enc.marker_index([MARKERS[i] for i in keep]))
        # content of the absent channel is ignored
        y = x.clone()
        y[:, MARKERS.index("CD8")] = 50.0
        garbage = enc(y, mask)
    assert torch.isfinite(missing).all()
    assert not torch.allclose(full, missing)
    torch.testing.assert_close(missing, subset, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(missing, garbage)


def test_channel_dropout_keeps_one_channel() -> None:
    torch.manual_seed(0)
    enc = MarkerEncoder(7, MARKERS, stem_width=8, out_dim=16, channel_dropout=0.9)
    mask = torch.zeros(500, 7, dtype=torch.bool)
    mask[:, :3] = True
    kept = enc._drop_channels(mask)
    assert (kept.sum(dim=1) >= 1).all()
    assert not (kept & ~mask).any()
    assert kept.sum() < mask.sum()
    enc.train()
    out = enc(torch.rand(4, 7, 32, 32), mask[:4])
    out.sum().backward()
    assert enc.marker_embedding.weight.grad is not None


def test_vocabulary_errors() -> None:
    enc = MarkerEncoder(7, MARKERS, stem_width=8, out_dim=16)
    with pytest.raises(PanelMismatchError, match="FOXP3"):
        enc.marker_index(["CD8", "FOXP3"])
    with pytest.raises(ConfigError):
        MarkerEncoder(3, ["A", "A", "B"])
    with pytest.raises(ConfigError):
        MarkerEncoder(3, ["A", "B"])
