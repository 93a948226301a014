"""The plain values of ``configs/predict.yaml`` (:class:`PredictOptions`) and what every patient of a
run shares (:class:`PatientContext`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from immunoplex.errors import ConfigError
from immunoplex.inference.inputs import (
    ExpressionInputs,
)
from immunoplex.inference.predictor import Predictor
from immunoplex.tiles.cache import TileCache

RESULT_VERSION = 1
#: ``prefetch=auto`` overlaps slide preparation and tile reading with encoding from this many
#: cores up (BENCHMARKS.md section 6: the measurement that chose it).
AUTO_PREFETCH_MIN_CORES = 2


# ----------------------------------------------------------------------------- options
@dataclass
class PredictOptions:
    """Plain values of ``configs/predict.yaml``."""

    ckpt: str
    input: str | None
    out_dir: str
    expression: str | None = None
    clinical: str | None = None
    # a patient feature table for models trained with data.features (null: run the checkpoint's
    # cell stage on the slides, when its table came from immunoplex-cells)
    features_table: str | None = None
    treatment: str | None = None
    cohort: str | None = None
    mpp: float | None = None
    channel_names: str | None = None  # names file for slides whose files name no channels
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
    # slide k+1 prepared (tissue, statistics) and the next tile batch read in background threads
    # while slide k is encoded: true | false | auto (on with >= AUTO_PREFETCH_MIN_CORES cores)
    prefetch: Any = "auto"

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
        if d.get("prefetch", "auto") not in ("auto", True, False):
            raise ConfigError(
                f"predict: prefetch must be auto, true or false, got {d['prefetch']!r}"
            )
        if d.get("mpp") is not None and not float(d["mpp"]) > 0:
            raise ConfigError(f"predict: mpp must be > 0, got {d['mpp']}")
        return cls(**d)

    def overlap(self, cores: int | None = None) -> bool:
        """``prefetch`` resolved: whether streamed slides are prepared ahead and tile batches read
        in background threads (``auto``: when the host has ``AUTO_PREFETCH_MIN_CORES`` cores or
        more, ``cores`` defaulting to ``os.cpu_count()``). Predictions are the same either way."""
        if self.prefetch == "auto":
            n = cores if cores is not None else (os.cpu_count() or 1)
            return n >= AUTO_PREFETCH_MIN_CORES
        return bool(self.prefetch)

    def key_fields(self) -> dict[str, Any]:
        """Options that change a patient's result (part of the resume key)."""
        return {
            "treatment": self.treatment,
            "mpp": self.mpp,
            "channel_names": self.channel_names,
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
    prefetch: Any = None  # inference.prefetch.SlidePrefetcher: streamed slides prepared ahead
    features: Any = None  # data.feature_table.FeatureTable filled for the run's patients
    overlap: bool = True  # tile batches read in a background thread (``PredictOptions.overlap``)
