"""Atomic file writes: a uniquely named temporary sibling, then ``os.replace``.

An interrupted run never leaves a truncated file under a final name that a re-run would trust, and
two runs writing the same target never share a temporary name. Files get the mode the umask gives
(``mkstemp``'s 0600 would make shared outputs unreadable to the group).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from immunoplex.utils.jsonsafe import to_json

TMP_SUFFIX = ".tmp"


def file_mode() -> int:
    """``0o666`` less the process umask: the mode ``open()`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def is_temporary(path: Path) -> bool:
    """True for a temporary sibling this module creates (hidden, ``.tmp`` before any suffix)."""
    return path.name.startswith(".") and f"{TMP_SUFFIX}" in path.name


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path`` with the same suffix (writers such as tifffile
    or matplotlib pick the format from it); rename it over ``path`` if the block succeeds, remove
    it if it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".ome.tif") else path.suffix
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    fd, name = tempfile.mkstemp(prefix=f".{stem}.", suffix=f"{TMP_SUFFIX}{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, file_mode())
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a written file to disk (before it is renamed into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(fileobj)`` on a temporary sibling of ``path``, fsync, and rename into place."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 1) -> Path:
    """JSON with numpy/pandas values made JSON-safe (NaN -> null), see :func:`to_json`."""
    return write_text(path, json.dumps(to_json(obj), indent=indent))


def save_npy(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return write_bytes(path, buf.getvalue())


def write_csv(path: str | os.PathLike[str], frame: Any, **kwargs: Any) -> Path:
    """A pandas DataFrame as CSV (``index=False`` unless given)."""
    kwargs.setdefault("index", False)
    return write_text(path, frame.to_csv(**kwargs))


def write_parquet(path: str | os.PathLike[str], frame: Any, **kwargs: Any) -> Path:
    """A pandas DataFrame as Parquet (``index=False`` unless given)."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, **kwargs)
    return Path(path)
