"""The survival side of training: the multi-task loss, the epoch C-index, the Breslow baseline.

``task``: ``binary`` (response only: nothing here changes the loss), ``survival`` (the Cox
partial likelihood of the model's ``risk`` head alone) or ``both`` (BCE of the response head +
``weight`` x Cox, one model with two heads on the same fused embedding). The Cox loss is
:func:`immunoplex.models.survival.cox_loss`: **the risk set is the batch** (``data.batch_size``
patients; larger batches give a better estimate of the full-cohort partial likelihood), and
patients without a time for the endpoint are left out (never a time of zero).

After training, :func:`breslow_from_frame` estimates the baseline cumulative hazard on the
training patients' risks; it is stored in the checkpoint (``immunoplex.data.survival.baseline``)
so that ``immunoplex-predict`` writes survival curves S(t | x) = exp(-H0(t) exp(risk)).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from immunoplex.errors import ConfigError
from immunoplex.evaluation.survival import breslow_baseline, harrell_c, survival_at
from immunoplex.models.survival import TIES, cox_loss

TASKS = ("binary", "survival", "both")


class SurvivalLoss:
    """Adds the Cox term to the response loss and collects (risk, time, event) per epoch."""

    def __init__(self, task: str, cfg: Mapping[str, Any] | None = None) -> None:
        if task not in TASKS:
            raise ConfigError(f"task={task!r}: choose one of {', '.join(TASKS)}")
        cfg = dict(cfg or {})
        self.task = task
        self.weight = float(cfg.get("weight", 1.0))
        self.ties = str(cfg.get("ties", "efron"))
        if self.ties not in TIES:
            raise ConfigError(f"module.survival.ties={self.ties!r}: choose one of {TIES}")
        self._epoch: dict[str, list[tuple[Tensor, Tensor, Tensor]]] = {}

    @property
    def trains_response(self) -> bool:
        return self.task != "survival"

    def __call__(
        self, bce: Tensor, out: Mapping[str, Tensor], batch: Mapping[str, Tensor], stage: str
    ) -> Tensor:
        if self.task == "binary":
            return bce
        if "risk" not in out:
            raise ConfigError(f"task={self.task}: the model has no risk head (risk_head=false)")
        risk = out["risk"].float()
        time, event = batch["time"], batch["event"]
        cox = cox_loss(risk, time, event, ties=self.ties)
        self._epoch.setdefault(stage, []).append((risk.detach(), time.detach(), event.detach()))
        return cox if self.task == "survival" else bce + self.weight * cox

    def epoch_c_index(self, stage: str) -> float | None:
        """Harrell's C over the epoch's patients of this process (None without survival)."""
        rows = self._epoch.pop(stage, [])
        if not rows:
            return None
        r, t, e = (torch.cat([x[k] for x in rows]).cpu().numpy() for k in range(3))
        ok = np.isfinite(t) & (e >= 0)
        if not (e[ok] == 1).any():
            return None
        return harrell_c(t[ok], e[ok], r[ok])


def breslow_from_frame(df: pd.DataFrame) -> dict[str, list[float]] | None:
    """Breslow baseline from a frame with risk/time/event (the training patients)."""
    t, e = df["time"].to_numpy(float), df["event"].to_numpy(float)
    ok = np.isfinite(t) & (e >= 0)
    if not (e[ok] == 1).any():
        return None
    times, cumhaz = breslow_baseline(t[ok], e[ok].astype(int), df["risk"].to_numpy(float)[ok])
    return {"times": times.tolist(), "cumhaz": cumhaz.tolist()}


def set_baseline(checkpoint: MutableMapping[str, Any], baseline: Mapping[str, Any]) -> None:
    """Store the baseline hazard in a written checkpoint (``data.survival.baseline``)."""
    data = checkpoint["immunoplex"].setdefault("data", {})
    surv = dict(data.get("survival") or {})
    surv["baseline"] = dict(baseline)
    data["survival"] = surv


def default_horizons(baseline: Mapping[str, Any]) -> list[float]:
    """Survival-curve times written by predict: quartiles of the baseline's event times."""
    times = np.asarray(baseline.get("times") or [], float)
    if times.size == 0:
        return []
    return sorted({float(f"{h:.2g}") for h in np.quantile(times, [0.25, 0.5, 0.75])})


def survival_columns_frame(
    risk: np.ndarray, baseline: Mapping[str, Any] | None, horizons: list[float] | None = None
) -> pd.DataFrame:
    """``survival_at_<h>`` columns (S(h | x) from the Breslow baseline) for each horizon."""
    if not baseline or not baseline.get("times"):
        return pd.DataFrame(index=range(len(risk)))
    hz = horizons or default_horizons(baseline)
    s = survival_at(np.asarray(baseline["times"]), np.asarray(baseline["cumhaz"]), risk, hz)
    return pd.DataFrame({f"survival_at_{h:g}": s[:, k] for k, h in enumerate(hz)})


def oracle_c_index(truth_csv: str | None, df: pd.DataFrame, t: np.ndarray, e: np.ndarray) -> Any:
    """Harrell's C of the generator's true log hazard on the same patients (synthetic only)."""
    from pathlib import Path

    from immunoplex.utils.tables import read_table

    if not truth_csv or not Path(truth_csv).is_file():
        return None
    truth = read_table(Path(truth_csv), "truth table").set_index("patient_id")
    ids = df["patient_id"].astype(str)
    if "log_hazard" not in truth.columns or not ids.isin(truth.index).all():
        return None
    eta = pd.to_numeric(truth.loc[ids, "log_hazard"]).to_numpy(dtype=float)
    return harrell_c(t, e, eta)


def finalize_survival(
    dm: Any,
    module: Any,
    prepare: Any,
    frames: dict[str, pd.DataFrame],
    ckpt: MutableMapping[str, Any],
    best: Any,
    cfg: Any,
) -> dict[str, Any]:
    """After training (task=survival|both): Breslow baseline from the training patients into the
    checkpoint; per split frame ``risk``, ``survival_time`` / ``event_occurred`` (the endpoint's
    values), ``survival_at_<h>``; summary C-indices (+ the oracle's on synthetic data)."""
    from immunoplex.training.checkpoint import atomic_save
    from immunoplex.training.inference import infer

    task = module.survival_loss.task
    if task == "binary":
        return {}
    meta = dict(module.metadata.get("survival") or {})
    train = infer(prepare, module.model, dm.dataset("train"), device=module.device)
    baseline = breslow_from_frame(train)
    if baseline is not None:
        set_baseline(ckpt, baseline)
        meta["baseline"] = baseline
        module.metadata["survival"] = meta
        atomic_save(ckpt, best)
    out: dict[str, Any] = {"task": task, "endpoint": meta.get("endpoint")}
    for stage, df in frames.items():
        t, e = df.pop("time").to_numpy(float), df.pop("event").to_numpy(float)
        df["survival_time"] = t
        df["event_occurred"] = pd.array(np.where(e >= 0, e, -1), dtype="Int64")
        df.loc[e < 0, "event_occurred"] = pd.NA
        curves = survival_columns_frame(df["risk"].to_numpy(float), baseline)
        for col in curves.columns:
            df[col] = curves[col].to_numpy()
        if task == "survival":  # the response head is not trained: no probability to report
            df.drop(columns=[c for c in df.columns if c.startswith(("logit", "probability"))],
                    inplace=True)  # fmt: skip
        ok = np.isfinite(t) & (e >= 0)
        if (e[ok] == 1).any():
            out[f"{stage}_c_index"] = harrell_c(t[ok], e[ok], df["risk"].to_numpy(float)[ok])
            oracle = oracle_c_index(cfg.data.get("truth"), df[ok], t[ok], e[ok])
            if oracle is not None:
                out[f"{stage}_oracle_c_index"] = oracle
    return out
