"""The checkpoint schema: what a checkpoint carries and how it is (safely) read back.

A checkpoint is Lightning's dict plus ``checkpoint["immunoplex"]``: the resolved config, the panel
and aliases, tiling and intensity parameters, genes and expression normalisation, clinical
statistics, treatments, label names, calibration and software versions. Loading never executes
code from the file: ``torch.load(weights_only=True)`` and models are rebuilt only from
``_target_``s inside the project's own namespace.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from immunoplex.errors import CheckpointError
from immunoplex.utils.atomic import atomic_path, fsync_file

SCHEMA_VERSION = 1
ALLOWED_TARGET_PREFIXES = ("immunoplex.",)


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
    """Refuse any ``_target_`` outside the project's namespace (no arbitrary callables)."""
    if isinstance(node, Mapping):
        target = node.get("_target_")
        if target is not None and not str(target).startswith(ALLOWED_TARGET_PREFIXES):
            raise CheckpointError(
                f"{where}: _target_ {target!r} is not an immunoplex class; refusing to build it"
            )
        for key, value in node.items():
            check_targets(value, f"{where}.{key}")
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            check_targets(value, f"{where}[{i}]")


def build_model(model_cfg: Mapping[str, Any], dims: Mapping[str, Any]) -> torch.nn.Module:
    """Instantiate a model config (allow-listed targets only) with the data's dimensions."""
    from hydra.utils import instantiate

    check_targets(model_cfg)
    node = OmegaConf.create(dict(model_cfg))
    return instantiate(node, **dict(dims), _convert_="all")


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
    return ckpt


def model_from_checkpoint(ckpt: Mapping[str, Any]) -> torch.nn.Module:
    """Rebuild the network from a loaded checkpoint and load its weights (strict)."""
    meta = ckpt["immunoplex"]
    model = build_model(meta["model"], meta["dims"])
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        reason = str(err).strip().splitlines()[-1].strip()
        raise CheckpointError(f"checkpoint weights do not fit the model ({reason[:200]})") from err
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint weights do not fit the model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    model.eval()
    return model
