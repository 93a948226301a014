"""Explanations of a prediction: markers, genes and modalities (per patient and per cohort).

- **Marker importance** (channel occlusion): Δlogit = logit(all channels) - logit(channel c set to
  zero and masked out, as if the slide lacked the marker). Positive: the marker's signal pushes
  the prediction towards response. Markers a slide lacks have no value.
- **Gene importance** (integrated gradients on the expression input, from the all-zero baseline =
  the training mean after normalisation, midpoint rule): attributions sum to
  logit(x) - logit(baseline) up to the integration error (reported as ``ig_gap``).
- **Modality contribution**: Δlogit = logit(full) - logit(modality replaced by the model's
  missing token (image, expression) or unobserved (clinical)).

Cohort summaries: mean Δ and mean |Δ| per marker / modality; mean |attribution| per gene.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from immunoplex.inference.predictor import Predictor, embed_bag, model_batch
from immunoplex.utils.atomic import write_csv, write_json

KIND = {"markers": "marker", "modalities": "modality", "genes": "gene", "features": "feature"}


def _logit(model: Any, mb: Mapping[str, torch.Tensor]) -> float:
    return float(model(mb)["logit"][0])


@torch.no_grad()
def marker_importance(
    pred: Predictor, batch: Mapping[str, torch.Tensor], logit: float, chunk: int = 512
) -> dict[str, float | None]:
    """Δlogit per panel marker by channel occlusion (None for markers the patient lacks)."""
    model, dev = pred.model, pred.device
    out: dict[str, float | None] = {}
    present = batch["channel_mask"][0].bool().tolist()
    has_tiles = bool(batch["tile_mask"].any()) and "tiles" in batch
    for c, marker in enumerate(pred.markers):
        if not has_tiles or "image" not in pred.modalities or not present[c]:
            out[marker] = None
            continue
        emb = embed_bag(model, batch, dev, chunk, occlude=c)
        out[marker] = logit - _logit(model, model_batch(batch, emb, dev))
    return out


def gene_importance(
    pred: Predictor, mb: Mapping[str, torch.Tensor], steps: int = 32, group: int = 8
) -> tuple[np.ndarray | None, float | None]:
    """Integrated-gradients attribution per gene (G,) and the completeness gap, or (None, None)."""
    if "expression" not in pred.modalities or not bool(mb["has_expression"][0]):
        return None, None
    model = pred.model
    x = mb["expression"][0].detach()
    base = torch.zeros_like(x)
    total = torch.zeros_like(x)
    alphas = (torch.arange(steps, device=x.device, dtype=x.dtype) + 0.5) / steps
    with torch.enable_grad():
        for a in range(0, steps, group):
            al = alphas[a : a + group]
            m = al.shape[0]
            xi = (base + al[:, None] * (x - base)[None]).requires_grad_(True)
            b = {k: v.expand(m, *v.shape[1:]) for k, v in mb.items() if k != "expression"}
            b["expression"] = xi
            logits = model(b)["logit"]
            (grad,) = torch.autograd.grad(logits.sum(), xi)
            total += grad.sum(dim=0)
    attr = ((x - base) * total / steps).cpu().numpy().astype(np.float64)
    with torch.no_grad():
        b0 = dict(mb)
        b0["expression"] = base[None]
        gap = _logit(model, mb) - _logit(model, b0) - float(attr.sum())
    return attr, gap


@torch.no_grad()
def modality_contributions(
    pred: Predictor, mb: Mapping[str, torch.Tensor], logit: float
) -> dict[str, float | None]:
    """Δlogit when each modality is replaced by the missing token (None: not used/absent)."""
    model = pred.model
    out: dict[str, float | None] = {}
    for name, key in (("image", "has_image"), ("expression", "has_expression")):
        if name not in pred.modalities or not bool(mb[key][0]):
            out[name] = None
            continue
        b = dict(mb)
        b[key] = torch.zeros_like(mb[key])
        out[name] = logit - _logit(model, b)
    if "has_features" in mb:  # the patient feature table (e.g. the cell stage's), as a whole
        if bool(mb["has_features"][0]):
            b = dict(mb)
            b["has_features"] = torch.zeros_like(mb["has_features"])
            out["cells"] = logit - _logit(model, b)
        else:
            out["cells"] = None
    clin = mb.get("clinical")
    if pred.n_clinical and clin is not None and bool(clin[0, 1::2].any()):
        b = dict(mb)
        b["clinical"] = torch.zeros_like(clin)
        out["clinical"] = logit - _logit(model, b)
    else:
        out["clinical"] = None
    return out


@torch.no_grad()
def feature_contributions(pred: Predictor, mb: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Feature models (``feature_labels``): each named feature's logit contribution (empty else).

    For the linear feature model they sum to the logit minus the treatment's intercept, e.g.
    ``{"Clever-1+ (STAB1+CD68+) macrophage area, share of stroma (log)": -0.8, ...}``.
    """
    labels = getattr(pred.model, "feature_labels", None)
    if not labels:
        return {}
    contrib = pred.model(mb).get("feature_contributions")
    if contrib is None:
        return {}
    return {str(k): float(v) for k, v in zip(labels, contrib[0].float().cpu().tolist())}


def explain_patient(
    pred: Predictor,
    batch: Mapping[str, torch.Tensor],
    mb: Mapping[str, torch.Tensor],
    logit: float,
    steps: int = 32,
    chunk: int = 512,
    top_genes: int = 20,
) -> dict[str, Any]:
    """Markers, genes and modalities for one patient (plain, JSON-safe values)."""
    markers = marker_importance(pred, batch, logit, chunk)
    attr, gap = gene_importance(pred, mb, steps)
    genes: dict[str, Any] = {"attributions": None, "top": [], "ig_gap": gap}
    if attr is not None:
        order = np.argsort(-np.abs(attr), kind="stable")[:top_genes]
        genes["attributions"] = attr.tolist()
        genes["top"] = [[pred.genes[i], float(attr[i])] for i in order]
    return {
        "logit": logit,
        "markers": markers,
        "genes": genes,
        "modalities": modality_contributions(pred, mb, logit),
        "features": feature_contributions(pred, mb),
    }


# ----------------------------------------------------------------------------- cohort tables
def _ranked(values: dict[str, list[float]]) -> list[dict[str, Any]]:
    rows = []
    for name, vals in values.items():
        v = np.asarray([x for x in vals if x is not None], np.float64)
        if len(v) == 0:
            rows.append({"feature": name, "mean": None, "mean_abs": None, "n": 0})
            continue
        rows.append(
            {
                "feature": name,
                "mean": float(v.mean()),
                "mean_abs": float(np.abs(v).mean()),
                "n": int(len(v)),
            }
        )
    rows.sort(key=lambda r: -1.0 if r["mean_abs"] is None else -r["mean_abs"])
    for i, r in enumerate(rows, start=1):
        r["rank"] = i if r["mean_abs"] is not None else None
    rows.sort(key=lambda r: (r["rank"] is None, r["rank"] or 0))
    return rows


def cohort_summary(
    explanations: Mapping[str, dict[str, Any] | None], pred: Predictor, top_genes: int = 20
) -> dict[str, Any]:
    """Mean Δ / mean |Δ| per marker and modality, mean |IG| per gene, over patients."""
    ex = {k: v for k, v in explanations.items() if v}
    markers = {m: [e["markers"].get(m) for e in ex.values()] for m in pred.markers}
    mods = sorted({k for e in ex.values() for k in e["modalities"]})
    modalities = {m: [e["modalities"].get(m) for e in ex.values()] for m in mods}
    attrs = [
        np.asarray(e["genes"]["attributions"])
        for e in ex.values()
        if e["genes"].get("attributions") is not None
    ]
    genes: list[dict[str, Any]] = []
    if attrs:
        a = np.stack(attrs)
        mean_abs = np.abs(a).mean(axis=0)
        order = np.argsort(-mean_abs, kind="stable")[:top_genes]
        genes = [
            {
                "feature": pred.genes[i],
                "mean": float(a[:, i].mean()),
                "mean_abs": float(mean_abs[i]),
                "n": int(a.shape[0]),
                "rank": r,
            }
            for r, i in enumerate(order, start=1)
        ]
    names = list(dict.fromkeys(k for e in ex.values() for k in e.get("features", {})))
    features = {f: [e.get("features", {}).get(f) for e in ex.values()] for f in names}
    return {
        "n_patients": len(ex),
        "features": _ranked(features),
        "markers": _ranked(markers),
        "modalities": _ranked(modalities),
        "genes": genes,
    }


def explanation_table(
    explanations: Mapping[str, dict[str, Any] | None], summary: dict[str, Any]
) -> pd.DataFrame:
    """Long table: scope (patient|cohort), patient_id, kind, feature, value, rank."""
    rows: list[dict[str, Any]] = []
    for pid, e in explanations.items():
        if not e:
            continue
        for kind in ("markers", "modalities", "features"):
            vals = {k: v for k, v in e.get(kind, {}).items() if v is not None}
            order = sorted(vals, key=lambda k: -abs(vals[k]))
            for r, k in enumerate(order, start=1):
                rows.append(
                    {
                        "scope": "patient",
                        "patient_id": pid,
                        "kind": KIND[kind],
                        "feature": k,
                        "value": vals[k],
                        "rank": r,
                    }
                )
        for r, (g, v) in enumerate(e["genes"]["top"], start=1):
            rows.append(
                {
                    "scope": "patient",
                    "patient_id": pid,
                    "kind": "gene",
                    "feature": g,
                    "value": v,
                    "rank": r,
                }
            )
    for kind in ("markers", "modalities", "genes", "features"):
        for item in summary.get(kind, []):
            if item["mean_abs"] is None:
                continue
            rows.append(
                {
                    "scope": "cohort",
                    "patient_id": "",
                    "kind": KIND[kind],
                    "feature": item["feature"],
                    "value": item["mean_abs"],
                    "rank": item["rank"],
                    "mean": item["mean"],
                    "n": item["n"],
                }
            )
    return pd.DataFrame(
        rows, columns=["scope", "patient_id", "kind", "feature", "value", "rank", "mean", "n"]
    )


def write_explanations(
    out_dir: Path,
    explanations: Mapping[str, dict[str, Any] | None],
    pred: Predictor,
    top_genes: int = 20,
) -> dict[str, Any]:
    """explanations.csv (long table) and explanations.json (cohort + per patient), atomically."""

    summary = cohort_summary(explanations, pred, top_genes)
    table = explanation_table(explanations, summary)
    write_csv(out_dir / "explanations.csv", table)
    patients = {}
    for pid, e in explanations.items():
        if not e:
            continue
        g = {k: v for k, v in e["genes"].items() if k != "attributions"}
        patients[pid] = {**e, "genes": g}
    payload = {
        "methods": {
            "markers": "channel occlusion: logit(full) - logit(channel zeroed and masked)",
            "genes": "integrated gradients from the zero (training-mean) baseline",
            "modalities": "logit(full) - logit(modality replaced by the missing token)",
            "features": "feature models: standardised feature x its weight (logit units)",
        },
        "cohort": summary,
        "patients": patients,
    }
    write_json(out_dir / "explanations.json", payload)
    return summary
