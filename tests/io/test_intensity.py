"""IntensityNorm: percentile clipping + arcsinh/log, recorded, numpy == torch."""

from __future__ import annotations

import numpy as np
import pytest

from immunoplex.errors import ConfigError
from immunoplex.intensity import IntensityNorm


def tiles(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = rng.gamma(2.0, 50.0, (40, 3, 8, 8)).astype(np.float32)
    t[:, 1] *= 20
    return t


@pytest.mark.parametrize("method", ["arcsinh", "log", "linear"])
def test_fit_apply_range(method: str) -> None:
    x = tiles()
    norm = IntensityNorm.fit(x, present=[True, True, False], method=method)
    y = norm.apply_numpy(x)
    assert y.shape == x.shape and y.dtype == np.float32
    assert y.min() >= 0 and y.max() <= 1 + 1e-6
    assert not y[:, 2].any()  # absent channel -> 0
    assert y[:, 0].max() == pytest.approx(1.0, abs=1e-5)
    # per-channel: the 20x brighter channel maps to the same range
    assert abs(np.median(y[:, 0]) - np.median(y[:, 1])) < 0.05


def test_round_trip_and_torch() -> None:
    torch = pytest.importorskip("torch")
    norm = IntensityNorm.fit(tiles(), low_pct=2, high_pct=99)
    back = IntensityNorm.from_dict(norm.to_dict())
    assert back == norm
    x = tiles(3)
    a = back.apply_numpy(x)
    b = back.apply_torch(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="3 channels"):
        norm.apply_numpy(np.zeros((2, 4, 4, 4), np.float32))


def test_cohort_fit_and_validation() -> None:
    norm = IntensityNorm.fit_many(
        [tiles(0), tiles(1)[:, :, :4, :4]], [[True] * 3, [True, False, True]]
    )
    assert norm.present == [True, True, True] and norm.high[1] > norm.high[0]
    with pytest.raises(ConfigError):
        IntensityNorm.fit(tiles(), method="zscore")
    with pytest.raises(ConfigError):
        IntensityNorm.fit(tiles(), low_pct=50, high_pct=10)


def test_functional_forms_broadcast_per_tile() -> None:
    torch = pytest.importorskip("torch")
    from immunoplex.intensity import normalise_numpy, normalise_torch

    x = tiles()[:6].reshape(2, 3, 3, 8, 8)  # (B, N, C, T, T)
    low = np.zeros((2, 3, 3, 1, 1), np.float32)
    high = np.full((2, 3, 3, 1, 1), 300.0, np.float32)
    a = normalise_numpy(x, low, high)
    b = normalise_torch(torch.from_numpy(x), torch.from_numpy(low), torch.from_numpy(high))
    np.testing.assert_allclose(a, b.numpy(), atol=1e-5)
    assert a.min() >= 0 and a.max() <= 1
