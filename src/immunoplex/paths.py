"""Where the shipped Hydra configs live, for any way the package is installed.

One source of truth: the repository's top-level ``configs/``. ``src/immunoplex/configs`` is a
symbolic link to it (``../../configs``), so the configs are package data: a wheel, a wheel built
from the sdist and an editable install all see them at ``immunoplex/configs`` (setuptools copies
the files behind the link into the sdist and the wheel).
"""

from __future__ import annotations

import os
from pathlib import Path

_PKG_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    """Absolute path of the configs directory.

    Order: ``$IMMUNOPLEX_CONFIG_DIR``; the package's ``immunoplex/configs`` (the copy inside an
    installed wheel, or in a checkout the link to ``configs/``, resolved); the repository's
    ``configs/`` (a checkout made without symbolic links, e.g. git's ``core.symlinks=false``).
    """
    env = os.environ.get("IMMUNOPLEX_CONFIG_DIR")
    if env:
        return Path(env).resolve()
    packaged = _PKG_DIR / "configs"
    if (packaged / "train.yaml").is_file():
        return packaged.resolve()
    repo = _PKG_DIR.parent.parent / "configs"
    if (repo / "train.yaml").is_file():
        return repo
    return packaged


def repo_root() -> Path | None:
    """The repository root when running from a checkout, else None."""
    root = _PKG_DIR.parent.parent
    return root if (root / "pyproject.toml").is_file() else None
