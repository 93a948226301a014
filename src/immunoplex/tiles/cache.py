"""On-disk tile cache: tiles per (slide content, panel, tiling parameters, µm/px override).

An entry is a directory ``root/<key>/`` with ``tiles.npy`` (N, C, T, T) in panel channel order
(zeros for markers the slide lacks), ``coords.npy``, ``tissue.npy``, ``mask.npy`` and
``meta.json``. It is built in a temporary directory and renamed into place, so a half-written
entry is never seen; ``meta.json`` is written last and checked on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from immunoplex.errors import SlideReadError
from immunoplex.io import open_slide
from immunoplex.io.base import Slide
from immunoplex.io.names import ChannelNames, names_key
from immunoplex.io.panel import Panel, match_panel
from immunoplex.tiles.grid import iter_tile_chunks, make_tile_grid, read_tiles
from immunoplex.tiles.params import TileGrid, TilingParams

CACHE_VERSION = 1
_FULL_HASH_BYTES = 16 << 20
_SAMPLE_BYTES = 1 << 16
_N_SAMPLES = 16


def file_fingerprint(path: Path) -> str:
    """Size + sha1 of the content (whole file when small, else 16 evenly spaced 64 KiB ranges)."""
    size = path.stat().st_size
    h = hashlib.sha1(str(size).encode())
    with open(path, "rb") as fh:
        if size <= _FULL_HASH_BYTES:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        else:
            for i in range(_N_SAMPLES):
                fh.seek(int((size - _SAMPLE_BYTES) * i / (_N_SAMPLES - 1)))
                h.update(fh.read(_SAMPLE_BYTES))
    return f"{size}-{h.hexdigest()}"


def slide_fingerprint(path: str | os.PathLike[str]) -> str:
    """Content fingerprint of a slide file or a folder slide (its TIFFs by name)."""
    from immunoplex.io.mcd import split_selector
    from immunoplex.io.ngff import is_ngff, store_fingerprint

    p, acquisition = split_selector(path)
    if acquisition is not None and p.is_file():  # one acquisition of an IMC .mcd file
        return f"{file_fingerprint(p)}#{acquisition}"
    if is_ngff(p):
        return store_fingerprint(p)
    if p.is_dir():
        from immunoplex.io.folder import marker_files

        h = hashlib.sha1()
        for f in marker_files(p):
            h.update(f.name.encode() + b"\0" + file_fingerprint(f).encode() + b"\0")
        return f"dir-{h.hexdigest()}"
    if not p.exists():
        raise SlideReadError(f"{p}: no such file or directory")
    return file_fingerprint(p)


def write_tiles(
    path: Path,
    slide: Slide,
    grid: TileGrid,
    shape: tuple[int, int, int, int],
    dtype: np.dtype,
    src: Sequence[int],
    dst: Sequence[int],
) -> None:
    """Write the ``.npy`` file of ``grid``'s tiles (``shape``: N, C, T, T) chunk by chunk.

    Slide channels ``src`` go to channels ``dst`` (others stay 0). Each spatial chunk's runs of
    consecutive tiles are written at their offsets with ``os.pwrite``: memory stays one chunk
    (a memory-mapped output would keep every written page in the process's RSS).
    """
    n, c, t, _ = shape
    tile_bytes = c * t * t * dtype.itemsize
    with open(path, "wb") as fh:
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
        np.lib.format.write_array_header_1_0(fh, {**header, "shape": shape})
        start = fh.tell()
        fh.truncate(start + n * tile_bytes)  # a sparse file: tiles never written stay 0
        fd = fh.fileno()
        for idx, tiles in iter_tile_chunks(slide, grid, src, dtype):
            full = np.zeros((len(idx), c, t, t), dtype)
            full[:, list(dst)] = tiles
            cuts = np.flatnonzero(np.diff(idx) != 1) + 1
            for a, b in zip([0, *cuts], [*cuts, len(idx)], strict=True):
                data = full[a:b].tobytes()
                if os.pwrite(fd, data, start + int(idx[a]) * tile_bytes) != len(data):
                    raise OSError(f"{path}: short write")
            del tiles, full  # freed before the next chunk is read


@dataclass
class TileSet:
    """Tiles of one slide in panel order, with where they came from."""

    tiles: np.ndarray  # (N, C, T, T), memory-mapped unless the cache is compressed
    coords: np.ndarray  # (N, 2) int64 (y, x) at mpp
    tissue: np.ndarray  # (N,) float32
    channels: list[str]  # panel marker names
    present: list[bool]  # slide has the marker
    key: str
    mpp: float
    slide_channels: list[str]
    source: str
    path: Path  # entry directory
    mask: np.ndarray | None = None  # tissue mask at mask_mpp
    mask_mpp: float | None = None

    def __len__(self) -> int:
        return int(self.tiles.shape[0])


class TileCache:
    """Build-once, load-many tile store under ``root`` (``compress=True``: zstd, loaded to RAM)."""

    def __init__(self, root: str | os.PathLike[str], compress: bool = False) -> None:
        self.root = Path(root)
        self.compress = compress

    def key(
        self,
        path: str | os.PathLike[str],
        panel: Panel,
        params: TilingParams,
        mpp: float | None = None,
        required: Sequence[str] | None = None,
        channel_names: ChannelNames | None = None,
    ) -> str:
        """Hash of slide content, panel, tiling parameters, µm/px override and requirements
        (and, when something outside the file names its channels, those names)."""
        spec = {
            "version": CACHE_VERSION,
            "slide": slide_fingerprint(path),
            "panel": panel.to_dict(),
            "params": params.to_dict(),
            "mpp": None if mpp is None else float(mpp),
            "required": None if required is None else sorted(map(str, required)),
            "compress": self.compress,
        }
        names = names_key(path, channel_names)
        if names is not None:
            spec["names"] = names
        blob = json.dumps(spec, sort_keys=True, default=str).encode()
        return hashlib.sha1(blob).hexdigest()[:24]

    def load_or_build(
        self,
        path: str | os.PathLike[str],
        panel: Panel,
        params: TilingParams,
        mpp: float | None = None,
        required: Sequence[str] | None = None,
        channel_names: ChannelNames | None = None,
    ) -> TileSet:
        """The cached tiles of ``path``, building (and storing) them on the first call.

        ``channel_names``: names for the slide's channels from outside the file (manifest
        ``channels`` column, names file; see :mod:`immunoplex.io.names`)."""
        key = self.key(path, panel, params, mpp, required, channel_names)
        ts = self.load(key)
        if ts is not None:
            return ts
        self._build(Path(path), key, panel, params, mpp, required, channel_names)
        ts = self.load(key)
        if ts is None:  # pragma: no cover - only on a disk failure
            raise SlideReadError(f"{path}: tile cache entry {key} could not be read back")
        return ts

    # ------------------------------------------------------------------ internals
    def _entry(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str) -> TileSet | None:
        """The entry for ``key``, or None if absent or incomplete."""
        d = self._entry(key)
        meta_path = d / "meta.json"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("version") != CACHE_VERSION or meta.get("key") != key:
                return None
            shape = tuple(meta["shape"])
            if meta.get("compressed"):
                import imagecodecs

                raw = imagecodecs.zstd_decode((d / "tiles.zst").read_bytes())
                tiles = np.frombuffer(raw, dtype=np.dtype(meta["dtype"])).reshape(shape)
            elif shape[0] == 0:
                tiles = np.zeros(shape, np.dtype(meta["dtype"]))
            else:
                tiles = np.load(d / "tiles.npy", mmap_mode="r")
            coords = np.load(d / "coords.npy")
            tissue = np.load(d / "tissue.npy")
            mask = np.load(d / "mask.npy") if (d / "mask.npy").is_file() else None
        except (OSError, ValueError, KeyError):
            return None
        if tiles.shape != shape or coords.shape != (shape[0], 2):
            return None
        return TileSet(
            tiles,
            coords,
            tissue,
            list(meta["channels"]),
            list(meta["present"]),
            key,
            float(meta["mpp"]),
            list(meta["slide_channels"]),
            meta["source"],
            d,
            mask,
            meta.get("mask_mpp"),
        )

    def _build(
        self,
        path: Path,
        key: str,
        panel: Panel,
        params: TilingParams,
        mpp: float | None,
        required: Sequence[str] | None,
        channel_names: ChannelNames | None = None,
    ) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            with open_slide(path, mpp=mpp, channel_names=channel_names) as slide:
                match = match_panel(panel, slide.channels, source=path, required=required)
                grid = make_tile_grid(slide, params, panel.aliases)
                dtype = np.dtype(np.float32) if slide.dtype.kind == "f" else slide.dtype
                T = params.tile_size
                shape = (len(grid), len(panel), T, T)
                src = [i for i in match.indices if i is not None]
                dst = [j for j, i in enumerate(match.indices) if i is not None]
                if self.compress:
                    import imagecodecs

                    tiles = np.zeros(shape, dtype)
                    if src and shape[0]:
                        read_tiles(slide, grid, src, out=tiles, out_channels=dst)
                    (tmp / "tiles.zst").write_bytes(
                        imagecodecs.zstd_encode(tiles.tobytes(), level=3)
                    )
                    del tiles
                elif shape[0]:
                    write_tiles(tmp / "tiles.npy", slide, grid, shape, dtype, src, dst)
                np.save(tmp / "coords.npy", grid.coords)
                np.save(tmp / "tissue.npy", grid.tissue)
                if grid.mask is not None:
                    np.save(tmp / "mask.npy", grid.mask)
                meta: dict[str, Any] = {
                    "version": CACHE_VERSION,
                    "key": key,
                    "source": str(path),
                    "format": slide.format,
                    "slide_channels": list(slide.channels),
                    "channel_source": slide.channel_source,
                    "channels": list(panel.markers),
                    "present": match.present,
                    "missing": match.missing,
                    "shape": list(shape),
                    "dtype": dtype.str,
                    "mpp": params.mpp,
                    "slide_mpp": slide.mpp,
                    "mask_mpp": grid.mask_mpp,
                    "params": params.to_dict(),
                    "compressed": self.compress,
                }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            final = self._entry(key)
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / "meta.json").is_file():  # a stale partial entry: replace it
                    shutil.rmtree(final, ignore_errors=True)
                    os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
