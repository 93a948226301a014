"""Assemble a synthetic cohort: patients, splits, slides (in parallel), tables, summary."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from tqdm.auto import tqdm

from immunoplex.evaluation.metrics import auroc_score as auroc
from immunoplex.synth.expression import simulate_expression
from immunoplex.synth.settings import resolve_settings
from immunoplex.synth.slide import SLIDE_SETTING_KEYS, SlideJob, generate_slide
from immunoplex.synth.survival import SURVIVAL_COLUMNS, oracle_cindices, sample_survival
from immunoplex.synth.truth import oracle_aurocs, sample_truth
from immunoplex.utils import atomic

MANIFEST_COLUMNS = [
    "slide_id", "patient_id", "image", "label", "cohort", "treatment", "sclever1", "split",
    *SURVIVAL_COLUMNS,  # survival_time_os, event_occurred_os, ..._pfs (empty = not recorded)
]  # fmt: skip

#: Latents handed to the slide renderer (per patient).
_SLIDE_LATENTS = (
    "phenotype", "cd8_density", "cd8_intratumoural_fraction", "macrophage_density",
    "clever1_fraction", "neutrophil_density", "tumour_burden", "vessel_z",
)  # fmt: skip

_COHORT_STREAM, _TRUTH_STREAM, _EXPRESSION_STREAM, _SURVIVAL_STREAM = 0, 1, 3, 4
_POPULATION_N, _POPULATION_SEED = 20_000, 99


@dataclass
class CohortSummary:
    """What was generated and how much signal the truth carries."""

    out_dir: str
    size: str
    seed: int
    n_patients: int
    n_slides: int
    n_labelled: int
    n_responders: int
    n_test: int
    n_with_expression: int
    n_rendered: int
    n_reused: int
    seconds: float
    #: AUROC on the test split (sampled labels) of the Bayes-optimal predictor (true p) and of the
    #: best image-only / expression-only predictors (each also sees arm and sClever-1).
    auroc_bayes_test: float
    auroc_image_only_test: float
    auroc_expression_only_test: float
    #: The same three, expected over the population (no label or sampling noise).
    auroc_bayes_population: float
    auroc_image_only_population: float
    auroc_expression_only_population: float
    #: Harrell's C-index on the test split (observed, censored times) of the true log hazard and
    #: of the best image-only / expression-only log hazards, per endpoint (docs: "Survival").
    cindex_bayes_os_test: float = float("nan")
    cindex_image_only_os_test: float = float("nan")
    cindex_expression_only_os_test: float = float("nan")
    cindex_bayes_pfs_test: float = float("nan")
    cindex_image_only_pfs_test: float = float("nan")
    cindex_expression_only_pfs_test: float = float("nan")
    #: The true log hazard's C-index over the population (20 000 patients, censored as drawn).
    cindex_bayes_os_population: float = float("nan")
    cindex_bayes_pfs_population: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        d = self.to_dict()
        lines = [f"synthetic cohort written to {self.out_dir} (size={self.size}, seed={self.seed})"]
        lines += [f"  {k:34s} {v:.3f}" if isinstance(v, float) else f"  {k:34s} {v}"
                  for k, v in d.items() if k not in ("out_dir", "size", "seed")]  # fmt: skip
        return "\n".join(lines)


def _assign_patients(truth: pd.DataFrame, settings: dict[str, Any], rng: np.random.Generator):
    """Site, slides per patient, labelled/unlabelled, missing expression and the split."""
    c = settings["cohort"]
    n = len(truth)
    sites = list(c["sites"])
    sp = np.array([c["sites"][s] for s in sites], float)
    site = np.asarray(sites, dtype=object)[rng.choice(len(sites), n, p=sp / sp.sum())]

    def pick(frac: float, pool: np.ndarray) -> np.ndarray:
        k = min(len(pool), round(frac * n))
        return rng.permutation(pool)[:k]

    everyone = np.arange(n)
    n_slides = np.ones(n, int)
    n_slides[pick(c["frac_two_slides"], everyone)] = 2
    unlabelled = np.zeros(n, bool)
    unlabelled[pick(c["frac_unlabelled"], everyone)] = True
    no_expr = np.zeros(n, bool)
    no_expr[pick(c["frac_missing_expression"], everyone)] = True
    split = np.full(n, "train", dtype=object)
    y = truth["label_true"].to_numpy()
    for cls in (0, 1):
        pool = np.flatnonzero(~unlabelled & (y == cls))
        k = round(c["frac_test"] * len(pool))
        split[rng.permutation(pool)[:k]] = "test"
    return site, n_slides, unlabelled, no_expr, split


def _pool_context() -> mp.context.BaseContext:
    """``fork`` while the process is single-threaded (fast start, works from scripts without a
    ``__main__`` guard); otherwise ``spawn`` (forking a threaded process can deadlock)."""
    if "fork" in mp.get_all_start_methods() and threading.active_count() == 1:
        return mp.get_context("fork")
    return mp.get_context("spawn")


def _run_jobs(jobs: list[SlideJob], workers: int, progress: bool) -> list[dict[str, Any]]:
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    if workers <= 1 or len(jobs) <= 1:
        with tqdm(
            total=len(jobs), desc="immunoplex-synth", unit="slide", disable=not progress
        ) as bar:
            for k, job in enumerate(jobs):
                results[k] = generate_slide(job)
                bar.update()
        return results  # type: ignore[return-value]
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context())
    try:
        # Submit (and so start the workers) before tqdm starts its monitor thread.
        futures = {ex.submit(generate_slide, job): k for k, job in enumerate(jobs)}
        with tqdm(
            total=len(jobs), desc="immunoplex-synth", unit="slide", disable=not progress
        ) as bar:
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                bar.update()
    except BaseException:
        ex.shutdown(wait=True, cancel_futures=True)
        raise
    ex.shutdown(wait=True)
    return results  # type: ignore[return-value]


# ``S0001.ome.tif``; a temporary sibling from ``utils.atomic.atomic_path``
# (``.S0001.<random>.tmp.ome.tif``); or one from before it (``.S0001.ome.tif.<pid>.tmp``).
_OWN_FILE = re.compile(
    r"^(?:(?P<id>S\d{4,})\.(?:ome\.tif|npy|json|parquet)"
    r"|(?P<tmp>\.(?P<tid>S\d{4,})\.(?:[A-Za-z0-9_]+\.tmp\.(?:ome\.tif|npy|json|parquet)"
    r"|(?:ome\.tif|npy|json|parquet)\.\d+\.tmp)))$"
)


def _remove_stale(out: Path, keep: set[str]) -> None:
    """Delete leftovers: temporary files of interrupted runs and slides of an earlier, larger run.

    Only names this generator writes (``S0001.ome.tif``, ``S0001.npy``, ``S0001.json``,
    ``S0001.parquet``) and their temporary siblings are touched.
    """
    for sub in ("slides", "signal", "cells"):
        for p in (out / sub).iterdir():
            m = _OWN_FILE.match(p.name)
            if m and (m.group("tmp") or m.group("id") not in keep):
                p.unlink(missing_ok=True)


def _plan_slides(
    truth: pd.DataFrame, settings: dict[str, Any], seed: int, out: Path
) -> list[SlideJob]:
    """One job per slide, numbered in patient order (S0001, ...)."""
    slide_settings = {k: settings[k] for k in SLIDE_SETTING_KEYS}
    jobs: list[SlideJob] = []
    for pid, row in truth.iterrows():
        latents = {k: (row[k] if k == "phenotype" else float(row[k])) for k in _SLIDE_LATENTS}
        for _ in range(int(row["n_slides"])):
            jobs.append(
                SlideJob(
                    index=len(jobs),
                    slide_id=f"S{len(jobs) + 1:04d}",
                    patient_id=str(pid),
                    seed=seed,
                    patient=latents,
                    site=str(row["site"]),
                    site_gain=tuple(float(g) for g in settings["sites"][row["site"]]),
                    out_dir=str(out.resolve()),
                    settings=slide_settings,
                )
            )
    return jobs


def _write_tables(
    out: Path, truth: pd.DataFrame, slides: pd.DataFrame, settings: dict[str, Any], seed: int
) -> None:
    """truth_slides, expression, truth and (last, so its presence means done) the manifest."""
    per_slide = slides.assign(gains=slides["gains"].map(lambda g: ";".join(f"{x:.4f}" for x in g)))
    keep = [c for c in per_slide.columns if c not in ("reused", "fingerprint")]
    atomic.write_csv(out / "truth_slides.csv", per_slide[keep])

    expr = simulate_expression(
        truth, truth["site"], settings["expression"],
        np.random.default_rng(np.random.SeedSequence([seed, _EXPRESSION_STREAM])),
    )  # fmt: skip
    expr = expr[truth["has_expression"].to_numpy()]
    atomic.write_csv(out / "expression.csv", expr, float_format="%.4f")

    label = truth["label_true"].astype("Int64").mask(~truth["labelled"])
    truth_out = truth.reset_index()
    truth_out.insert(1, "label", label.array)
    atomic.write_csv(out / "truth.csv", truth_out, float_format="%.6g")

    pid = slides["patient_id"]
    manifest = pd.DataFrame(
        {
            "slide_id": slides["slide_id"],
            "patient_id": pid,
            "image": slides["image"],
            "label": label.reindex(pid).array,
            "cohort": truth.loc[pid, "site"].to_numpy(),
            "treatment": truth.loc[pid, "treatment"].to_numpy(),
            "sclever1": truth.loc[pid, "sclever1"].round(4).to_numpy(),
            "split": truth.loc[pid, "split"].to_numpy(),
            **{c: truth.loc[pid, c].array for c in SURVIVAL_COLUMNS if c in truth.columns},
        }
    )[[c for c in MANIFEST_COLUMNS if c in truth.columns or c not in SURVIVAL_COLUMNS]]
    atomic.write_csv(out / "manifest.csv", manifest)


@lru_cache(maxsize=8)
def _population_aurocs(key: str) -> dict[str, float]:
    truth_cfg, arms = json.loads(key)
    return oracle_aurocs(sample_truth(_POPULATION_N, _POPULATION_SEED, truth_cfg, arms))


@lru_cache(maxsize=8)
def _population_cindices(key: str) -> dict[str, float]:
    truth_cfg, arms, surv_cfg = json.loads(key)
    truth = sample_truth(_POPULATION_N, _POPULATION_SEED, truth_cfg, arms)
    surv = sample_survival(truth, truth_cfg, surv_cfg, np.random.default_rng(_POPULATION_SEED))
    return {ep: oracle_cindices(surv, ep)["bayes"] for ep in ("os", "pfs")}


def _survival_summary(truth: pd.DataFrame, settings: dict[str, Any]) -> dict[str, float]:
    """The ``cindex_*`` fields of the summary (empty when the settings have no survival)."""
    if "log_hazard" not in truth.columns:
        return {}
    test = truth[truth["split"] == "test"]
    out: dict[str, float] = {}
    for ep in ("os", "pfs"):
        for k, v in oracle_cindices(test, ep).items():
            out[f"cindex_{k}_{ep}_test"] = v
    key = [settings["truth"], settings["cohort"]["treatments"], settings["survival"]]
    for ep, v in _population_cindices(json.dumps(key, sort_keys=True)).items():
        out[f"cindex_bayes_{ep}_population"] = v
    return out


def _summarise(
    out: Path,
    size: str,
    seed: int,
    truth: pd.DataFrame,
    slides: pd.DataFrame,
    settings: dict[str, Any],
) -> CohortSummary:
    test = truth[truth["split"] == "test"]
    y = test["label_true"].to_numpy()
    pop = _population_aurocs(
        json.dumps([settings["truth"], settings["cohort"]["treatments"]], sort_keys=True)
    )
    labelled = truth[truth["labelled"]]
    return CohortSummary(
        out_dir=str(out),
        size=size,
        seed=seed,
        n_patients=len(truth),
        n_slides=len(slides),
        n_labelled=len(labelled),
        n_responders=int(labelled["label_true"].sum()),
        n_test=len(test),
        n_with_expression=int(truth["has_expression"].sum()),
        n_rendered=int((~slides["reused"]).sum()),
        n_reused=int(slides["reused"].sum()),
        seconds=0.0,
        auroc_bayes_test=auroc(y, test["p_response"].to_numpy()),
        auroc_image_only_test=auroc(y, test["p_image_only"].to_numpy()),
        auroc_expression_only_test=auroc(y, test["p_expression_only"].to_numpy()),
        auroc_bayes_population=pop["bayes"],
        auroc_image_only_population=pop["image_only"],
        auroc_expression_only_population=pop["expression_only"],
        **_survival_summary(truth, settings),
    )


def generate_cohort(
    out_dir: str | os.PathLike[str],
    size: str = "default",
    seed: int = 0,
    workers: int | None = None,
    *,
    config: DictConfig | dict[str, Any] | None = None,
    progress: bool = True,
    **overrides: Any,
) -> CohortSummary:
    """Generate (or complete) a synthetic cohort in ``out_dir``; deterministic given the seed.

    ``overrides`` are settings keys (dotted or nested), e.g. ``n_patients=40`` or
    ``**{"truth.effects.intercept": -1.0}``. Slides whose files are complete and match the
    current settings are reused, so an interrupted run can simply be re-run.
    """
    t0 = time.perf_counter()
    settings = resolve_settings(size, config, overrides)
    seed = int(seed)
    out = Path(out_dir)
    for sub in ("", "slides", "signal", "cells"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    workers = int(workers) if workers else (os.cpu_count() or 1)

    n = int(settings["n_patients"])
    arms = dict(settings["cohort"]["treatments"])
    truth = sample_truth(
        n, seed, settings["truth"], arms,
        rng=np.random.default_rng(np.random.SeedSequence([seed, _TRUTH_STREAM])),
    )  # fmt: skip
    truth.index = pd.Index([f"P{i + 1:04d}" for i in range(n)], name="patient_id")
    rng = np.random.default_rng(np.random.SeedSequence([seed, _COHORT_STREAM]))
    site, n_slides, unlabelled, no_expr, split = _assign_patients(truth, settings, rng)
    truth["site"], truth["n_slides"], truth["split"] = site, n_slides, split
    truth["labelled"], truth["has_expression"] = ~unlabelled, ~no_expr

    jobs = _plan_slides(truth, settings, seed, out)
    _remove_stale(out, {j.slide_id for j in jobs})
    slides = pd.DataFrame(_run_jobs(jobs, min(workers, max(len(jobs), 1)), progress))
    if settings.get("survival"):  # own stream: the images and every other column are unchanged
        rng_s = np.random.default_rng(np.random.SeedSequence([seed, _SURVIVAL_STREAM]))
        truth = truth.join(sample_survival(truth, settings["truth"], settings["survival"], rng_s))
    _write_tables(out, truth, slides, settings, seed)
    summary = _summarise(out, size, seed, truth, slides, settings)
    summary.seconds = round(time.perf_counter() - t0, 2)
    nan_free = {
        k: (None if isinstance(v, float) and v != v else v) for k, v in summary.to_dict().items()
    }
    payload = {"summary": nan_free, "settings": settings}
    atomic.write_text(out / "synth_summary.json", json.dumps(payload, indent=1, default=str))
    return summary
