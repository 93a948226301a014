"""Smooth random fields at low resolution and a fast bilinear upsampler."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def smooth_field(
    rng: np.random.Generator, shape: tuple[int, int], sigma: float, mode: str = "wrap"
) -> np.ndarray:
    """Gaussian-filtered white noise, standardised to mean 0 and SD 1 (float32)."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    field = ndimage.gaussian_filter(noise, max(float(sigma), 0.5), mode=mode)
    field -= field.mean()
    sd = float(field.std())
    return field / sd if sd > 0 else field


def _axis_weights(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos = (np.arange(n_out, dtype=np.float32) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    i0 = np.floor(pos).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (pos - i0).astype(np.float32)


def upsample(low: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear (pixel-centre aligned) resize of the last two axes to ``shape`` (float32).

    Columns are interpolated on the small array first; rows are then gathered whole (contiguous
    copies), which keeps the full-resolution work to a few C-contiguous passes.
    """
    y0, y1, ay = _axis_weights(shape[0], low.shape[-2])
    x0, x1, ax = _axis_weights(shape[1], low.shape[-1])
    low = low.astype(np.float32, copy=False)
    cols = low[..., x0] * (1 - ax) + low[..., x1] * ax
    out = np.ascontiguousarray(cols[..., y0, :])
    out *= (1 - ay)[:, None]
    top = cols[..., y1, :]
    top *= ay[:, None]
    out += top
    return out


def block_mean(a: np.ndarray, step: int) -> np.ndarray:
    """Mean over ``step`` x ``step`` blocks (edge blocks averaged over the pixels they have)."""
    rows, cols = a.shape
    h, w = -(-rows // step), -(-cols // step)
    pad = ((0, h * step - rows), (0, w * step - cols))
    if pad == ((0, 0), (0, 0)):
        return a.reshape(h, step, w, step).mean(axis=(1, 3), dtype=np.float32)
    sums = np.pad(a.astype(np.float32), pad).reshape(h, step, w, step).sum(axis=(1, 3))
    ones = np.ones((rows, cols), np.float32)
    counts = np.pad(ones, pad).reshape(h, step, w, step).sum(axis=(1, 3))
    return sums / counts


_NORMAL_TABLE: np.ndarray | None = None


def fast_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal noise via a 16-bit quantile table (float32; tails cut at ~4.3 SD).

    About five times faster than ``Generator.standard_normal`` and indistinguishable from it
    once scaled to pixel noise and rounded to integers.
    """
    global _NORMAL_TABLE
    if _NORMAL_TABLE is None:
        from scipy.special import ndtri

        _NORMAL_TABLE = ndtri((np.arange(65536) + 0.5) / 65536).astype(np.float32)
    n = int(np.prod(shape))
    u = np.frombuffer(rng.bytes(2 * n), dtype=np.uint16)
    return _NORMAL_TABLE[u].reshape(shape)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically safe logistic function (float32 in, float32 out)."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))
