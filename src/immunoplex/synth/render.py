"""Render a slide's channels from its layout and cells (vectorised splatting + smooth fields).

Every cell is drawn by adding small precomputed kernels (nucleus into DAPI, membrane or cytoplasm
into its marker) at integer positions with one ``np.bincount`` per channel. Nuisances follow:
tissue background, stromal autofluorescence, red blood cells, uneven illumination, per-channel
gain, shot and read noise.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from immunoplex.synth.cells import Cells, CellType
from immunoplex.synth.fields import fast_normal, sigmoid
from immunoplex.synth.tissue import TissueLayout

#: Markers the renderer can draw; ``image.panel`` selects and orders them.
MARKERS = ("DAPI", "PanCK", "CD8", "CD68", "STAB1", "CD31", "CD66b")

_N_VARIANTS = 12
_BANK_SEED = 1729


def _grid(radius_px: float) -> tuple[np.ndarray, np.ndarray]:
    r = int(np.ceil(radius_px)) + 2
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float32)
    return yy, xx


def _ellipse(yy, xx, a, b, th, cy=0.0, cx=0.0, soft=0.7):
    """Soft-edged filled ellipse (semi-axes a, b in px, angle th)."""
    dy, dx = yy - cy, xx - cx
    u = (dy * np.cos(th) + dx * np.sin(th)) / a
    v = (-dy * np.sin(th) + dx * np.cos(th)) / b
    rr = np.sqrt(u * u + v * v)
    return sigmoid((1.0 - rr) * min(a, b) / soft)


def _ring(yy, xx, a, b, th, width):
    u = (yy * np.cos(th) + xx * np.sin(th)) / a
    v = (-yy * np.sin(th) + xx * np.cos(th)) / b
    rr = np.sqrt(u * u + v * v)
    return np.exp(-(((rr - 1.0) * min(a, b) / width) ** 2))


def _trim(bank: np.ndarray, eps: float = 0.01) -> np.ndarray:
    """Drop the faint tails (< eps of each kernel's peak, shifted to reach zero) and crop the
    (variants, K, K) bank to the smallest centred square that still holds the kernels."""
    peak = bank.max(axis=(1, 2), keepdims=True)
    bank = np.clip(bank - eps * peak, 0.0, None) / (1.0 - eps)
    K = bank.shape[-1]
    c = K // 2
    ys, xs = np.nonzero(bank.max(axis=0) > 0)
    r = int(max(np.abs(ys - c).max(), np.abs(xs - c).max())) if len(ys) else 0
    return np.ascontiguousarray(bank[:, c - r : c + r + 1, c - r : c + r + 1], dtype=np.float32)


@lru_cache(maxsize=4)
def kernel_bank(mpp: float) -> dict[int, tuple[np.ndarray, np.ndarray | None]]:
    """Per cell type: (nucleus kernels, marker kernels), each (variants, K, K) float32 peak ~1."""
    rng = np.random.default_rng(_BANK_SEED)
    um = 1.0 / mpp
    banks: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

    def build(kind: CellType, a_range, ratio, extent_um, make):
        yy, xx = _grid(extent_um * um)
        nucs, marks = [], []
        for _ in range(_N_VARIANTS):
            a = rng.uniform(*a_range) * um
            b = a * rng.uniform(*ratio)
            th = rng.uniform(0, np.pi)
            nuc, mark = make(yy, xx, a, b, th)
            nucs.append(nuc)
            marks.append(mark)
        n = None if nucs[0] is None else _trim(np.stack(nucs).astype(np.float32))
        m = None if marks[0] is None else _trim(np.stack(marks).astype(np.float32))
        banks[int(kind)] = (n, m)  # type: ignore[assignment]

    def lumpy(yy):
        noise = rng.standard_normal(yy.shape)
        from scipy.ndimage import gaussian_filter

        f = gaussian_filter(noise, 1.2 * um)
        return np.clip(1.0 + 0.6 * f / (f.std() + 1e-9), 0.4, 1.6)

    def tumour(yy, xx, a, b, th):
        nuc = _ellipse(yy, xx, a, b, th)
        cyto = _ellipse(yy, xx, a * 1.5, b * 1.6, th) - 0.85 * nuc
        return nuc, np.clip(cyto, 0, None)

    def stromal(yy, xx, a, b, th):
        return _ellipse(yy, xx, a, b, th), None

    def lymph(yy, xx, a, b, th):
        nuc = _ellipse(yy, xx, a, b, th)
        mem = _ring(yy, xx, a * 1.35, b * 1.35, th, 0.6 * um) + 0.25 * _ellipse(
            yy, xx, a * 1.3, b * 1.3, th
        )
        return nuc, mem / mem.max()

    def macrophage(yy, xx, a, b, th):
        oy, ox = rng.uniform(-1.0, 1.0, 2) * um
        nuc = _ellipse(yy, xx, a, b, th, oy, ox)
        cyto = _ellipse(yy, xx, a * 2.0, b * 2.1, th + rng.uniform(-0.5, 0.5)) * lumpy(yy)
        return nuc, cyto / cyto.max()

    def neutrophil(yy, xx, a, b, th):
        nuc = np.zeros_like(yy)
        for k in range(3):
            ang = th + (k - 1) * 1.1
            nuc = np.maximum(
                nuc,
                _ellipse(
                    yy, xx, 0.5 * a, 0.5 * a, 0, 0.55 * a * np.sin(ang), 0.55 * a * np.cos(ang)
                ),
            )
        cyto = _ellipse(yy, xx, a * 1.45, a * 1.45, 0) - 0.5 * nuc
        return nuc, np.clip(cyto, 0, None)

    def endothelial(yy, xx, a, b, th):
        nuc = _ellipse(yy, xx, a, b, th)
        mem = _ellipse(yy, xx, a * 1.6, b * 1.8, th) - 0.6 * nuc
        return nuc, np.clip(mem, 0, None)

    def rbc(yy, xx, a, b, th):
        disk = _ellipse(yy, xx, a, b, th) - 0.4 * _ellipse(yy, xx, 0.5 * a, 0.5 * b, th)
        return None, disk

    build(CellType.TUMOUR, (4.0, 5.5), (0.65, 0.95), 9.5, tumour)
    build(CellType.STROMAL, (4.5, 6.5), (0.3, 0.5), 7.0, stromal)
    build(CellType.CD8, (2.8, 3.5), (0.85, 1.0), 5.5, lymph)
    build(CellType.MACROPHAGE, (3.5, 4.5), (0.6, 0.85), 10.5, macrophage)
    build(CellType.NEUTROPHIL, (3.0, 3.6), (1.0, 1.0), 6.0, neutrophil)
    build(CellType.ENDOTHELIAL, (4.5, 6.0), (0.3, 0.45), 10.0, endothelial)
    build(CellType.RBC, (3.2, 3.8), (0.9, 1.0), 4.5, rbc)
    return banks


class _Splatter:
    """Accumulates kernel contributions per channel, then sums them with one bincount each."""

    def __init__(self, shape: tuple[int, int], pad: int, n_channels: int) -> None:
        self.H, self.W = shape
        self.pad = pad
        self.Wp = self.W + 2 * pad
        self.size = (self.H + 2 * pad) * self.Wp
        self.idx: list[list[np.ndarray]] = [[] for _ in range(n_channels)]
        self.val: list[list[np.ndarray]] = [[] for _ in range(n_channels)]

    def add(self, ch: int, y, x, bank: np.ndarray, variant, weight) -> None:
        if len(y) == 0:
            return
        K = bank.shape[-1]
        off = np.arange(K, dtype=np.int64) - K // 2
        base = (y.astype(np.int64) + self.pad) * self.Wp + (x.astype(np.int64) + self.pad)
        idx = base[:, None, None] + (off * self.Wp)[None, :, None] + off[None, None, :]
        self.idx[ch].append(idx.ravel())
        self.val[ch].append((bank[variant] * weight[:, None, None].astype(np.float32)).ravel())

    def channel(self, ch: int) -> np.ndarray:
        out = np.zeros((self.H, self.W), np.float32)
        if self.idx[ch]:
            acc = np.bincount(
                np.concatenate(self.idx[ch]), np.concatenate(self.val[ch]), minlength=self.size
            ).reshape(self.H + 2 * self.pad, self.Wp)
            out[:] = acc[self.pad : self.pad + self.H, self.pad : self.pad + self.W]
        return out


def render_channels(
    rng: np.random.Generator,
    layout: TissueLayout,
    cells: Cells,
    panel: list[str],
    gains: np.ndarray,
    cfg: dict[str, Any],
) -> np.ndarray:
    """uint16 (C, H, W) image in ``panel`` order; ``gains`` per channel (stain x slide x dim)."""
    unknown = [m for m in panel if m not in MARKERS]
    if unknown:
        raise ValueError(f"synth panel markers {unknown} are not renderable; known: {MARKERS}")
    ch = {m: i for i, m in enumerate(panel)}
    H, W = layout.shape
    banks = kernel_bank(layout.mpp)
    pad = max(max(b.shape[-1] for b in pair if b is not None) for pair in banks.values()) // 2 + 1
    sp = _Splatter((H, W), pad, len(panel))
    peak = cfg["peak"]
    sdlog = cfg["cell_sdlog"]
    n = len(cells.y)
    var = rng.integers(0, _N_VARIANTS, n)
    bright = np.exp(sdlog * rng.standard_normal((2, n))).astype(np.float32)
    af_spec = np.asarray(cfg["af_spectrum"], np.float32)

    def put(marker: str, kind: CellType, which: int, weight: float, sel=None) -> None:
        if marker not in ch:
            return
        m = cells.kind == kind
        if sel is not None:
            m &= sel
        bank = banks[int(kind)][which]
        assert bank is not None
        w = weight * bright[which, m]
        sp.add(ch[marker], cells.y[m], cells.x[m], bank, var[m], w)

    for kind in CellType:
        if kind != CellType.RBC:
            put("DAPI", kind, 0, peak["nucleus"] * (0.7 if kind == CellType.TUMOUR else 1.0))
    put("PanCK", CellType.TUMOUR, 1, peak["panck"])
    put("CD8", CellType.CD8, 1, peak["cd8"])
    put("CD68", CellType.MACROPHAGE, 1, peak["cd68"])
    put("STAB1", CellType.MACROPHAGE, 1, peak["stab1"], sel=cells.clever1)
    put("CD31", CellType.ENDOTHELIAL, 1, peak["cd31_cell"])
    put("CD66b", CellType.NEUTROPHIL, 1, peak["cd66b"])
    for m, i in ch.items():
        put(m, CellType.RBC, 1, cfg["rbc"] * float(af_spec[i]) if m != "DAPI" else 0.1 * cfg["rbc"])

    stroma = np.clip(layout.tissue_soft - layout.tumour_soft, 0.0, 1.0) * layout.stroma_texture
    af_level = np.float32(cfg["autofluorescence"] * np.exp(0.3 * rng.standard_normal()))
    illum = 1.0 + cfg["illumination_amplitude"] * layout.illumination
    bg = np.asarray(cfg["tissue_background"], np.float32)
    read, shot, offset = cfg["read_noise"], cfg["shot_factor"], cfg["offset"]
    out = np.empty((len(panel), H, W), np.uint16)
    for m, i in ch.items():
        s = sp.channel(i)
        s += bg[i] * layout.tissue_soft + (af_level * af_spec[i]) * stroma + 4.0
        if m == "PanCK":
            s += peak["panck_fill"] * layout.tumour_soft
        elif m == "CD31":
            s += peak["cd31"] * layout.vessel_wall
        elif m == "STAB1":
            s += peak["stab1_vessel"] * layout.vessel_stab1
        s *= illum
        s *= np.float32(gains[i])
        noise = np.sqrt(shot * s + read * read)
        noise *= fast_normal(rng, (H, W))
        s += noise
        s += offset
        np.clip(s, 0, 65535, out=s)
        out[i] = np.rint(s)
    return out
