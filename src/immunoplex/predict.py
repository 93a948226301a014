"""Inference on new slides: checkpoint + slides (+ expression, clinical) -> predictions, heatmaps.

``predict(cfg)`` is the whole run as a plain function (tests call it; ``immunoplex-predict`` wraps
it). Everything the model needs to turn a new slide into its inputs comes from the checkpoint:
panel and aliases (markers matched by name), tiling, intensity percentiles, gene list and
expression normalisation, clinical statistics, treatments and calibration. Results are written
per patient (``patients/<id>.json``) and per slide (``slides/<slide_id>/``) atomically, so a
re-run skips what is finished, then assembled into ``predictions.csv`` / ``predictions.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from immunoplex.calibration import Calibration
from immunoplex.data.bags import PatientBagDataset, PatientRecord, SlideTiles, collate_bags
from immunoplex.data.slides import fit_slide_norm, slide_tiles
from immunoplex.data.transforms import normalise_tiles
from immunoplex.errors import ConfigError, ImmunoplexError, ManifestError
from immunoplex.expression import ExpressionNormalizer, GeneReport
from immunoplex.intensity import IntensityNorm
from immunoplex.io.panel import Panel
from immunoplex.predict_inputs import (
    ExpressionInputs,
    PatientInput,
    SlideInput,
    clinical_vector,
    collect_inputs,
    expression_only_inputs,
    prepare_expression,
    read_clinical_table,
    treatment_index,
)
from immunoplex.predict_stream import (
    LazyTiles,
    OpenedSlide,
    embed_streamed,
    open_for_streaming,
    streamed_slide_tiles,
)
from immunoplex.tilecache import TileCache, file_fingerprint, slide_fingerprint
from immunoplex.tiling import TilingParams
from immunoplex.training.checkpoint import load_checkpoint, model_from_checkpoint

log = logging.getLogger(__name__)

RESULT_VERSION = 1


# ----------------------------------------------------------------------------- small utilities
def safe_name(name: str) -> str:
    """A file-system safe version of an id (used for per-slide / per-patient folders)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "unnamed"


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to a temporary file next to ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_path(path: Path) -> Path:
    """A temporary sibling of ``path`` (same suffix) for writers that need a file name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def to_json(obj: Any) -> Any:
    """numpy/pandas values -> JSON-safe Python values (NaN -> None)."""
    if isinstance(obj, Mapping):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


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
    clinical_columns: list[str]
    clinical_stats: dict[str, list[float]]
    treatments: list[str]
    calibration: Calibration | None
    threshold: float
    label_names: list[str]
    device: torch.device
    panel_agnostic: bool
    fingerprint: str

    @classmethod
    def load(
        cls, path: str | Path, device: str | torch.device = "auto", required: Any = "auto"
    ) -> Predictor:
        """Read a checkpoint (safely) and rebuild its model on ``device``."""
        path = Path(path)
        ckpt = load_checkpoint(path)
        meta = ckpt["immunoplex"]
        data = meta.get("data") or {}
        dev = device if isinstance(device, torch.device) else resolve_device(device)
        model = model_from_checkpoint(ckpt).to(dev).eval()
        panel_d = data.get("panel") or {"markers": meta["dims"].get("markers") or []}
        panel = Panel.from_dict(panel_d)
        intensity = data.get("intensity") or {}
        if intensity.get("mode", "slide") != "slide":
            raise ConfigError(
                f"{path}: intensity mode {intensity.get('mode')!r} is not supported by predict"
            )
        norm_d = data.get("expression_norm")
        encoder = getattr(model, "encoder", None)
        agnostic = type(encoder).__name__ == "MarkerEncoder"
        calib_d = meta.get("calibration")
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
            clinical_columns=list(data.get("clinical_columns") or []),
            clinical_stats={k: list(v) for k, v in (data.get("clinical_stats") or {}).items()},
            treatments=list(data.get("treatments") or meta["dims"].get("treatments") or []),
            calibration=Calibration.from_dict(calib_d) if calib_d else None,
            threshold=float(meta.get("threshold", 0.5)),
            label_names=list(meta.get("label_names") or ["non-responder", "responder"]),
            device=dev,
            panel_agnostic=agnostic,
            fingerprint=file_fingerprint(path),
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
    parts = []
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        sub = {
            "tiles": batch["tiles"][:, a:b].to(device),
            "tile_low": batch["tile_low"][:, a:b].to(device),
            "tile_high": batch["tile_high"][:, a:b].to(device),
        }
        x = normalise_tiles(sub)[0]  # (M, C, T, T)
        if occlude is not None:
            x[:, occlude] = 0.0
        m = x.shape[0]
        parts.append(model.embed_tiles(x, cm[None, :].expand(m, -1)))
    if not parts:
        dim = int(getattr(model, "tile_embedding_dim", 1))
        return torch.zeros((0, dim), device=device)
    return torch.cat(parts)


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


# ----------------------------------------------------------------------------- options
@dataclass
class PredictOptions:
    """Plain values of ``configs/predict.yaml``."""

    ckpt: str
    input: str | None
    out_dir: str
    expression: str | None = None
    clinical: str | None = None
    treatment: str | None = None
    cohort: str | None = None
    mpp: float | None = None
    device: str = "auto"
    heatmaps: bool = True
    markers_for_composite: list[str] = field(default_factory=lambda: ["DAPI", "PanCK", "CD8"])
    top_k: int = 16
    explain: bool = False
    ig_steps: int = 32
    top_genes: int = 20
    allow_missing_genes: bool = False
    small_cohort: str | None = None
    required_markers: Any = "auto"
    input_kind: str = "auto"
    cache_dir: str | None = None
    on_bad_slide: str = "error"
    chunk_size: int = 512
    counterfactual: bool = True
    heatmap_max_side: int = 16384
    progress: bool = True

    @classmethod
    def from_config(cls, cfg: Any) -> PredictOptions:
        from omegaconf import OmegaConf

        d = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
        assert isinstance(d, dict)
        d = {k: v for k, v in d.items() if k != "hydra"}
        if "expression_file" in d:  # the config's name (``expression`` is a config group)
            file = d.pop("expression_file")
            d["expression"] = d.get("expression") or file
        for key in ("ckpt", "input", "out_dir"):
            if d.get(key) in (None, "", "???"):
                raise ConfigError(f"predict: {key}=PATH is required")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"predict: unknown option(s) {unknown}")
        if d.get("on_bad_slide", "error") not in ("error", "skip"):
            raise ConfigError("predict: on_bad_slide must be 'error' or 'skip'")
        if d.get("mpp") is not None and not float(d["mpp"]) > 0:
            raise ConfigError(f"predict: mpp must be > 0, got {d['mpp']}")
        return cls(**d)

    def key_fields(self) -> dict[str, Any]:
        """Options that change a patient's result (part of the resume key)."""
        return {
            "treatment": self.treatment,
            "mpp": self.mpp,
            "heatmaps": self.heatmaps,
            "markers_for_composite": list(self.markers_for_composite),
            "top_k": self.top_k,
            "explain": self.explain,
            "ig_steps": self.ig_steps,
            "allow_missing_genes": self.allow_missing_genes,
            "required_markers": self.required_markers,
            "counterfactual": self.counterfactual,
            "version": RESULT_VERSION,
        }


# ----------------------------------------------------------------------------- one patient
@dataclass
class PatientContext:
    """What is shared by every patient of a run."""

    pred: Predictor
    opts: PredictOptions
    out_dir: Path
    cache: TileCache
    expression: ExpressionInputs
    clinical_table: dict[str, dict[str, float]]


def _slide_info(
    s: SlideInput,
    n_tiles: int,
    slide_channels: Sequence[str],
    panel: Sequence[str],
    present: Sequence[bool],
) -> dict[str, Any]:
    """A slide's record in the output: tiles, channels, markers used and missing."""
    missing = [m for m, ok in zip(panel, present, strict=True) if not ok]
    if missing:
        log.warning(
            "%s: degraded mode, markers missing %s (zero-filled and masked)", s.slide_id, missing
        )
    if n_tiles == 0:
        log.warning("%s: no tissue tiles; the slide contributes no image input", s.slide_id)
    return {
        "slide_id": s.slide_id,
        "path": str(s.path),
        "n_tiles": int(n_tiles),
        "slide_channels": list(slide_channels),
        "markers_used": [m for m, ok in zip(panel, present, strict=True) if ok],
        "markers_missing": missing,
        "mpp_override": s.mpp,
    }


def _load_slide(ctx: PatientContext, s: SlideInput) -> tuple[SlideTiles | None, dict[str, Any]]:
    """Tile one slide into the tile cache (explanations need the pixels); its output info."""
    pred = ctx.pred
    ts = ctx.cache.load_or_build(s.path, pred.panel, pred.params, mpp=s.mpp, required=pred.required)
    info = _slide_info(s, len(ts.coords), ts.slide_channels, ts.channels, ts.present)
    if len(ts.coords) == 0:
        return None, info
    return slide_tiles(ts, s.slide_id, pred.low_pct, pred.high_pct), info


def _skip_or_raise(ctx: PatientContext, err: ImmunoplexError, errors: list[str]) -> None:
    if ctx.opts.on_bad_slide != "skip":
        raise err
    errors.append(str(err))
    log.warning("skipping slide: %s", err)


def _cached_slides(
    ctx: PatientContext, p: PatientInput, errors: list[str]
) -> tuple[list[SlideTiles], list[dict[str, Any]]]:
    slides: list[SlideTiles] = []
    infos: list[dict[str, Any]] = []
    for s in p.slides:
        try:
            st, info = _load_slide(ctx, s)
        except ImmunoplexError as err:
            _skip_or_raise(ctx, err, errors)
            continue
        infos.append(info)
        if st is not None:
            slides.append(st)
    return slides, infos


def _encode_opened(ctx: PatientContext, o: OpenedSlide, cm: torch.Tensor) -> SlideTiles:
    """One opened slide's SlideTiles: statistics, then its tiles streamed through the encoder.

    A model without an image branch reads no pixels: the grid alone (its tile count)."""
    pred = ctx.pred
    c = len(pred.markers)
    if "image" not in pred.modalities:
        norm = IntensityNorm([0.0] * c, [1.0] * c, o.match.present)
        return streamed_slide_tiles(o, norm, np.zeros((len(o.grid), 0)))
    lazy = LazyTiles(o, c)
    norm = fit_slide_norm(lazy, o.present, o.grid.coords, pred.low_pct, pred.high_pct)
    emb = embed_streamed(
        lambda x: pred.model.embed_tiles(x, cm[None, :].expand(x.shape[0], -1)),
        lazy,
        norm,
        pred.device,
        ctx.opts.chunk_size,
    )
    return streamed_slide_tiles(o, norm, emb.float().cpu().numpy())


def _streamed_slides(
    ctx: PatientContext, p: PatientInput, errors: list[str]
) -> tuple[list[SlideTiles], list[dict[str, Any]]]:
    """Open every slide (panel match + tile grid), then stream each one's tiles through the
    encoder with the patient's channel mask; only coordinates and embeddings are kept.

    A slide that fails while being read is dropped (``on_bad_slide=skip``) and the others are
    encoded again, since the patient's channel mask may change without it."""
    pred = ctx.pred
    opened: list[tuple[SlideInput, OpenedSlide]] = []
    try:
        for s in p.slides:
            try:
                o = open_for_streaming(
                    s.path, s.slide_id, pred.panel, pred.params, s.mpp, pred.required
                )
            except ImmunoplexError as err:
                _skip_or_raise(ctx, err, errors)
                continue
            opened.append((s, o))
        slides: list[SlideTiles] | None = None
        while slides is None:
            present = np.ones(len(pred.markers), dtype=bool)
            for _, o in opened:
                if len(o.grid):
                    present &= o.present
            cm = torch.from_numpy(present).to(pred.device)
            slides = []
            for item in opened:
                if not len(item[1].grid):
                    continue
                try:
                    slides.append(_encode_opened(ctx, item[1], cm))
                except ImmunoplexError as err:
                    _skip_or_raise(ctx, err, errors)
                    item[1].close()
                    opened.remove(item)
                    slides = None
                    break
        infos = [
            _slide_info(s, len(o.grid), o.slide.channels, pred.markers, o.match.present)
            for s, o in opened
        ]
        return slides, infos
    finally:
        for _, o in opened:
            o.close()


def predict_patient(ctx: PatientContext, p: PatientInput) -> dict[str, Any]:
    """Predict one patient; write its per-slide files; return its result record.

    Without explanations slides are streamed (read -> encode -> discard; memory independent of
    slide size); explanations re-encode tiles with markers occluded, so they use the tile cache.
    """
    pred, opts = ctx.pred, ctx.opts
    model, dev = pred.model, pred.device
    errors: list[str] = []
    uses_image = "image" in pred.modalities
    streamed = not opts.explain
    if streamed:
        slides, infos = _streamed_slides(ctx, p, errors)
    else:
        slides, infos = _cached_slides(ctx, p, errors)
    t_idx, t_name, t_src = treatment_index(pred, opts.treatment or p.treatment)
    clin = dict(p.clinical)
    clin.update(ctx.clinical_table.get(p.patient_id, {}))
    expr = ctx.expression.values.get(p.patient_id)
    rec = PatientRecord(
        patient_id=p.patient_id,
        label=p.label,
        treatment=t_idx,
        cohort=p.cohort or "",
        clinical=clinical_vector(pred, clin),
        expression=expr,
        slides=slides,
    )
    if rec.n_tiles == 0 and (expr is None or "expression" not in pred.modalities):
        raise ImmunoplexError(
            f"patient {p.patient_id}: no usable input (no tissue tiles"
            + (f"; {errors[0]}" if errors else "")
            + ", no expression)"
        )
    tile_dim = int(getattr(model, "tile_embedding_dim", 0) or 1)
    ds = PatientBagDataset(
        [rec],
        len(pred.markers),
        pred.n_genes,
        bag_size=None,
        embedding_dim=tile_dim if streamed else None,
    )
    batch = collate_bags([ds[0]])
    with torch.no_grad():
        if not (uses_image and slides):  # no image input (an expression-only model reads none)
            emb = None
        elif streamed:
            emb = batch["embeddings"][0].to(dev)
        else:
            emb = embed_bag(model, batch, dev, opts.chunk_size)
        mb = model_batch(batch, emb, dev, tile_dim)
        out = model(mb)
        logit = float(out["logit"][0])
        attn = out.get("attention")
        attention = (
            attn[0, : rec.n_tiles].float().cpu().numpy()
            if attn is not None and slides
            else np.zeros(0, np.float32)
        )
        cf = None
        if opts.counterfactual and len(pred.treatments) > 1:
            cf = model.counterfactual_logits(mb)[0].float().cpu().numpy()
        scores = tile_scores(model, mb) if slides else np.zeros(0, np.float32)
    explanation = None
    if opts.explain:
        from immunoplex.explain import explain_patient

        explanation = explain_patient(
            pred,
            batch,
            mb,
            logit,
            steps=opts.ig_steps,
            chunk=opts.chunk_size,
            top_genes=opts.top_genes,
        )
    prob = 1.0 / (1.0 + math.exp(-logit))
    row = _result_row(
        pred, p, rec, infos, logit, prob, cf, t_name, t_src, errors, ctx.expression.report
    )
    slide_files = _write_slide_results(ctx, p, slides, infos, attention, scores, prob)
    return {"row": row, "slides": slide_files, "explanation": explanation}


def _result_row(
    pred: Predictor,
    p: PatientInput,
    rec: PatientRecord,
    infos: list[dict[str, Any]],
    logit: float,
    prob: float,
    cf: np.ndarray | None,
    t_name: str,
    t_src: str,
    errors: list[str],
    report: GeneReport | None,
) -> dict[str, Any]:
    used_sets = [set(i["markers_used"]) for i in infos if i["n_tiles"] > 0]
    used = [m for m in pred.markers if used_sets and all(m in u for u in used_sets)]
    missing = [m for m in pred.markers if used_sets and m not in used]
    mods = []
    if "image" in pred.modalities and rec.n_tiles > 0:
        mods.append("image")
    if "expression" in pred.modalities and rec.expression is not None:
        mods.append("expression")
    if pred.n_clinical and rec.clinical[1::2].any():
        mods.append("clinical")
    report = report if rec.expression is not None else None
    row: dict[str, Any] = {
        "patient_id": p.patient_id,
        "slide_ids": [i["slide_id"] for i in infos],
        "label": p.label if p.label >= 0 else None,
        "cohort": p.cohort,
        "n_tiles": rec.n_tiles,
        "logit": logit,
        "probability": prob,
        "treatment": t_name,
        "treatment_source": t_src,
        "modalities": mods,
        "markers_used": used,
        "markers_missing": missing,
        "degraded": bool(missing),
        "genes_missing": len(report.missing) if report is not None else None,
        "genes_filled": bool(report.filled) if report is not None else None,
        "skipped_slides": errors,
    }
    if cf is not None:
        for name, v in zip(pred.treatments, cf, strict=True):
            row[f"counterfactual_probability[{name}]"] = float(1.0 / (1.0 + math.exp(-v)))
    return row


def _write_slide_results(
    ctx: PatientContext,
    p: PatientInput,
    slides: list[SlideTiles],
    infos: list[dict[str, Any]],
    attention: np.ndarray,
    scores: np.ndarray,
    prob: float,
) -> list[dict[str, Any]]:
    """Per slide: tiles.csv (level-0 boxes, attention, score), heatmaps, slide.json."""
    from immunoplex.heatmaps import SlideHeat, write_slide_heatmaps

    pred, opts = ctx.pred, ctx.opts
    by_id = {s.slide_id: s for s in slides}
    n_total = max(int(sum(s.n_tiles for s in slides)), 1)
    offset = 0
    results = []
    for info in infos:
        sid = info["slide_id"]
        d = ctx.out_dir / "slides" / safe_name(sid)
        d.mkdir(parents=True, exist_ok=True)
        st = by_id.get(sid)
        files: dict[str, str] = {}
        if st is not None:
            n = st.n_tiles
            a = attention[offset : offset + n] if len(attention) else np.full(n, np.nan)
            sc = scores[offset : offset + n] if len(scores) else np.full(n, np.nan)
            offset += n
            src = next(s for s in p.slides if s.slide_id == sid)
            heat = SlideHeat(
                slide_id=sid,
                path=src.path,
                mpp_override=src.mpp,
                coords=st.coords,
                tile_size=pred.params.tile_size,
                tiling_mpp=pred.params.mpp,
                attention=a.astype(np.float64),
                score=sc.astype(np.float64),
                n_patient_tiles=n_total,
                patient_id=p.patient_id,
                probability=prob,
                aliases=dict(pred.panel.aliases or {}),
            )
            files = write_slide_heatmaps(
                heat,
                d,
                markers=opts.markers_for_composite,
                top_k=opts.top_k,
                images=opts.heatmaps,
                max_side=opts.heatmap_max_side,
            )
        record = {**info, "patient_id": p.patient_id, "files": files}
        atomic_write_text(d / "slide.json", json.dumps(to_json(record), indent=1))
        results.append(record)
    return results


# ----------------------------------------------------------------------------- the run
def patient_key(ctx: PatientContext, p: PatientInput) -> str:
    """Hash of everything a patient's result depends on (checkpoint, slides, inputs, options)."""
    h = hashlib.sha1()
    spec = {
        "ckpt": ctx.pred.fingerprint,
        "opts": ctx.opts.key_fields(),
        "slides": [(s.slide_id, slide_fingerprint(s.path), s.mpp) for s in p.slides],
        "cohort": p.cohort,
        "treatment": p.treatment,
        "label": p.label,
        "clinical": sorted({**p.clinical, **ctx.clinical_table.get(p.patient_id, {})}.items()),
    }
    h.update(json.dumps(spec, sort_keys=True, default=str).encode())
    expr = ctx.expression.values.get(p.patient_id)
    h.update(b"none" if expr is None else np.ascontiguousarray(expr, np.float32).tobytes())
    return h.hexdigest()


def _finished(ctx: PatientContext, p: PatientInput, key: str) -> dict[str, Any] | None:
    path = ctx.out_dir / "patients" / f"{safe_name(p.patient_id)}.json"
    if not path.is_file():
        return None
    try:
        done = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if done.get("key") != key:
        return None
    for s in done.get("slides", []):
        d = ctx.out_dir / "slides" / safe_name(s["slide_id"])
        if not (d / "slide.json").is_file():
            return None
        if any(not (d / f).is_file() for f in s.get("files", {}).values()):
            return None
    return done


def _calibrate(pred: Predictor, df: pd.DataFrame) -> pd.DataFrame:
    """Calibrated probability, class and conformal set from the checkpoint's calibration."""
    logits = df["logit"].to_numpy(dtype=float)
    names = pred.label_names
    if pred.calibration is not None:
        df["calibrated_probability"] = pred.calibration.probabilities(logits)
        if pred.calibration.conformal is not None:
            df["prediction_set"] = pred.calibration.predict_sets(logits)
        else:
            df["prediction_set"] = None
        col = "calibrated_probability"
    else:
        df["calibrated_probability"] = np.nan
        df["prediction_set"] = None
        col = "probability"
    df["predicted_class"] = np.where(df[col] >= pred.threshold, names[1], names[0])
    return df


COLUMN_ORDER = [
    "patient_id",
    "slide_ids",
    "label",
    "cohort",
    "treatment",
    "probability",
    "calibrated_probability",
    "predicted_class",
    "prediction_set",
    "logit",
    "modalities",
    "markers_used",
    "markers_missing",
    "degraded",
    "genes_missing",
    "genes_filled",
    "n_tiles",
    "treatment_source",
    "skipped_slides",
]


def write_predictions(out_dir: Path, df: pd.DataFrame, header: dict[str, Any]) -> None:
    """predictions.csv (lists joined by ';') and predictions.json, both atomically."""
    records = [to_json(r) for r in df.to_dict(orient="records")]
    flat = df.copy()
    for col in flat.columns:
        if flat[col].map(lambda v: isinstance(v, list)).any():
            flat[col] = flat[col].map(lambda v: ";".join(map(str, v)) if isinstance(v, list) else v)
    tmp = atomic_path(out_dir / "predictions.csv")
    flat.to_csv(tmp, index=False)
    os.replace(tmp, out_dir / "predictions.csv")
    payload = {**to_json(header), "patients": records}
    atomic_write_text(out_dir / "predictions.json", json.dumps(payload, indent=1))


def predict(cfg: Any) -> pd.DataFrame:
    """Run inference as configured by ``configs/predict.yaml``; returns one row per patient."""
    opts = cfg if isinstance(cfg, PredictOptions) else PredictOptions.from_config(cfg)
    out_dir = Path(opts.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if str(opts.ckpt).endswith(".json"):
        return predict_elastic_net(opts, out_dir)
    pred = Predictor.load(opts.ckpt, opts.device, opts.required_markers)
    if opts.input in (None, "", "none", "null"):
        patients = expression_only_inputs(opts.expression, opts.cohort)
    else:
        patients = collect_inputs(
            opts.input, pred.clinical_columns, opts.mpp, opts.input_kind, opts.cohort
        )
    dup = pd.Series([p.patient_id for p in patients]).duplicated()
    if dup.any():
        raise ManifestError(
            f"{opts.input}: patient id {patients[int(dup.idxmax())].patient_id!r} appears twice"
        )
    expression = prepare_expression(
        pred, opts.expression, patients, opts.allow_missing_genes, opts.small_cohort
    )
    clinical = read_clinical_table(opts.clinical, pred.clinical_columns) if opts.clinical else {}
    if opts.treatment is not None:
        treatment_index(pred, opts.treatment)  # fail early on an unknown name
    cache = TileCache(opts.cache_dir or out_dir / "cache")
    ctx = PatientContext(pred, opts, out_dir, cache, expression, clinical)
    log.info("predicting %d patient(s) with %s on %s", len(patients), pred.path, pred.device)
    from tqdm.auto import tqdm

    results = []
    n_skipped = 0
    for p in tqdm(patients, desc="immunoplex-predict", unit="patient", disable=not opts.progress):
        key = patient_key(ctx, p)
        done = _finished(ctx, p, key)
        if done is None:
            done = {"key": key, **predict_patient(ctx, p)}
            path = out_dir / "patients" / f"{safe_name(p.patient_id)}.json"
            atomic_write_text(path, json.dumps(to_json(done), indent=1))
        else:
            n_skipped += 1
        results.append(done)
    if n_skipped:
        log.info("%d patient(s) already finished in %s were not recomputed", n_skipped, out_dir)
    df = pd.DataFrame([r["row"] for r in results])
    df = _calibrate(pred, df)
    cols = [c for c in COLUMN_ORDER if c in df.columns]
    df = df[cols + [c for c in df.columns if c not in cols]]
    header = {
        "checkpoint": str(pred.path),
        "model": pred.meta.get("model", {}).get("name"),
        "markers": pred.markers,
        "required_markers": pred.required,
        "genes": len(pred.genes),
        "gene_report": expression.report.to_dict() if expression.report else None,
        "treatments": pred.treatments,
        "threshold": pred.threshold,
        "calibrated": pred.calibration is not None,
        "device": str(pred.device),
        "n_recomputed": len(results) - n_skipped,
    }
    write_predictions(out_dir, df, header)
    if opts.explain:
        from immunoplex.explain import write_explanations

        write_explanations(
            out_dir,
            {r["row"]["patient_id"]: r.get("explanation") for r in results},
            pred,
            top_genes=opts.top_genes,
        )
    return df


def predict_elastic_net(opts: PredictOptions, out_dir: Path) -> pd.DataFrame:
    """Score an expression table with an elastic-net model saved as JSON (scripts/loco_icb.py)."""
    from immunoplex.expression import read_expression
    from immunoplex.linear import predict_expression

    path = Path(opts.ckpt)
    if opts.expression is None:
        raise ConfigError(f"{path}: an elastic-net model needs expression=PATH")
    try:
        model = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the elastic-net model ({err})") from err
    table = read_expression(opts.expression)
    prob = predict_expression(model, table, allow_missing=opts.allow_missing_genes)
    threshold = float(model.get("threshold", 0.5))
    df = pd.DataFrame(
        {
            "patient_id": [str(i) for i in table.values.index],
            "probability": prob,
            "predicted_class": np.where(prob >= threshold, "responder", "non-responder"),
            "modalities": "expression",
        }
    )
    header = {"checkpoint": str(path), "model": "elastic_net", "threshold": threshold}
    write_predictions(out_dir, df, header)
    return df
