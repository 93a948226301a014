"""Resolve configs/synth.yaml + a size preset + overrides into one plain settings dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from immunoplex.errors import ConfigError
from immunoplex.paths import config_dir

#: Keys of the app config that are run arguments, not generator settings.
RUN_KEYS = ("out_dir", "size", "seed", "workers", "progress", "hydra", "defaults")


def load_synth_config(path: Path | None = None) -> DictConfig:
    """The shipped ``synth.yaml`` (without Hydra's own keys)."""
    path = path or (config_dir() / "synth.yaml")
    if not path.is_file():
        raise ConfigError(f"{path}: synth config not found")
    cfg = OmegaConf.load(path)
    for key in ("hydra", "defaults"):
        cfg.pop(key, None)
    return cfg


def resolve_settings(
    size: str = "default",
    config: DictConfig | dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Base settings, merged with ``sizes[size]``, top-level non-null knobs, then ``overrides``.

    ``overrides`` keys may be dotted (``"truth.effects.intercept": -1``) or nested dicts.
    """
    base = load_synth_config() if config is None else OmegaConf.create(config)
    base = OmegaConf.create(OmegaConf.to_container(base, resolve=False))
    for key in RUN_KEYS:
        base.pop(key, None)
    sizes = base.pop("sizes", {})
    if size not in sizes:
        raise ConfigError(f"synth size {size!r} unknown; choose one of {sorted(sizes)}")
    knobs = {k: base.pop(k) for k in ("n_patients", "slide_px") if k in base}
    merged = OmegaConf.merge(base, sizes[size])
    for k, v in knobs.items():
        if v is not None:
            merged[k] = v
    for key, value in (overrides or {}).items():
        OmegaConf.update(merged, key, value, merge=True, force_add=True)
    out = OmegaConf.to_container(merged, resolve=True)
    assert isinstance(out, dict)
    out["size"] = size
    _validate(out)
    return out


def _validate(s: dict[str, Any]) -> None:
    n_ch = len(s["image"]["panel"])
    for site, gains in s["sites"].items():
        if len(gains) != n_ch:
            raise ConfigError(f"synth sites.{site}: {len(gains)} gains for {n_ch} channels")
    for site in s["cohort"]["sites"]:
        if site not in s["sites"]:
            raise ConfigError(f"synth cohort.sites.{site}: no stain gains under sites")
    if int(s["n_patients"]) < 4:
        raise ConfigError("synth n_patients must be at least 4")
    if int(s["slide_px"]) < 64:
        raise ConfigError("synth slide_px must be at least 64")
    for key in ("tissue_background", "af_spectrum"):
        if len(s["render"][key]) != n_ch:
            raise ConfigError(f"synth render.{key}: needs one value per channel ({n_ch})")
