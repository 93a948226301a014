"""Validation of composed CLI configs: each bad value is a ConfigError naming its key.

One small validator per app (``validate_train``, ``validate_predict``...), run by
:func:`immunoplex.cli.common.hydra_app` before Hydra creates a run directory and again inside
the task. Keys absent from the config (a custom config tree) are skipped.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from immunoplex.errors import CheckpointError, ConfigError

_ABSENT = object()


def _get(cfg: Any, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def check_int(
    cfg: Any,
    key: str,
    minimum: int | None = None,
    *,
    nullable: bool = False,
    also: tuple[int, ...] = (),
) -> None:
    """``key`` is an integer >= ``minimum`` (or one of ``also``, or null when ``nullable``)."""
    value = _get(cfg, key)
    if value is _ABSENT or (nullable and value is None) or (_is_int(value) and value in also):
        return
    if not _is_int(value) or (minimum is not None and value < minimum):
        want = "an integer" + (f" >= {minimum}" if minimum is not None else "")
        want += "".join(f" or {a}" for a in also) + (" or null" if nullable else "")
        raise ConfigError(f"{key}: must be {want}, got {_shown(value)}")


def check_number(
    cfg: Any,
    key: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    nullable: bool = False,
    words: tuple[str, ...] = (),
) -> None:
    """``key`` is a number in the given range (or one of ``words``, or null when ``nullable``)."""
    value = _get(cfg, key)
    if value is _ABSENT or (nullable and value is None) or value in words:
        return
    ok = _is_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        rng = []
        if low is not None:
            rng.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            rng.append(f"{'<' if high_open else '<='} {high:g}")
        want = "a number" + (" " + " and ".join(rng) if rng else "")
        want += "".join(f" or {w!r}" for w in words) + (" or null" if nullable else "")
        raise ConfigError(f"{key}: must be {want}, got {_shown(value)}")


def check_choice(cfg: Any, key: str, choices: tuple[Any, ...]) -> None:
    value = _get(cfg, key)
    if value is _ABSENT or value in choices:
        return
    raise ConfigError(f"{key}: must be one of {', '.join(map(str, choices))}, got {_shown(value)}")


def check_required(cfg: Any, key: str, example: str, *, nullable: bool = False) -> None:
    """``key`` is set (not ``???``; not null or empty unless ``nullable``)."""
    try:
        value = _get(cfg, key)
    except MissingMandatoryValue:
        value = None
        nullable = False
    if value is not _ABSENT and not nullable and value in (None, ""):
        raise ConfigError(f"{key}: a value is required, e.g. {example}")


def _writable_dir(path: Path) -> bool:
    if not os.access(path, os.W_OK | os.X_OK):
        return False
    try:  # os.access is not enough for root or read-only mounts: try, and remove at once
        fd, name = tempfile.mkstemp(prefix=".immunoplex-write-check-", dir=path)
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def check_out_dir(value: Any, key: str) -> None:
    """An output directory that exists as a writable directory or can be created."""
    if value in (None, ""):
        return
    path = Path(str(value)).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}: {path} exists and is not a directory")
    anc = path
    while not anc.exists():
        if anc.parent == anc:
            break
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise ConfigError(f"{key}: cannot create {path}: {anc} is not a directory")
    if not _writable_dir(anc):
        what = f"{path} is not writable" if anc == path else f"cannot create {path} in {anc}"
        raise ConfigError(f"{key}: {what} (permission denied or read-only)")


def check_out_key(cfg: Any, key: str = "out_dir") -> None:
    value = _get(cfg, key)
    if value is not _ABSENT:
        check_out_dir(value, key)


def check_resume_checkpoint(cfg: Any, key: str = "ckpt_path") -> None:
    """A resume checkpoint is an existing file that ``torch.load(weights_only=True)`` accepts."""
    value = _get(cfg, key)
    if value is _ABSENT or value in (None, ""):
        return
    path = Path(str(value))
    if not path.is_file():
        raise CheckpointError(f"{key}: {path}: checkpoint not found")
    import pickle

    import torch

    with open(path, "rb") as fh:
        is_zip = fh.read(4) == b"PK\x03\x04"  # torch.save's format: mmap reads no tensor data
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            reason = "refused: it holds objects other than tensors and plain data"
        else:
            reason = "not a PyTorch checkpoint"
        raise CheckpointError(f"{key}: {path}: {reason}") from None
    except Exception as err:  # weights_only: no code ran; whatever broke, the file is bad
        reason = (str(err).splitlines() or [""])[0] or type(err).__name__
        raise CheckpointError(f"{key}: {path}: not a PyTorch checkpoint ({reason})") from None


# ---------------------------------------------------------------------------------------------
# per app


def check_tiling(cfg: Any) -> None:
    """The ``tiling`` group (configs/tiling), shared by training, embedding and immunoplex-tile."""
    check_int(cfg, "tiling.tile_size", 1)
    check_number(cfg, "tiling.mpp", 0, low_open=True)
    check_int(cfg, "tiling.stride", 1, nullable=True)
    check_number(cfg, "tiling.min_tissue", 0, 1)
    check_number(cfg, "tiling.mask_mpp", 0, low_open=True, nullable=True)
    check_int(cfg, "tiling.mask_max_side", 1)
    check_number(cfg, "tiling.smooth_um", 0)
    check_number(cfg, "tiling.min_object_um2", 0)
    check_number(cfg, "tiling.max_hole_um2", 0)


def validate_train(cfg: Any) -> None:
    """``configs/train.yaml`` (immunoplex-train, -cv, -embed)."""
    check_int(cfg, "seed")
    check_int(cfg, "trainer.max_epochs", 1, also=(-1,))
    check_int(cfg, "trainer.min_epochs", 0, nullable=True)
    check_int(cfg, "data.bag_size", 1, nullable=True)  # null: every tile (experiment=cell_features)
    check_int(cfg, "data.batch_size", 1)
    check_int(cfg, "data.global_batch_size", 1, nullable=True)
    check_int(cfg, "data.num_workers", 0)
    check_int(cfg, "data.prep_workers", 1, nullable=True)
    check_int(cfg, "data.max_eval_tiles", 1, nullable=True)
    check_tiling(cfg)
    check_choice(cfg, "data.on_bad_slide", ("error", "skip"))
    check_choice(cfg, "data.split.mode", ("fixed", "kfold", "nested", "loco"))
    check_int(cfg, "data.split.n_folds", 2)
    check_int(cfg, "data.split.n_inner_folds", 2)
    check_int(cfg, "data.split.fold", 0)
    check_int(cfg, "data.split.inner_fold", 0)
    # 0 / null: no cross-fitting; 1 would silently be none
    check_int(cfg, "data.split.crossfit_folds", 2, nullable=True, also=(0,))
    check_number(cfg, "data.split.val_fraction", 0, 1, low_open=True, high_open=True)
    mode = _get(cfg, "data.split.mode")
    if mode in ("kfold", "nested"):
        fold, n = _get(cfg, "data.split.fold"), _get(cfg, "data.split.n_folds")
        if _is_int(fold) and _is_int(n) and fold >= n:
            raise ConfigError(f"data.split.fold: must be < data.split.n_folds={n}, got {fold}")
    check_number(cfg, "module.pos_weight", 0, low_open=True, nullable=True, words=("auto",))
    check_number(cfg, "module.threshold", 0, 1)
    check_number(cfg, "module.conformal_alpha", 0, 1, low_open=True, high_open=True)
    check_choice(cfg, "module.calibration.temperature", ("test", "fit", "none"))
    check_number(cfg, "module.calibration.level", 0, 1, low_open=True, high_open=True)
    check_resume_checkpoint(cfg)
    shard, num = _get(cfg, "embed.shard"), _get(cfg, "embed.num_shards")
    if shard is not _ABSENT:
        check_int(cfg, "embed.shard", 0)
    if num is not _ABSENT:
        check_int(cfg, "embed.num_shards", 1)
        if _is_int(shard) and shard >= num:
            raise ConfigError(f"embed.shard: must be < embed.num_shards={num}, got {shard}")


def validate_predict(cfg: Any) -> None:
    """``configs/predict.yaml``."""
    check_required(cfg, "ckpt", "ckpt=runs/train/<run>/model.ckpt")
    check_required(cfg, "input", "input=SLIDE|FOLDER|MANIFEST (or input=null)", nullable=True)
    check_required(cfg, "out_dir", "out_dir=out/predict")
    check_out_key(cfg)
    check_int(cfg, "chunk_size", 1)
    check_int(cfg, "top_k", 1)
    check_int(cfg, "heatmap_max_side", 1)
    check_int(cfg, "ig_steps", 1)
    check_int(cfg, "top_genes", 0)
    check_number(cfg, "mpp", 0, low_open=True, nullable=True)
    check_choice(cfg, "on_bad_slide", ("error", "skip"))
    check_choice(cfg, "input_kind", ("auto", "slide", "folder", "manifest"))
    check_choice(cfg, "prefetch", ("auto", True, False))
    for key in ("heatmaps", "explain", "counterfactual", "allow_missing_genes", "progress"):
        check_choice(cfg, key, (True, False))


def validate_eval(cfg: Any) -> None:
    """``configs/eval.yaml``."""
    check_required(cfg, "predictions", "predictions=runs/train/<run>/predictions_test.csv")
    check_out_key(cfg)
    check_int(cfg, "n_boot", 0)
    check_int(cfg, "ece_bins", 1)
    check_int(cfg, "seed")
    check_int(cfg, "roc_band_boot", 1, nullable=True)
    check_number(cfg, "threshold", 0, 1)
    check_number(cfg, "ci_level", 0, 1, low_open=True, high_open=True)
    check_choice(cfg, "intersect", (True, False))


def validate_synth(cfg: Any) -> None:
    """``configs/synth.yaml``."""
    check_required(cfg, "out_dir", "immunoplex-synth out_dir=data/synth")
    check_out_key(cfg)
    check_int(cfg, "seed")
    check_int(cfg, "workers", 1, nullable=True)
    check_int(cfg, "n_patients", 1, nullable=True)
    check_int(cfg, "slide_px", 16, nullable=True)
    sizes = _get(cfg, "sizes")
    if sizes is not _ABSENT and sizes is not None:
        check_choice(cfg, "size", tuple(sizes.keys()))


def validate_tile(cfg: Any) -> None:
    """``configs/tile.yaml``."""
    check_required(cfg, "manifest", "manifest=cohort/manifest.csv")
    check_required(cfg, "out_dir", "out_dir=cohort/tiles")
    check_out_key(cfg)
    check_int(cfg, "workers", 1, nullable=True)
    check_number(cfg, "mpp", 0, low_open=True, nullable=True)
    check_tiling(cfg)
    check_int(cfg, "qc.max_size", 1)
