"""File-system safe names for ids (per-slide and per-patient output folders)."""

from __future__ import annotations

import re


def safe_name(name: object) -> str:
    """``name`` with every run of characters outside ``[A-Za-z0-9._-]`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "unnamed"
