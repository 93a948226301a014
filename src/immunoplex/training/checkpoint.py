"""The checkpoint schema: what a checkpoint carries and how it is (safely) read back.

A checkpoint is Lightning's dict plus ``checkpoint["immunoplex"]``: the resolved config, the panel
and aliases, tiling and intensity parameters, genes and expression normalisation, clinical
statistics, treatments, label names, calibration and software versions. Loading never executes
code from the file: ``torch.load(weights_only=True)``, and the model is rebuilt only from the
closed registry of model classes (:mod:`immunoplex.models.registry`): every ``_target_`` at every
depth must be exactly a registry key, and the classes are built from the registry's own class
objects, never imported by name (Hydra's ``instantiate`` never sees file data).
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from immunoplex.errors import CheckpointError
from immunoplex.models.registry import MODEL_CLASSES, instantiate_model
from immunoplex.models.registry import check_targets as _check_registry
from immunoplex.utils.atomic import atomic_path, fsync_file

SCHEMA_VERSION = 1
__all__ = [
    "MODEL_CLASSES",
    "SCHEMA_VERSION",
    "atomic_save",
    "build_model",
    "check_targets",
    "load_checkpoint",
    "model_from_checkpoint",
]


def software_versions() -> dict[str, str]:
    import lightning
    import numpy
    import torchvision

    import immunoplex

    return {
        "immunoplex": immunoplex.__version__,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "lightning": lightning.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def check_targets(node: Any, where: str = "model") -> None:
    """Refuse a model config unless every ``_target_`` in it (mappings and lists, any depth) is
    exactly a registered model class; one-line :class:`CheckpointError` naming the place."""
    _check_registry(node, where, CheckpointError)


def _plain(node: Any) -> Any:
    """OmegaConf nodes (a training run's own composed config) -> plain containers."""
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    if isinstance(node, Mapping):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_plain(v) for v in node]
    return node


def build_model(
    model_cfg: Mapping[str, Any], dims: Mapping[str, Any], where: str = "model"
) -> torch.nn.Module:
    """Build a model config with the data's dimensions, from registered model classes only."""
    if not isinstance(dims, Mapping):
        raise CheckpointError(f"{where}: dims is not a mapping")
    model = instantiate_model(
        _plain(model_cfg), where=where, error=CheckpointError, **_plain(dict(dims))
    )
    if not isinstance(model, torch.nn.Module):  # e.g. a top-level ``_partial_: true``
        raise CheckpointError(f"{where}: the model config does not build a model")
    return model


def atomic_save(obj: Any, path: str | Path) -> Path:
    """torch.save to a temporary sibling (:func:`atomic_path`), then rename over the target."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
        fsync_file(tmp)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint without executing code from it; check it is an immunoplex one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle errors come in many types
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: refused or unreadable checkpoint ({reason[:200]})") from err
    if not isinstance(ckpt, dict) or "immunoplex" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not an immunoplex checkpoint (no 'immunoplex' section)")
    meta = ckpt["immunoplex"]
    if not isinstance(meta, Mapping):
        raise CheckpointError(f"{path}: the 'immunoplex' section is not a mapping")
    if not isinstance(ckpt["state_dict"], Mapping):
        raise CheckpointError(f"{path}: state_dict is not a mapping of tensors")
    model_cfg = meta.get("model")
    if not isinstance(model_cfg, Mapping) or "_target_" not in model_cfg:
        raise CheckpointError(f"{path}: the model config is not a mapping with a _target_")
    if not isinstance(meta.get("dims", {}), Mapping):
        raise CheckpointError(f"{path}: dims is not a mapping")
    if meta.get("schema_version", 0) > SCHEMA_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint schema {meta.get('schema_version')} is newer than this "
            f"immunoplex ({SCHEMA_VERSION}); upgrade immunoplex"
        )
    check_targets(model_cfg, f"{path}: model")
    check_targets(meta.get("dims", {}), f"{path}: dims")  # dims are merged into the model config
    return ckpt


def model_from_checkpoint(
    ckpt: Mapping[str, Any], path: str | Path | None = None
) -> torch.nn.Module:
    """Rebuild the network from a loaded checkpoint (registry classes only) and load its weights
    (strict); ``path`` names the file in errors."""
    meta = ckpt["immunoplex"]
    src = f"{path}: " if path is not None else ""
    where = f"{src}model"
    model = build_model(meta["model"], meta.get("dims", {}), where)
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        reason = str(err).strip().splitlines()[-1].strip()
        raise CheckpointError(
            f"{src}checkpoint weights do not fit the model ({reason[:200]})"
        ) from err
    if missing or unexpected:
        raise CheckpointError(
            f"{src}checkpoint weights do not fit the model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    model.eval()
    return model
