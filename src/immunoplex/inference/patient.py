"""One patient end to end: slides (cached or streamed) -> tiles -> embeddings -> probability, with
per-slide outputs and the resume key that lets a re-run skip finished patients."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from immunoplex.data.bags import PatientBagDataset, PatientRecord, SlideTiles, collate_bags
from immunoplex.data.slides import fit_slide_norm, slide_tiles
from immunoplex.errors import ImmunoplexError
from immunoplex.expression.genes import GeneReport
from immunoplex.inference.feature_inputs import feature_fields
from immunoplex.inference.inputs import (
    PatientInput,
    SlideInput,
    treatment_index,
)
from immunoplex.inference.options import PatientContext
from immunoplex.inference.predictor import Predictor, embed_bag, model_batch, tile_scores
from immunoplex.inference.prefetch import prepare_slide
from immunoplex.inference.stream import (
    LazyTiles,
    OpenedSlide,
    embed_streamed,
    streamed_slide_tiles,
)
from immunoplex.tiles.cache import slide_fingerprint
from immunoplex.tiles.empty import check_not_empty
from immunoplex.tiles.intensity import IntensityNorm
from immunoplex.utils.atomic import write_json
from immunoplex.utils.names import safe_name

log = logging.getLogger(__name__)


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
    ts = ctx.cache.load_or_build(
        s.path,
        pred.panel,
        pred.params,
        mpp=s.mpp,
        required=pred.required,
        channel_names=s.channel_names,
    )
    if len(ts.coords) == 0:  # an empty image is a bad slide, not "no tissue"
        check_not_empty(s.path, pred.params, s.mpp, s.channel_names)
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
    lazy = o.lazy or LazyTiles(o, c)  # prepared ahead (inference.prefetch), or now
    norm = o.norm or fit_slide_norm(lazy, o.present, o.grid.coords, pred.low_pct, pred.high_pct)
    emb = embed_streamed(
        lambda x: pred.model.embed_tiles(x, cm[None, :].expand(x.shape[0], -1)),
        lazy,
        norm,
        pred.device,
        ctx.opts.chunk_size,
        prefetch=ctx.overlap,
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
                o = ctx.prefetch.take(s) if ctx.prefetch is not None else prepare_slide(pred, s)
            except ImmunoplexError as err:
                _skip_or_raise(ctx, err, errors)
                continue
            if not len(o.grid):  # an empty image is a bad slide, not "no tissue"
                try:
                    check_not_empty(s.path, pred.params, s.mpp, s.channel_names)
                except ImmunoplexError as err:
                    o.close()
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
    table = ctx.features.vector(p.patient_id) if ctx.features is not None else None
    rec = PatientRecord(
        patient_id=p.patient_id,
        label=p.label,
        treatment=t_idx,
        cohort=p.cohort or "",
        clinical=pred.clinical.transform(clin),
        expression=expr,
        slides=slides,
        features=table,
        has_features=table is not None,
    )
    if (
        rec.n_tiles == 0
        and not rec.has_features
        and (expr is None or "expression" not in pred.modalities)
    ):
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
        risk = float(out["risk"][0]) if "risk" in out else None  # survival head (log hazard)
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
        from immunoplex.inference.explain import explain_patient

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
    if risk is not None:
        row["risk"] = risk
    expr_in = ctx.expression  # expression_norm=features: per-feature coverage, dropped patients
    row.update(feature_fields(expr_in.feature_report, expr_in.dropped, p.patient_id))
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
    if rec.has_features:
        mods.append("cells")
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
    if cf is not None:  # calibrated as calibrated_probability is, when the checkpoint has one
        cf_logits = np.asarray(cf, dtype=np.float64)
        cf_p = (
            pred.calibration.probabilities(cf_logits)
            if pred.calibration is not None
            else 1.0 / (1.0 + np.exp(-cf_logits))
        )
        for name, v in zip(pred.treatments, cf_p, strict=True):
            row[f"counterfactual_probability[{name}]"] = float(v)
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
    from immunoplex.inference.heatmaps import write_slide_heatmaps
    from immunoplex.inference.slideheat import SlideHeat

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
                channel_names=src.channel_names,
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
        write_json(d / "slide.json", record)
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
    tab = ctx.features.vector(p.patient_id) if ctx.features is not None else None
    h.update(b"none" if tab is None else np.ascontiguousarray(tab, np.float32).tobytes())
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
