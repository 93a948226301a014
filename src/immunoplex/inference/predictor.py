"""A trained checkpoint ready for inference: model, preprocessing and calibration (:class:`Predictor`),
and the batch helpers that turn one patient's slides into the model's inputs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from immunoplex.data.clinical import ClinicalEncoder
from immunoplex.data.transforms import encode_tile_batches, normalise_tiles
from immunoplex.errors import ConfigError
from immunoplex.evaluation.calibration import Calibration
from immunoplex.expression.feature_state import ExpressionFeatures
from immunoplex.expression.normalise import ExpressionNormalizer
from immunoplex.io.panel import Panel
from immunoplex.tiles.cache import file_fingerprint
from immunoplex.tiles.params import TilingParams
from immunoplex.training.checkpoint import load_checkpoint, model_from_checkpoint
from immunoplex.training.schema import is_panel_agnostic, read_meta


def resolve_device(device: str | None) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to torch.device."""
    name = str(device or "auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device {name!r} is not a torch device ({err})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return dev


# ----------------------------------------------------------------------------- the model
@dataclass
class Predictor:
    """A loaded checkpoint: the network plus everything needed to prepare its inputs."""

    path: Path
    model: Any  # ResponseModel
    meta: dict[str, Any]
    panel: Panel
    params: TilingParams
    required: list[str] | None
    low_pct: float
    high_pct: float
    genes: list[str]
    expression_norm: ExpressionNormalizer | None
    clinical: ClinicalEncoder
    treatments: list[str]
    calibration: Calibration | None
    threshold: float
    label_names: list[str]
    device: torch.device
    panel_agnostic: bool
    fingerprint: str
    # expression_norm=features: the within-sample features the expression branch reads
    expression_features: ExpressionFeatures | None = None

    @classmethod
    def load(
        cls, path: str | Path, device: str | torch.device = "auto", required: Any = "auto"
    ) -> Predictor:
        """Read a checkpoint (safely) and rebuild its model on ``device``."""
        path = Path(path)
        ckpt = load_checkpoint(path)
        schema = read_meta(ckpt, str(path))
        meta = ckpt["immunoplex"]
        data = schema.data
        dev = device if isinstance(device, torch.device) else resolve_device(device)
        model = model_from_checkpoint(ckpt, path).to(dev).eval()
        panel_d = data.get("panel") or {"markers": meta["dims"].get("markers") or []}
        panel = Panel.from_dict(panel_d)
        intensity = data.get("intensity") or {}
        if intensity.get("mode", "slide") != "slide":
            raise ConfigError(
                f"{path}: intensity mode {intensity.get('mode')!r} is not supported by predict"
            )
        norm_d = data.get("expression_norm")
        agnostic = schema.panel_agnostic
        if agnostic is None:  # written before the schema stored it
            agnostic = is_panel_agnostic(model)
        calib_d = schema.calibration
        pred = cls(
            path=path,
            model=model,
            meta=meta,
            panel=panel,
            params=TilingParams.from_dict(dict(data.get("tiling") or {})),
            required=None,
            low_pct=float(intensity.get("low_pct", 1.0)),
            high_pct=float(intensity.get("high_pct", 99.5)),
            genes=list(data.get("genes") or meta["dims"].get("gene_names") or []),
            expression_norm=ExpressionNormalizer.from_dict(norm_d) if norm_d else None,
            clinical=ClinicalEncoder.from_dict(data),
            treatments=list(data.get("treatments") or meta["dims"].get("treatments") or []),
            calibration=Calibration.from_dict(calib_d) if calib_d else None,
            threshold=schema.threshold,
            label_names=schema.label_names,
            device=dev,
            panel_agnostic=agnostic,
            fingerprint=file_fingerprint(path),
            expression_features=(
                ExpressionFeatures.from_dict(data["expression_features"])
                if data.get("expression_features")
                else None
            ),
        )
        pred.required = pred.effective_required(data.get("required_markers"), required)
        return pred

    def effective_required(self, stored: Sequence[str] | None, override: Any) -> list[str] | None:
        """Markers a slide must have: override, else the checkpoint's (panel-agnostic: none).

        ``None`` means every panel marker; ``[]`` means degraded mode (any may be missing).
        """
        if override not in (None, "auto"):
            req = [str(m) for m in override]
            unknown = [
                m
                for m in req
                if self.panel.canonical(m)
                not in {self.panel.canonical(p) for p in self.panel.markers}
            ]
            if unknown:
                raise ConfigError(
                    f"required_markers {unknown} are not in the model's panel {self.panel.markers}"
                )
            return req
        if stored is not None:
            return [str(m) for m in stored]
        return [] if self.panel_agnostic else None

    @property
    def modalities(self) -> list[str]:
        return list(getattr(self.model, "modalities", ["image"]))

    @property
    def clinical_columns(self) -> list[str]:
        return self.clinical.columns

    @property
    def n_clinical(self) -> int:
        return int(self.meta["dims"].get("n_clinical", 0))

    @property
    def n_genes(self) -> int:
        return int(self.meta["dims"].get("n_genes", 0))

    @property
    def markers(self) -> list[str]:
        return list(self.panel.markers)


# ----------------------------------------------------------------------------- model running
def embed_bag(
    model: Any,
    batch: Mapping[str, torch.Tensor],
    device: torch.device,
    chunk: int = 512,
    occlude: int | None = None,
) -> torch.Tensor:
    """Tile embeddings (N, D) of patient 0 of a collated uint16 batch, ``chunk`` tiles at a time.

    ``occlude``: a panel channel index set to zero and masked out (channel occlusion).
    """
    n = int(batch["tile_mask"][0].sum())
    cm = batch["channel_mask"][0].to(device).bool()
    if occlude is not None:
        cm = cm.clone()
        cm[occlude] = False

    def batches() -> Iterator[tuple[slice, torch.Tensor]]:
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            sub = {k: batch[k][:, a:b].to(device) for k in ("tiles", "tile_low", "tile_high")}
            x = normalise_tiles(sub)[0]  # (M, C, T, T)
            if occlude is not None:
                x[:, occlude] = 0.0
            yield slice(a, b), x

    def encode(x: torch.Tensor) -> torch.Tensor:
        return model.embed_tiles(x, cm[None, :].expand(x.shape[0], -1))

    dim = int(getattr(model, "tile_embedding_dim", 1))
    return encode_tile_batches(encode, batches(), n, device, dim)


def model_batch(
    batch: Mapping[str, torch.Tensor],
    emb: torch.Tensor | None,
    device: torch.device,
    tile_dim: int = 1,
) -> dict[str, torch.Tensor]:
    """The forward batch for one patient, with precomputed tile embeddings (two-stage path).

    Without tiles the bag is one masked zero embedding of ``tile_dim`` (the image is "missing").
    """
    out: dict[str, torch.Tensor] = {
        k: batch[k].to(device)
        for k in ("expression", "has_expression", "clinical", "treatment", "channel_mask")
    }
    for k in ("features", "has_features"):  # a patient feature table (data.features)
        if k in batch:
            out[k] = batch[k].to(device)
    if emb is not None and emb.shape[0] > 0:
        out["embeddings"] = emb[None]
        out["tile_mask"] = torch.ones((1, emb.shape[0]), dtype=torch.bool, device=device)
        out["has_image"] = torch.ones(1, dtype=torch.bool, device=device)
    else:
        dim = tile_dim if emb is None else emb.shape[1]
        out["embeddings"] = torch.zeros((1, 1, dim), device=device)
        out["tile_mask"] = torch.zeros((1, 1), dtype=torch.bool, device=device)
        out["has_image"] = torch.zeros(1, dtype=torch.bool, device=device)
    return out


@torch.no_grad()
def tile_scores(model: Any, mb: Mapping[str, torch.Tensor], chunk: int = 2048) -> np.ndarray:
    """Per tile: the response logit when the patient's bag holds only that tile."""
    if not bool(mb["has_image"][0]):
        return np.zeros(0, np.float32)
    emb = mb["embeddings"][0]
    out = []
    for a in range(0, emb.shape[0], chunk):
        e = emb[a : a + chunk]
        m = e.shape[0]
        single = {
            k: v.expand(m, *v.shape[1:])
            for k, v in mb.items()
            if k not in ("embeddings", "tile_mask")
        }
        single["embeddings"] = e[:, None, :]
        single["tile_mask"] = torch.ones((m, 1), dtype=torch.bool, device=e.device)
        out.append(model(single)["logit"].float().cpu())
    return torch.cat(out).numpy()
