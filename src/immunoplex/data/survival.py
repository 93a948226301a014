"""Survival cells of a table -> (time, event) arrays, with one-line errors naming the row.

The one parser of time/event columns: the cohort manifest (training), the predictions table
(``immunoplex-eval``) and the ICB sample tables use it. A patient with neither value is
unlabelled for that endpoint (time NaN, event -1), never a time of zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from immunoplex.errors import ConfigError, ManifestError, SplitError
from immunoplex.utils.tables import MISSING_TEXT

EVENT_VALUES = {"1": 1, "1.0": 1, "true": 1, "0": 0, "0.0": 0, "false": 0}


# ---- input checks ------------------------------------------------------------------------------
def _cell(v: Any) -> str:
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return ""
    text = str(v).strip()
    return "" if text.lower() in MISSING_TEXT else text


def parse_survival(
    times: Sequence[Any], events: Sequence[Any], where: Sequence[str], what: str = "survival"
) -> tuple[np.ndarray, np.ndarray]:
    """Cells -> (time float, NaN = unlabelled; event int, -1 = unlabelled), one-line errors.

    ``where[i]`` names row i (``file:row``). Refused: a negative or non-numeric time, an event
    without a time, a time without an event, an event that is not 0/1 (or true/false).
    """
    t_out = np.full(len(times), np.nan)
    e_out = np.full(len(times), -1, dtype=np.int64)
    for i, (tv, ev) in enumerate(zip(times, events, strict=True)):
        tt, et = _cell(tv), _cell(ev)
        if et and et.lower() not in EVENT_VALUES:
            raise ManifestError(f"{where[i]}: {what} event {et!r} is not 0/1 (or true/false)")
        if not tt:
            if et:
                raise ManifestError(f"{where[i]}: {what} event {et!r} without a time")
            continue
        try:
            t = float(tt)
        except ValueError:
            raise ManifestError(f"{where[i]}: {what} time {tt!r} is not a number") from None
        if not math.isfinite(t) or t < 0:
            raise ManifestError(f"{where[i]}: {what} time {tt} is negative or not finite")
        if not et:
            raise ManifestError(f"{where[i]}: {what} time {tt} without an event value (0/1)")
        t_out[i], e_out[i] = t, EVENT_VALUES[et.lower()]
    return t_out, e_out


def require_events(event: np.ndarray, where: str) -> None:
    """A partition whose endpoint has no event cannot be fitted or scored: a one-line error."""
    e = np.asarray(event)
    if not (e == 1).any():
        raise SplitError(f"{where}: no events among {int((e >= 0).sum())} patients with a time")


# ---- the data config (DataConfig.task / DataConfig.survival) ----------------------------------
TASKS = ("binary", "survival", "both")


def survival_endpoint(cfg: Any) -> str | None:
    """The endpoint the survival head learns (None for task=binary); config errors are one line."""
    if cfg.task not in TASKS:
        raise ConfigError(f"task={cfg.task!r}: choose one of {', '.join(TASKS)}")
    if cfg.task == "binary":
        return None
    ep = str((cfg.survival or {}).get("endpoint") or "")
    if ep not in survival_columns(cfg):
        raise ConfigError(
            f"data.survival.endpoint={ep!r} is not one of data.survival.endpoints "
            f"{sorted(survival_columns(cfg))}"
        )
    return ep


def survival_columns(cfg: Any) -> dict[str, tuple[str, str]]:
    """endpoint -> (time column, event column) from ``data.survival.endpoints``."""
    out = {}
    for ep, cols in ((cfg.survival or {}).get("endpoints") or {}).items():
        if not isinstance(cols, Mapping) or not cols.get("time") or not cols.get("event"):
            raise ConfigError(f"data.survival.endpoints.{ep} needs 'time' and 'event' column names")
        out[str(ep)] = (str(cols["time"]), str(cols["event"]))
    return out


def survival_meta(cfg: Any) -> dict[str, Any] | None:
    """What predict needs: the endpoint and its column names (the baseline is added later)."""
    ep = survival_endpoint(cfg)
    if ep is None:
        return None
    tcol, ecol = survival_columns(cfg)[ep]
    return {"endpoint": ep, "time_column": tcol, "event_column": ecol}


def trainable(rec: Any, task: str) -> bool:
    """Has a target for the task: a response label and/or a time for the endpoint."""
    has_label, has_time = rec.label >= 0, rec.event >= 0
    return (
        has_label if task == "binary" else has_time if task == "survival" else has_label or has_time
    )


def check_survival(dm: Any, cohort: Any, ep: str) -> None:
    """The endpoint's columns exist and every partition that trains or scores has events."""
    tcol = survival_columns(dm.cfg)[ep][0]
    if tcol not in cohort.slides.columns:
        raise ManifestError(
            f"{cohort.manifest}: task={dm.cfg.task} needs the {ep} time column {tcol!r} "
            f"(data.survival.endpoints.{ep}); the manifest has {list(cohort.slides.columns)}"
        )
    for stage in ("train", "val", "test"):
        ids = dm.patient_ids(stage)
        if ids and (stage == "train" or any(dm.records[p].event >= 0 for p in ids)):
            require_events(
                np.array([dm.records[p].event for p in ids]),
                f"{cohort.manifest}: {stage} split, endpoint {ep} ({tcol})",
            )
