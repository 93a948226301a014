"""Atomic file writes: a temporary file in the same directory, then ``os.replace``.

An interrupted run therefore never leaves a truncated file under a final name that a re-run
would trust.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(fileobj)`` on a temporary sibling of ``path`` and rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def save_npy(path: Path, array: np.ndarray) -> None:
    def _write(fh: IO[bytes]) -> None:
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        fh.write(buf.getvalue())

    atomic_write(path, _write)


def write_csv(path: Path, frame: Any, **kwargs: Any) -> None:
    """Write a pandas DataFrame as CSV atomically (``index=False`` unless given)."""
    kwargs.setdefault("index", False)
    text = frame.to_csv(**kwargs)
    write_text(path, text)
