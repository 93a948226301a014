"""AnnData ``.h5ad`` expression files read with h5py (anndata is not a dependency).

Supported: ``X`` as a dense dataset or a CSR/CSC sparse group (``data``/``indices``/``indptr``),
``obs``/``var`` as groups whose index dataset is named by the ``_index`` attribute (AnnData >= 0.7)
or legacy compound datasets with an ``index`` field.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from immunoplex.errors import ExpressionError


def _decode(values: np.ndarray) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _frame_index(f: object, key: str, column: str | None, path: Path) -> list[str]:
    """Names stored in ``obs`` or ``var`` (its index, or one of its columns)."""
    import h5py

    if key not in f:  # type: ignore[operator]
        raise ExpressionError(f"{path}: h5ad has no '{key}' (not an AnnData file?)")
    node = f[key]  # type: ignore[index]
    if isinstance(node, h5py.Group):
        name = column if column is not None else node.attrs.get("_index", "_index")
        if isinstance(name, bytes):
            name = name.decode()
        if name not in node:
            raise ExpressionError(f"{path}: h5ad '{key}' has no column {name!r}")
        ds = node[name]
        if isinstance(ds, h5py.Group):  # categorical column: codes + categories
            cats = _decode(ds["categories"][()])
            return [cats[int(c)] for c in ds["codes"][()]]
        return _decode(ds[()])
    field = column if column is not None else "index"
    names = node.dtype.names or ()
    if field not in names:
        raise ExpressionError(f"{path}: h5ad '{key}' has no field {field!r}")
    return _decode(node[field])


def _read_x(f: object, path: Path) -> np.ndarray:
    """The X matrix as a dense float64 array (n_obs, n_var)."""
    import h5py
    from scipy import sparse

    if "X" not in f:  # type: ignore[operator]
        raise ExpressionError(f"{path}: h5ad has no 'X' matrix")
    x = f["X"]  # type: ignore[index]
    if isinstance(x, h5py.Dataset):
        return np.asarray(x[()], dtype=np.float64)
    enc = x.attrs.get("encoding-type", x.attrs.get("h5sparse_format", "csr_matrix"))
    if isinstance(enc, bytes):
        enc = enc.decode()
    shape = tuple(int(s) for s in x.attrs.get("shape", x.attrs.get("h5sparse_shape", ())))
    if len(shape) != 2 or not all(k in x for k in ("data", "indices", "indptr")):
        raise ExpressionError(f"{path}: h5ad X is a group but not a CSR/CSC sparse matrix")
    parts = (x["data"][()], x["indices"][()], x["indptr"][()])
    kind = sparse.csc_matrix if str(enc).startswith("csc") else sparse.csr_matrix
    return np.asarray(kind(parts, shape=shape).toarray(), dtype=np.float64)


def read_h5ad_frame(path: Path, gene_column: str | None = None) -> pd.DataFrame:
    """Samples (obs) x genes (var) frame from an h5ad file; cells are checked by the caller."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            x = _read_x(f, path)
            obs = _frame_index(f, "obs", None, path)
            var = _frame_index(f, "var", gene_column, path)
    except OSError as err:
        raise ExpressionError(f"{path}: cannot open as HDF5/h5ad ({err})") from err
    if x.shape != (len(obs), len(var)):
        raise ExpressionError(
            f"{path}: X has shape {x.shape} but obs has {len(obs)} and var {len(var)} names"
        )
    return pd.DataFrame(x, index=pd.Index(obs, name="obs"), columns=pd.Index(var, dtype=object))
