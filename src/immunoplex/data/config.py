"""The data module's plain configuration (``DataConfig``) and its construction from Hydra nodes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from immunoplex.expression.normalise import ExpressionNormalizer
from immunoplex.io.panel import default_aliases
from immunoplex.tiles.params import TilingParams


@dataclass
class SplitConfig:
    mode: str = "fixed"
    fold: int = 0
    n_folds: int = 5
    inner_fold: int = 0
    n_inner_folds: int = 4
    test_cohort: str | None = None
    val_fraction: float = 0.2
    require_test: bool = True
    # >= 2: fit on train + val, calibrated out of fold (training.crossfit); crossfit_fold is set
    # by the cross-fit driver: k (a fold) or -1 (the final fit)
    crossfit_folds: int = 0
    crossfit_fold: int | None = None


@dataclass
class DataConfig:
    """Plain values describing where the cohort is and how to turn it into patient bags."""

    manifest: str
    expression: str | None = None
    cache_dir: str = "cache"
    markers: Sequence[str] = ("DAPI", "PanCK", "CD8", "CD68", "STAB1", "CD31", "CD66b")
    aliases: dict[str, list[str]] = field(default_factory=dict)
    required_markers: Sequence[str] | None = None  # None: all markers required
    tile_size: int = 32
    mpp: float = 2.0
    min_tissue: float = 0.5
    # Every TilingParams field (the configs/tiling group); when set it wins over the three above.
    tiling: Mapping[str, Any] | None = None
    intensity_low: float = 1.0
    intensity_high: float = 99.5
    # A method name, or a configs/expression_norm mapping (method, log, min_cohort_size, small_cohort).
    expression_norm: str | Mapping[str, Any] = "zscore_cohort"
    # With a method name: a cohort with < 3 training samples uses "global" statistics or is an "error".
    expression_small_cohort: str = "global"
    clinical_columns: Sequence[str] = ()
    treatments: Sequence[str] | None = None
    split: SplitConfig = field(default_factory=SplitConfig)
    bag_size: int = 64
    max_eval_tiles: int | None = None
    batch_size: int = 8  # per device
    global_batch_size: int | None = None  # if set: per-device batch = global // world size
    num_workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = False
    balanced_sampling: bool = False
    prep_workers: int | None = None
    on_bad_slide: str = "error"  # "error" or "skip" (skipped slides are reported)
    embeddings: dict[str, Any] = field(default_factory=dict)  # two-stage mode, see embed.py
    features: dict[str, Any] = field(default_factory=dict)  # patient table, data/feature_table.py
    seed: int = 0
    task: str = "binary"  # binary (response) | survival (time to event) | both; data/survival.py
    survival: dict[str, Any] = field(default_factory=dict)  # endpoint + endpoints: column names


def tiling_params(cfg: DataConfig) -> TilingParams:
    """The tiling of ``cfg``: its ``tiling`` mapping, else tile_size/mpp/min_tissue."""
    if cfg.tiling is not None:
        return TilingParams.from_dict(dict(cfg.tiling))
    return TilingParams(tile_size=cfg.tile_size, mpp=cfg.mpp, min_tissue=cfg.min_tissue)


def expression_normalizer(cfg: DataConfig) -> ExpressionNormalizer:
    """An unfitted normaliser: a configs/expression_norm mapping, or a method name."""
    spec = cfg.expression_norm
    if isinstance(spec, Mapping):
        return ExpressionNormalizer.from_config(dict(spec))
    return ExpressionNormalizer(method=str(spec), small_cohort=cfg.expression_small_cohort)


def user_aliases(aliases: Mapping[str, Any] | None) -> dict[str, list[str]]:
    """The entries of ``aliases`` that add to the shipped table (configs/panel/default.yaml).

    ``panel.aliases`` holds the shipped table plus the user's entries; the Panel always merges the
    shipped table back in, so only the additions are kept (in tile-cache keys and checkpoints).
    """
    shipped = default_aliases()
    out: dict[str, list[str]] = {}
    for key, syns in (aliases or {}).items():
        names = [str(s) for s in (syns or [])]
        if str(key) not in shipped or names != shipped[str(key)]:
            out[str(key)] = names
    return out


def data_config_from(cfg: Any, seed: int, root: Path | None = None) -> DataConfig:
    """DataConfig from a Hydra/OmegaConf node (or dict).

    In configs/train.yaml, ``data.markers``/``aliases``/``required_markers`` interpolate the
    ``panel`` group, ``data.tiling`` the ``tiling`` group and ``data.expression_norm`` the
    ``expression_norm`` group; any of them may also be set under ``data`` directly.
    """
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
    assert isinstance(d, dict)
    # root and truth are read by the CLI/summary, not by the data module.
    d = {k: v for k, v in d.items() if not str(k).startswith("_") and k not in ("root", "truth")}
    split = SplitConfig(**(d.pop("split", None) or {}))
    if d.get("aliases") is not None:
        d["aliases"] = user_aliases(d["aliases"])
    if d.get("tiling") is not None:
        params = TilingParams.from_dict(dict(d["tiling"]))  # unknown keys are a ConfigError
        d.update(tiling=params.to_dict(), tile_size=params.tile_size, mpp=params.mpp)
        d["min_tissue"] = params.min_tissue
    return DataConfig(split=split, seed=seed, **d)
