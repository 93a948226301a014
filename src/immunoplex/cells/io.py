"""Cell outputs in the formats other tools open: AnnData ``.h5ad`` (scanpy, squidpy, scimap),
Parquet, label masks as OME-TIFF (napari, QuPath) and QuPath GeoJSON detections.

Every file is written atomically. The label masks are streamed strip by strip
(:class:`MaskWriter`), so a slide's mask never has to be held whole in memory.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from immunoplex.cells.quantify import CellTable
from immunoplex.utils.atomic import atomic_path, write_parquet
from immunoplex.utils.jsonsafe import to_json

# ----------------------------------------------------------------------------- AnnData / Parquet


def to_anndata(table: CellTable) -> Any:
    """AnnData: obs = cells, var = markers (with the slide's channel names), X = whole-cell
    means, ``layers["nuclear"]`` = nuclear means, ``obsm["spatial"]`` = (x, y) centroids in µm."""
    import anndata as ad

    obs = table.obs.copy()
    for col in obs.columns:
        if obs[col].dtype == object:
            obs[col] = obs[col].astype(str).astype("category")
    var = pd.DataFrame({"channel": [str(c) for c in table.channels]}, index=table.markers)
    var.index.name = "marker"
    adata = ad.AnnData(X=np.asarray(table.X, np.float32), obs=obs, var=var)
    adata.layers["nuclear"] = np.asarray(table.nuclear, np.float32)
    adata.obsm["spatial"] = obs[["x_um", "y_um"]].to_numpy(np.float64)
    flat = {k: v for k, v in to_json(table.uns).items() if isinstance(v, str | int | float)}
    adata.uns["cells"] = {**flat, "json": json.dumps(to_json(table.uns))}  # json: everything
    return adata


def from_anndata(adata: Any) -> CellTable:
    uns = json.loads(adata.uns["cells"]["json"]) if "cells" in adata.uns else {}
    return CellTable(
        obs=adata.obs.copy(),
        X=np.asarray(adata.X, np.float32),
        nuclear=np.asarray(adata.layers["nuclear"], np.float32),
        markers=[str(m) for m in adata.var_names],
        channels=[str(c) for c in adata.var["channel"]],
        mpp=float(uns.get("mpp", float("nan"))),
        uns=uns,
    )


def write_h5ad(path: str | Path, table: CellTable) -> Path:
    adata = to_anndata(table)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return Path(path)


def read_h5ad(path: str | Path) -> CellTable:
    import anndata as ad

    return from_anndata(ad.read_h5ad(path))


def to_frame(table: CellTable) -> pd.DataFrame:
    """Flat table: obs columns, then ``<marker>`` (whole cell) and ``<marker>_nuclear`` means."""
    df = table.obs.reset_index(drop=True).copy()
    for k, m in enumerate(table.markers):
        df[m] = table.X[:, k]
    for k, m in enumerate(table.markers):
        df[f"{m}_nuclear"] = table.nuclear[:, k]
    return df


def write_parquet_table(path: str | Path, table: CellTable) -> Path:
    return write_parquet(path, to_frame(table))


# ----------------------------------------------------------------------------- OME-TIFF masks


class MaskWriter:
    """A uint32 label image written as a tiled OME-TIFF from full-width strips, in order.

    ``put(y, strip)`` matches :data:`immunoplex.cells.segment.StripSink`; strips must have a
    height that is a multiple of ``tile`` (except the last). A writer thread turns strips into
    TIFF tiles; at most ``depth`` strips wait in memory. ``close()`` finishes the file (and moves
    it into place); ``abort()`` drops it.
    """

    def __init__(
        self, path: str | Path, shape: tuple[int, int], mpp: float, tile: int, name: str = "cells"
    ) -> None:
        self.path = Path(path)
        self.shape = (int(shape[0]), int(shape[1]))
        self.tile = tile_size(tile)
        self.mpp = float(mpp)
        self.name = name
        self._q: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=2)
        self._err: BaseException | None = None
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tiles(self) -> Iterator[np.ndarray]:
        t = self.tile
        buf = np.zeros((0, self.shape[1]), np.uint32)
        done = False
        while not done:
            strip = self._q.get()
            if strip is None:
                done = True
            else:
                buf = np.concatenate([buf, strip]) if len(buf) else strip
            while len(buf) >= t or (done and len(buf)):
                rows, buf = buf[:t], buf[t:]
                for x in range(0, self.shape[1], t):
                    yield rows[:, x : x + t]

    def _run(self) -> None:
        import tifffile

        try:
            tifffile.imwrite(
                self._tmp,
                data=self._tiles(),
                shape=self.shape,
                dtype=np.uint32,
                tile=(self.tile, self.tile),
                compression="zlib",
                photometric="minisblack",
                ome=True,
                metadata=ome_metadata(self.mpp, [self.name], "YX"),
            )
        except BaseException as exc:  # surfaced by close()
            self._err = exc
            while self._q.get() is not None:  # drain so put() never blocks forever
                pass

    def put(self, y: int, strip: np.ndarray) -> None:
        if self._err is None:
            self._q.put(np.ascontiguousarray(strip, np.uint32))

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
        if self._err is not None:
            self._ctx.__exit__(type(self._err), self._err, None)
            raise self._err
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        self._q.put(None)
        self._thread.join()
        err = RuntimeError("aborted")
        self._ctx.__exit__(type(err), err, None)


def tile_size(strip: int) -> int:
    """The largest TIFF tile (<= 256, a multiple of 16) that divides ``strip`` rows."""
    for t in (256, 128, 64, 32, 16):
        if strip % t == 0:
            return t
    raise ValueError(f"strip height {strip} is not a multiple of 16")


def ome_metadata(mpp: float, names: Sequence[str], axes: str) -> dict[str, Any]:
    return {
        "axes": axes,
        "Channel": {"Name": list(names)},
        "PhysicalSizeX": mpp,
        "PhysicalSizeY": mpp,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeYUnit": "µm",
    }


def write_mask(path: str | Path, labels: np.ndarray, mpp: float, name: str = "cells") -> Path:
    """A whole in-memory label image as OME-TIFF (small slides, tests)."""
    import tifffile

    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            np.asarray(labels, np.uint32),
            tile=(256, 256) if min(labels.shape) >= 256 else None,
            compression="zlib",
            photometric="minisblack",
            ome=True,
            metadata=ome_metadata(mpp, [name], "YX"),
        )
    return Path(path)


# ----------------------------------------------------------------------------- QuPath GeoJSON


def cell_outlines(
    labels: np.ndarray, ids: np.ndarray, y0: int, x0: int, scale: float
) -> dict[int, list[list[float]]]:
    """Outer contour of each labelled cell as a closed ring of [x, y] in the slide's level-0
    pixels (``scale`` = level-0 px per working px); pixel edges, not centres, bound the ring."""
    from scipy import ndimage as ndi
    from skimage.measure import find_contours

    out: dict[int, list[list[float]]] = {}
    if not len(ids):
        return out
    first = int(ids[0])
    local = np.where(labels > 0, labels.astype(np.int64) - first + 1, 0)
    for k, sl in enumerate(ndi.find_objects(local, max_label=len(ids))):
        if sl is None:
            continue
        crop = np.pad(local[sl] == k + 1, 1).astype(np.float32)
        rings = find_contours(crop, 0.5)
        if not rings:
            continue
        ring = max(rings, key=len)
        ys = (ring[:, 0] - 1 + sl[0].start + y0 + 0.5) * scale
        xs = (ring[:, 1] - 1 + sl[1].start + x0 + 0.5) * scale
        pts = np.stack([xs, ys], 1).round(2)
        if len(pts) < 4:
            continue
        if not np.array_equal(pts[0], pts[-1]):
            pts = np.vstack([pts, pts[:1]])
        out[first + k] = pts.tolist()
    return out


class OutlineSpool:
    """Cell outlines spooled to a temporary file beside the outputs as tiles are traced, so a
    slide's outlines are never all in memory; ``get`` reads one back by cell id."""

    def __init__(self, directory: str | Path) -> None:
        import tempfile

        self._fh = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed by close()
            "w+b", dir=directory, prefix=".outlines.", suffix=".tmp", delete=False
        )
        self.path = Path(self._fh.name)
        self._ids: list[np.ndarray] = []
        self._offsets: list[np.ndarray] = []
        self._index: tuple[np.ndarray, np.ndarray] | None = None

    def update(self, outlines: Mapping[int, list[list[float]]]) -> None:
        ids, offs = [], []
        for cid, ring in outlines.items():
            ids.append(int(cid))
            offs.append(self._fh.tell())
            self._fh.write(json.dumps(ring, separators=(",", ":")).encode() + b"\n")
        self._ids.append(np.asarray(ids, np.int64))
        self._offsets.append(np.asarray(offs, np.int64))
        self._index = None

    def get(self, cid: int) -> str | None:
        """The ring of cell ``cid`` as JSON text, or None."""
        if self._index is None:
            self._fh.flush()
            ids = np.concatenate(self._ids) if self._ids else np.empty(0, np.int64)
            offs = np.concatenate(self._offsets) if self._offsets else np.empty(0, np.int64)
            order = np.argsort(ids, kind="stable")
            self._index = ids[order], offs[order]
        ids, offs = self._index
        i = int(np.searchsorted(ids, cid))
        if i >= len(ids) or ids[i] != cid:
            return None
        self._fh.seek(int(offs[i]))
        return self._fh.readline().decode().rstrip("\n")

    def close(self) -> None:
        self._fh.close()
        self.path.unlink(missing_ok=True)


def write_geojson(
    path: str | Path,
    table: CellTable,
    outlines: Mapping[int, list[list[float]]] | OutlineSpool,
    colours: Mapping[str, Sequence[int]] | None = None,
    px_per_um: float = 1.0,
) -> Path:
    """QuPath detections (FeatureCollection of ``objectType: detection`` polygons), classified by
    ``obs["phenotype"]`` when present, in table order. Cells without an outline become a small
    box at the centroid. Coordinates are the slide's level-0 pixels (``px_per_um`` = 1 / slide
    µm/px). Features are written one at a time (``outlines`` may be an :class:`OutlineSpool`
    holding them on disk), so memory does not grow with the number of cells."""
    colours = dict(colours or {})
    obs = table.obs
    names = obs["phenotype"].astype(str).to_numpy() if "phenotype" in obs else None
    ids = obs["cell_id"].to_numpy().astype(np.int64)
    sid = obs["slide_id"].astype(str).to_numpy()
    x, y = obs["x_um"].to_numpy(), obs["y_um"].to_numpy()
    area, dist = obs["area_um2"].to_numpy(), obs["tumour_distance_um"].to_numpy()
    if isinstance(outlines, OutlineSpool):
        ring_of = outlines.get
    else:

        def ring_of(cid: int) -> str | None:
            r = outlines.get(cid)
            return None if r is None else json.dumps(r, separators=(",", ":"))

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write('{"type":"FeatureCollection","features":[')
        for k in range(len(ids)):
            cid = int(ids[k])
            ring = ring_of(cid)
            if ring is None:
                cx, cy, r = x[k] * px_per_um, y[k] * px_per_um, 1.0
                box = [[cx - r, cy - r], [cx + r, cy - r], [cx + r, cy + r], [cx - r, cy + r]]
                ring = json.dumps([*box, box[0]], separators=(",", ":"))
            props: dict[str, Any] = {"objectType": "detection", "name": f"cell {cid}"}
            if names is not None:
                rgb = [int(v) for v in colours.get(names[k], (160, 160, 160))]
                props["classification"] = {"name": names[k], "color": rgb}
            props["measurements"] = {
                "area_um2": float(area[k]),
                "tumour_distance_um": float(dist[k]) if np.isfinite(dist[k]) else None,
            }
            head = json.dumps({"type": "Feature", "id": f"{sid[k]}:{cid}"})[:-1]
            p = json.dumps(props, separators=(",", ":"))
            fh.write(("," if k else "") + f'{head},"geometry":{{"type":"Polygon",'
                     f'"coordinates":[{ring}]}},"properties":{p}}}')  # fmt: skip
        fh.write("]}")
    return Path(path)
