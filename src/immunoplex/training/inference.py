"""Run a trained module over patient bags and collect per-patient outputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from immunoplex.data.bags import PatientBagDataset, PatientSampler, collate_bags


def eval_loader(ds: PatientBagDataset, batch_size: int = 4, num_workers: int = 0) -> DataLoader:
    """Every patient once, in order, on this process (no DDP sharding)."""
    sampler = PatientSampler([r.label for r in ds.records], train=False)
    return DataLoader(
        ds, batch_size=batch_size, sampler=sampler, collate_fn=collate_bags, num_workers=num_workers
    )


@torch.no_grad()
def infer(
    prepare: Callable[[dict[str, torch.Tensor]], dict[str, Any]],
    model: torch.nn.Module,
    ds: PatientBagDataset,
    device: torch.device | str = "cpu",
    batch_size: int = 4,
    keep_attention: bool = False,
) -> pd.DataFrame:
    """One row per patient: patient_id, label, cohort, treatment index, logit (+ attention)."""
    was_training = model.training
    model.eval()
    rows: list[dict[str, Any]] = []
    for batch in eval_loader(ds, batch_size):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        prepared = prepare(batch)
        out = model(prepared)
        logits = out["logit"].float().cpu().numpy()
        risk = out.get("risk")  # the survival head (task=survival|both)
        risk_np = None if risk is None else risk.float().cpu().numpy()
        # the prediction under every treatment (treatment-conditioned models): benefit estimates
        cf = out.get("treatment_logits")
        if cf is None and hasattr(model, "counterfactual_logits"):
            cf = model.counterfactual_logits(prepared)
        cf_np = None if cf is None else cf.float().cpu().numpy()
        attn = out.get("attention")
        for i, idx in enumerate(batch["index"].cpu().numpy()):
            rec = ds.records[int(idx)]
            row: dict[str, Any] = {
                "patient_id": rec.patient_id,
                "label": rec.label,
                "cohort": rec.cohort,
                "treatment_index": rec.treatment,
                "logit": float(logits[i]),
                "has_image": rec.n_tiles > 0,
                "has_expression": rec.expression is not None,
            }
            if risk_np is not None:
                row.update(risk=float(risk_np[i]), time=rec.time, event=rec.event)
            if cf_np is not None:
                row["counterfactual_logits"] = cf_np[i].tolist()
            if keep_attention and attn is not None:
                n = int(batch["tile_mask"][i].sum())
                row["attention"] = attn[i, :n].float().cpu().numpy()
            rows.append(row)
    model.train(was_training)
    df = pd.DataFrame(rows)
    df["probability"] = 1.0 / (1.0 + np.exp(-df["logit"].to_numpy()))
    return df
