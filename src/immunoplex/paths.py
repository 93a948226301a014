"""Where the shipped Hydra configs live, for any way the package is installed."""

from __future__ import annotations

import os
from pathlib import Path

_PKG_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    """Absolute path of the configs directory.

    Order: ``$IMMUNOPLEX_CONFIG_DIR``; the repository's ``configs/`` (editable install or a run
    from a checkout); the copy packaged inside the wheel (``immunoplex/configs``).
    """
    env = os.environ.get("IMMUNOPLEX_CONFIG_DIR")
    if env:
        return Path(env).resolve()
    repo = _PKG_DIR.parent.parent / "configs"
    if (repo / "train.yaml").is_file() or (repo / "synth.yaml").is_file():
        return repo
    return _PKG_DIR / "configs"


def repo_root() -> Path | None:
    """The repository root when running from a checkout, else None."""
    root = _PKG_DIR.parent.parent
    return root if (root / "pyproject.toml").is_file() else None
