"""Segmentation backends: the classical default and a registry for optional deep-learning plug-ins.

A backend turns one nuclear image and one (optional) membrane/cytoplasm image, both float32 at
``mpp`` µm/px and normalised by slide-level percentiles, into two label images of the same shape:
nuclei and whole cells, where each cell carries the label of its nucleus (0 = background).

Plug-ins (Cellpose, StarDist, InstanSeg, Mesmer) import their package lazily and load weights
from a local path only; a missing package or weight file is a one-line :class:`BackendError`.
Nothing here downloads anything.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from immunoplex.errors import ConfigError


class BackendError(ConfigError):
    """A segmentation backend is unknown, not installed, or its local weights are missing."""


@runtime_checkable
class SegmentationBackend(Protocol):
    """What the tiled driver needs from a backend."""

    def segment(
        self, nuclear: np.ndarray, membrane: np.ndarray | None, mpp: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """(nuclei_labels, cell_labels), int32, same shape as ``nuclear``."""
        ...


BackendFactory = Callable[..., SegmentationBackend]
_REGISTRY: dict[str, BackendFactory] = {}


def register_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    """Decorator: make ``factory(**params)`` available as backend ``name``."""

    def deco(factory: BackendFactory) -> BackendFactory:
        _REGISTRY[name] = factory
        return factory

    return deco


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def make_backend(name: str, **params: Any) -> SegmentationBackend:
    """Build backend ``name`` from the closed registry (unknown names are a config error)."""
    if name not in _REGISTRY:
        raise BackendError(f"unknown segmentation backend {name!r}; known: {backend_names()}")
    try:
        return _REGISTRY[name](**params)
    except TypeError as exc:
        raise BackendError(f"segmentation backend {name!r}: {exc}") from None


def calibrate(
    backend: SegmentationBackend, nuclear: np.ndarray, membrane: np.ndarray | None, mpp: float
) -> SegmentationBackend:
    """Fix slide-level thresholds from a sample, when the backend supports it (else unchanged).

    Every tile is then segmented with the same thresholds, so tiling does not change the result.
    """
    fn = getattr(backend, "calibrate", None)
    return fn(nuclear, membrane, mpp) if callable(fn) else backend


# --------------------------------------------------------------------------- classical


@dataclass(frozen=True)
class ClassicalBackend:
    """Smoothing, Otsu (or local) threshold, distance-transform seeds, watershed; cells grown
    from nuclei by a watershed on the membrane image, at most ``expand_um`` from the nucleus.

    All sizes are physical (µm, µm²); they are converted to pixels at the ``mpp`` of the call.
    """

    smooth_um: float = 0.7
    threshold: str = "local"  # "local" (Gaussian-weighted, floored at half Otsu) | "otsu"
    threshold_scale: float = 1.0
    local_block_um: float = 21.0
    local_floor: float = 0.15  # x the slide's Otsu threshold: the local one never goes below it
    object_floor: float = 0.25  # x Otsu: a nucleus needs one (smoothed) pixel above it (hysteresis)
    seed_distance_um: float = 2.5
    seed_footprint_um: float = 2.0
    min_nucleus_um2: float = 10.0
    expand_um: float = 3.0
    min_expand_um: float = 1.0
    membrane_smooth_um: float = 0.5
    min_contrast: float = 3.0  # Otsu classes' mean ratio below this: no foreground (noise ~2.6)
    # split a nucleus holding a compact core this much brighter than the rest of its interior
    # (a small bright nucleus lying on a dimmer one: a lymphocyte on a tumour cell); 0 = off
    split_ratio: float = 1.25
    split_core_um2: float = 8.0  # the bright core's and the dim rest's smallest areas
    split_rest_um2: float = 10.0
    split_erode_um: float = 1.5  # the rest is counted this far inside the object (not its rim)
    split_passes: int = 2  # a split part is examined again (three nuclei in one object)
    nuclear_threshold: float | None = None  # fixed by calibrate(); None = Otsu per image
    membrane_threshold: float | None = None

    def calibrate(
        self, nuclear: np.ndarray, membrane: np.ndarray | None, mpp: float
    ) -> ClassicalBackend:
        from skimage.filters import threshold_otsu

        def otsu(img: np.ndarray, sigma_um: float) -> float:
            s = _smooth(img, sigma_um / mpp)
            if not np.ptp(s) > 0:
                return float("inf")
            t = float(threshold_otsu(s))
            hi, lo = s[s > t], s[s <= t]
            # one population (an empty field: noise only) has no foreground
            if hi.mean() < self.min_contrast * max(float(lo.mean()), 1e-12):
                return float("inf")
            return t

        nt = self.nuclear_threshold
        if nt is None:
            nt = otsu(nuclear, self.smooth_um)
        mt = self.membrane_threshold
        if mt is None and membrane is not None:
            mt = otsu(membrane, self.membrane_smooth_um)
        return replace(self, nuclear_threshold=nt, membrane_threshold=mt)

    def nuclear_mask(self, nuclear: np.ndarray, mpp: float) -> np.ndarray:
        from skimage.filters import threshold_local

        s = _smooth(nuclear, self.smooth_um / mpp)
        if self.threshold == "local":
            block = max(3, int(round(self.local_block_um / mpp)) | 1)
            fg = s > threshold_local(s, block, method="gaussian") * self.threshold_scale
            glob = (
                self.calibrate(nuclear, None, mpp).nuclear_threshold
                if (self.nuclear_threshold is None)
                else self.nuclear_threshold
            )
            fg &= s > self.local_floor * float(glob)  # not in empty background
            if self.object_floor > 0:  # hysteresis: an object needs a pixel this bright
                from scipy import ndimage as ndi

                lab, n = ndi.label(fg)
                keep = np.zeros(n + 1, bool)
                keep[np.unique(lab[s > self.object_floor * float(glob)])] = True
                keep[0] = False
                fg = keep[lab]
            return fg
        if self.threshold != "otsu":
            raise ConfigError(
                f"classical threshold must be 'otsu' or 'local', not {self.threshold!r}"
            )
        t = self.nuclear_threshold
        if t is None:
            t = self.calibrate(nuclear, None, mpp).nuclear_threshold
        return s > float(t) * self.threshold_scale

    def segment(
        self, nuclear: np.ndarray, membrane: np.ndarray | None, mpp: float
    ) -> tuple[np.ndarray, np.ndarray]:
        from scipy import ndimage as ndi
        from skimage.feature import peak_local_max
        from skimage.segmentation import expand_labels, watershed

        nuclear = np.asarray(nuclear, np.float32)
        fg = self.nuclear_mask(nuclear, mpp)
        min_px = max(1, int(round(self.min_nucleus_um2 / mpp**2)))
        fg = ndi.binary_fill_holes(fg)
        fg = _drop_small(ndi.label(fg)[0], min_px) > 0
        if not fg.any():
            z = np.zeros(nuclear.shape, np.int32)
            return z, z.copy()
        dist = ndi.distance_transform_edt(fg)
        # a small blur breaks ties on flat distance plateaus so each nucleus gets one seed
        dist = ndi.gaussian_filter(dist, 0.5) if dist.size else dist
        blobs, _ = ndi.label(fg)
        fp = max(1, int(round(self.seed_footprint_um / mpp)))
        peaks = peak_local_max(
            dist,
            min_distance=max(1, int(round(self.seed_distance_um / mpp))),
            footprint=np.ones((2 * fp + 1, 2 * fp + 1), bool),
            labels=blobs,
            exclude_border=False,
        )
        # adjacent peaks (a plateau of the distance map) are one seed
        peak_mask = np.zeros(nuclear.shape, bool)
        peak_mask[tuple(peaks.T)] = True
        markers, n_seeds = ndi.label(peak_mask, structure=np.ones((3, 3), bool))
        markers = markers.astype(np.int32)
        # every blob gets at least one seed (tiny or elongated nuclei have no strict peak)
        seeded = np.zeros(int(blobs.max()) + 1, bool)
        seeded[blobs[markers > 0]] = True
        missing = np.flatnonzero(~seeded[1:]) + 1
        if len(missing):
            com = ndi.maximum_position(dist, blobs, missing)
            start = n_seeds + 1
            for k, (y, x) in enumerate(com):
                markers[y, x] = start + k
        nuclei = watershed(-dist, markers, mask=fg).astype(np.int32)
        if self.split_ratio > 0:
            from immunoplex.cells.split import split_bright_cores

            nuclei = split_bright_cores(
                nuclei,
                _smooth(nuclear, self.smooth_um / mpp),
                self.split_ratio,
                self.split_core_um2 / mpp**2,
                self.split_rest_um2 / mpp**2,
                self.split_erode_um / mpp,
                self.split_passes,
            )
        nuclei = _relabel(_drop_small(nuclei, min_px))
        expand = self.expand_um / mpp
        if membrane is None:
            cells = expand_labels(nuclei, distance=expand).astype(np.int32)
            return nuclei, cells
        membrane = np.asarray(membrane, np.float32)
        ms = _smooth(membrane, self.membrane_smooth_um / mpp)
        mt = self.membrane_threshold
        if mt is None:
            mt = self.calibrate(nuclear, membrane, mpp).membrane_threshold
        near = ndi.distance_transform_edt(nuclei == 0)
        reach = near <= expand
        allowed = reach & ((ms > float(mt)) | (near <= self.min_expand_um / mpp) | fg)
        # watershed on the membrane intensity: neighbouring cells meet on bright membrane ridges
        cells = watershed(ms, nuclei, mask=allowed | (nuclei > 0)).astype(np.int32)
        return nuclei, cells


def _smooth(img: np.ndarray, sigma_px: float) -> np.ndarray:
    from scipy import ndimage as ndi

    img = np.asarray(img, np.float32)
    return ndi.gaussian_filter(img, sigma_px) if sigma_px > 0 else img


def _drop_small(labels: np.ndarray, min_px: int) -> np.ndarray:
    """Labels with fewer than ``min_px`` pixels set to 0."""
    if min_px <= 1 or not labels.size:
        return labels
    counts = np.bincount(labels.ravel())
    small = counts < min_px
    small[0] = False
    return np.where(small[labels], 0, labels)


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..n in order of first appearance (raster order)."""
    flat = labels.ravel()
    ids, first = np.unique(flat, return_index=True)
    keep = ids > 0
    ids, first = ids[keep], first[keep]
    order = ids[np.argsort(first)]
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.int32)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return lut[labels]


@register_backend("classical")
def _classical(**params: Any) -> SegmentationBackend:
    return ClassicalBackend(**params)


# --------------------------------------------------------------------------- plug-ins


def _require(module: str, backend: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise BackendError(
            f"segmentation backend {backend!r} needs the {module!r} package "
            f"(pip install {extra}); it is not installed"
        ) from None


def _weights(path: str | None, backend: str) -> Path:
    if not path:
        raise BackendError(
            f"segmentation backend {backend!r} needs model_path= a local weights file/folder "
            "(weights are never downloaded)"
        )
    p = Path(path).expanduser()
    if not p.exists():
        raise BackendError(f"segmentation backend {backend!r}: weights not found at {p}")
    return p


def _grow(nuclei: np.ndarray, expand_um: float, mpp: float) -> np.ndarray:
    from skimage.segmentation import expand_labels

    return expand_labels(nuclei, distance=expand_um / mpp).astype(np.int32)


@dataclass
class CellposeBackend:
    """Cellpose with a local model file: nuclei from the nuclear channel, cells grown from them."""

    model_path: str | None = None
    diameter_um: float = 8.0
    expand_um: float = 3.0
    gpu: bool = False

    def __post_init__(self) -> None:
        models = _require("cellpose.models", "cellpose", "cellpose")
        self._model = models.CellposeModel(
            pretrained_model=str(_weights(self.model_path, "cellpose")), gpu=self.gpu
        )

    def segment(self, nuclear, membrane, mpp):  # type: ignore[no-untyped-def]
        out = self._model.eval(nuclear, diameter=self.diameter_um / mpp)
        nuclei = np.asarray(out[0], np.int32)
        return nuclei, _grow(nuclei, self.expand_um, mpp)


@dataclass
class StarDistBackend:
    """StarDist 2D with a local model folder (``<basedir>/<name>``)."""

    model_path: str | None = None
    expand_um: float = 3.0

    def __post_init__(self) -> None:
        mod = _require("stardist.models", "stardist", "stardist")
        p = _weights(self.model_path, "stardist")
        self._model = mod.StarDist2D(None, name=p.name, basedir=str(p.parent))

    def segment(self, nuclear, membrane, mpp):  # type: ignore[no-untyped-def]
        img = nuclear / max(float(np.percentile(nuclear, 99.8)), 1e-6)
        nuclei = np.asarray(self._model.predict_instances(img)[0], np.int32)
        return nuclei, _grow(nuclei, self.expand_um, mpp)


@dataclass
class InstanSegBackend:
    """InstanSeg with a local TorchScript model file."""

    model_path: str | None = None
    expand_um: float = 3.0

    def __post_init__(self) -> None:
        mod = _require("instanseg", "instanseg", "instanseg-torch")
        self._model = mod.InstanSeg(str(_weights(self.model_path, "instanseg")), verbosity=0)

    def segment(self, nuclear, membrane, mpp):  # type: ignore[no-untyped-def]
        img = nuclear if membrane is None else np.stack([nuclear, membrane], -1)
        labels, _ = self._model.eval_small_image(img, pixel_size=mpp)
        lab = np.asarray(labels).squeeze()
        nuclei = np.asarray(lab[0] if lab.ndim == 3 else lab, np.int32)
        cells = (
            np.asarray(lab[1], np.int32) if lab.ndim == 3 else _grow(nuclei, self.expand_um, mpp)
        )
        return nuclei, cells


@dataclass
class MesmerBackend:
    """DeepCell Mesmer with a local SavedModel folder."""

    model_path: str | None = None

    def __post_init__(self) -> None:
        app = _require("deepcell.applications", "mesmer", "DeepCell")
        keras = _require("tensorflow.keras.models", "mesmer", "tensorflow")
        model = keras.load_model(str(_weights(self.model_path, "mesmer")), compile=False)
        self._app = app.Mesmer(model=model)

    def segment(self, nuclear, membrane, mpp):  # type: ignore[no-untyped-def]
        mem = np.zeros_like(nuclear) if membrane is None else membrane
        x = np.stack([nuclear, mem], -1)[None]
        out = self._app.predict(x, image_mpp=mpp, compartment="both")[0]
        return np.asarray(out[..., 1], np.int32), np.asarray(out[..., 0], np.int32)


for _name, _cls in {
    "cellpose": CellposeBackend,
    "stardist": StarDistBackend,
    "instanseg": InstanSegBackend,
    "mesmer": MesmerBackend,
}.items():
    register_backend(_name)(_cls)
