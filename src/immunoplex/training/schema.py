"""The checkpoint schema in one place: what ``checkpoint["immunoplex"]`` holds, written and read.

Training writes it (:meth:`ResponseModule.on_save_checkpoint` through :func:`write_meta`, and the
calibration added after training through :func:`set_calibration`); prediction reads it back
through :func:`read_meta`, which fills the defaults of older checkpoints and refuses a newer
schema. ``panel_agnostic`` is stored (older checkpoints: recognised from the encoder's class).
Loading the file safely and rebuilding the model stay in :mod:`immunoplex.training.checkpoint`.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import asdict, dataclass, field
from typing import Any

from immunoplex.errors import CheckpointError
from immunoplex.training.checkpoint import SCHEMA_VERSION, software_versions

DEFAULT_LABEL_NAMES = ["non-responder", "responder"]


@dataclass
class CheckpointMeta:
    """``checkpoint["immunoplex"]``."""

    model: dict[str, Any]  # the model config (``_target_`` + arguments)
    dims: dict[str, Any] = field(default_factory=dict)  # the data's dimensions, merged into it
    data: dict[str, Any] = field(default_factory=dict)  # panel, tiling, genes, clinical...
    config: dict[str, Any] = field(default_factory=dict)  # the resolved training config
    label_names: list[str] = field(default_factory=lambda: list(DEFAULT_LABEL_NAMES))
    threshold: float = 0.5
    calibration: dict[str, Any] | None = None
    panel_agnostic: bool | None = None  # None: an older checkpoint that did not say
    versions: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_panel_agnostic(model: Any) -> bool:
    """Whether a model reads any panel (a marker-token encoder)."""
    from immunoplex.models.marker_encoder import MarkerEncoder

    return isinstance(getattr(model, "encoder", None), MarkerEncoder)


def write_meta(checkpoint: MutableMapping[str, Any], meta: CheckpointMeta) -> None:
    """Store ``meta`` (with the running software's versions) as ``checkpoint["immunoplex"]``."""
    meta.versions = meta.versions or software_versions()
    meta.schema_version = SCHEMA_VERSION
    checkpoint["immunoplex"] = meta.to_dict()


def set_calibration(checkpoint: MutableMapping[str, Any], calibration: Mapping[str, Any]) -> None:
    """Add the post-training calibration to a written checkpoint."""
    checkpoint["immunoplex"]["calibration"] = dict(calibration)


def read_meta(checkpoint: Mapping[str, Any], source: str = "checkpoint") -> CheckpointMeta:
    """``checkpoint["immunoplex"]`` as a :class:`CheckpointMeta`, older schemas' defaults filled
    (``panel_agnostic`` is then unknown: see :func:`is_panel_agnostic`); a newer schema is a
    :class:`CheckpointError`."""
    raw = checkpoint.get("immunoplex")
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{source}: not an immunoplex checkpoint (no 'immunoplex' section)")
    version = int(raw.get("schema_version", 0) or 0)
    if version > SCHEMA_VERSION:
        raise CheckpointError(
            f"{source}: checkpoint schema {version} is newer than this immunoplex "
            f"({SCHEMA_VERSION}); upgrade immunoplex"
        )
    return CheckpointMeta(
        model=dict(raw.get("model") or {}),
        dims=dict(raw.get("dims") or {}),
        data=dict(raw.get("data") or {}),
        config=dict(raw.get("config") or {}),
        label_names=list(raw.get("label_names") or DEFAULT_LABEL_NAMES),
        threshold=float(raw.get("threshold", 0.5)),
        calibration=dict(raw["calibration"]) if raw.get("calibration") else None,
        panel_agnostic=None if raw.get("panel_agnostic") is None else bool(raw["panel_agnostic"]),
        versions=dict(raw.get("versions") or {}),
        schema_version=version,
    )
