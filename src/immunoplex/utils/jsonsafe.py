"""numpy/pandas/pathlib values -> plain JSON values (the one sanitiser)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def to_json(obj: Any) -> Any:
    """Recursively convert to JSON-safe Python values: arrays to lists, numpy scalars to Python
    scalars, non-finite floats to None, paths to strings, mapping keys to strings."""
    if isinstance(obj, Mapping):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj
