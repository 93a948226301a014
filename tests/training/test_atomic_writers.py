"""Every output writer goes through ``utils.atomic`` (one implementation of atomic writes)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from immunoplex.utils import atomic


@pytest.fixture
def renames(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Record the (temporary, final) names of every rename done by ``utils.atomic``."""
    seen: list[tuple[str, str]] = []
    real = os.replace

    def replace(src, dst):  # type: ignore[no-untyped-def]
        seen.append((Path(src).name, Path(dst).name))
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    return seen


def _only_final(folder: Path) -> None:
    assert not [p.name for p in folder.rglob("*") if atomic.is_temporary(p)]


def _renamed(renames: list[tuple[str, str]], name: str) -> None:
    tmp = [src for src, dst in renames if dst == name]
    assert tmp, f"{name} was not written through utils.atomic"
    assert all(t.startswith(".") and ".tmp" in t for t in tmp)


def test_embedding_cache_and_checkpoints(tmp_path: Path, renames) -> None:
    from immunoplex.training.checkpoint import atomic_save
    from immunoplex.training.embed import EmbeddingCache

    cache = EmbeddingCache(tmp_path / "emb")
    cache.save("k", np.ones((3, 2), np.float32), {"slide": "s"})
    assert np.array_equal(cache.load("k"), np.ones((3, 2), np.float32))
    atomic_save({"x": torch.ones(2)}, tmp_path / "m.ckpt")
    for name in ("k.npy", "k.json", "m.ckpt"):
        _renamed(renames, name)
    _only_final(tmp_path)


def test_tables_reports_and_grids(tmp_path: Path, renames) -> None:
    from immunoplex.expression.icb import PreparedICB, write_prepared
    from immunoplex.tiles.grid import load_grid, save_grid
    from immunoplex.tiles.params import TileGrid, TilingParams
    from immunoplex.training.cv import summarise_folds

    grid = TileGrid(
        coords=np.array([[0, 0], [0, 8]], np.int64),
        tissue=np.array([1.0, 0.5], np.float32),
        shape=(8, 16),
        params=TilingParams(tile_size=8, mpp=1.0),
        mpp=1.0,
    )
    save_grid(grid, tmp_path / "grid.parquet")
    assert np.array_equal(load_grid(tmp_path / "grid.parquet").coords, grid.coords)
    expr = pd.DataFrame({"G1": [1.0, 2.0]}, index=pd.Index(["p1", "p2"], name="sample"))
    man = pd.DataFrame({"patient_id": ["p1", "p2"]})
    write_prepared(PreparedICB(expr, man, {"shared_genes": 1}), tmp_path / "icb")
    summarise_folds(
        [{"test_auroc": 0.5, "split": "f0"}, {"test_auroc": 0.7, "split": "f1"}], tmp_path / "cv"
    )
    for name in (
        "grid.parquet",
        "manifest.csv",
        "expression.csv",
        "genes_report.json",
        "cv_summary.csv",
        "cv_summary.md",
        "cv_summary.json",
    ):
        _renamed(renames, name)
    _only_final(tmp_path)
