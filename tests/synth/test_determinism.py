"""Same seed -> same cohort (any worker count); different seed -> different; re-runs resume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import tifffile

from immunoplex.synth.cohort import generate_cohort

SMALL = {"n_patients": 6}


def _tables(out):
    return {n: (out / n).read_bytes() for n in ("manifest.csv", "expression.csv", "truth.csv")}


def _cell_truth(out):
    """Every slide's cell-truth table (``cells/<slide_id>.parquet``), by file name."""
    return {p.name: pd.read_parquet(p) for p in sorted((out / "cells").glob("*.parquet"))}


def _assert_same_cell_truth(a, b):
    ta, tb = _cell_truth(a), _cell_truth(b)
    assert ta and ta.keys() == tb.keys()
    for name, frame in ta.items():
        pd.testing.assert_frame_equal(frame, tb[name])


def _first_slide(out):
    return tifffile.imread(sorted((out / "slides").glob("*.ome.tif"))[0])


def test_same_seed_same_cohort_any_workers(tmp_path, synth_tiny):
    ref_dir, ref = synth_tiny  # generated in-process (workers=1)
    a = tmp_path / "a"
    generate_cohort(a, size=ref.size, seed=ref.seed, workers=2, progress=False)
    assert _tables(a) == _tables(ref_dir)
    np.testing.assert_array_equal(_first_slide(a), _first_slide(ref_dir))
    for p in sorted((ref_dir / "signal").glob("*.npy")):
        np.testing.assert_array_equal(np.load(p), np.load(a / "signal" / p.name))
    _assert_same_cell_truth(a, ref_dir)


def test_different_seed_differs(tmp_path, synth_tiny):
    ref_dir, ref = synth_tiny
    b = tmp_path / "b"
    generate_cohort(b, size="tiny", seed=ref.seed + 1, workers=1, progress=False, **SMALL)
    assert (b / "manifest.csv").read_bytes() != (ref_dir / "manifest.csv").read_bytes()
    assert (b / "expression.csv").read_bytes() != (ref_dir / "expression.csv").read_bytes()
    assert not np.array_equal(_first_slide(b), _first_slide(ref_dir))
    first = sorted(_cell_truth(ref_dir))[0]
    assert not _cell_truth(b)[first].equals(_cell_truth(ref_dir)[first])


def test_rerun_reuses_complete_slides_and_repairs_broken_ones(tmp_path):
    out = tmp_path / "c"
    first = generate_cohort(out, size="tiny", seed=3, workers=1, progress=False, **SMALL)
    assert first.n_rendered == first.n_slides and first.n_reused == 0
    tables = _tables(out)
    slides = sorted((out / "slides").glob("*.ome.tif"))
    before = {p.name: p.stat().st_mtime_ns for p in slides}

    again = generate_cohort(out, size="tiny", seed=3, workers=1, progress=False, **SMALL)
    assert again.n_reused == again.n_slides and again.n_rendered == 0
    assert {p.name: p.stat().st_mtime_ns for p in slides} == before
    assert _tables(out) == tables
    truth = _cell_truth(out)

    # a slide whose cell truth is missing is rendered again, to the same truth
    missing = sorted((out / "cells").glob("*.parquet"))[2]
    missing.unlink()
    redone = generate_cohort(out, size="tiny", seed=3, workers=1, progress=False, **SMALL)
    assert redone.n_rendered == 1
    pd.testing.assert_frame_equal(pd.read_parquet(missing), truth[missing.name])

    # a truncated slide (e.g. copied in half) and a leftover temp file from a killed run
    blob = slides[0].read_bytes()
    slides[0].write_bytes(blob[: len(blob) // 2])
    # (the names utils.atomic gives, and the older ``.<name>.<pid>.tmp`` ones)
    stem = slides[1].name.removesuffix(".ome.tif")
    leftovers = [
        out / "slides" / f".{stem}.k2j_x9q1.tmp.ome.tif",
        out / "signal" / f".{stem}.a1b2c3d4.tmp.npy",
        out / "cells" / f".{stem}.q7w8e9r0.tmp.parquet",
        out / "slides" / f".{slides[1].name}.999.tmp",
    ]
    for p in leftovers:
        p.write_bytes(b"partial")
    unrelated = out / "slides" / ".notes.tmp"
    unrelated.write_bytes(b"keep")
    fixed = generate_cohort(out, size="tiny", seed=3, workers=1, progress=False, **SMALL)
    assert fixed.n_rendered == 1
    assert not any(p.exists() for p in leftovers)
    assert unrelated.exists()  # not a name this generator writes
    unrelated.unlink()
    assert _tables(out) == tables

    # other settings -> the slides are stale and are all rendered again
    other = generate_cohort(out, size="tiny", seed=3, workers=1, progress=False,
                            **{**SMALL, "render.read_noise": 6.0})  # fmt: skip
    assert other.n_rendered == other.n_slides


def test_spawned_workers_match_in_process(tmp_path, monkeypatch):
    """The pool spawns when the caller has threads running; output must not change."""
    import multiprocessing as mp

    from immunoplex.synth import cohort

    args = {"size": "tiny", "seed": 5, "progress": False, "n_patients": 4, "slide_px": 128}
    generate_cohort(tmp_path / "inline", workers=1, **args)
    monkeypatch.setattr(cohort, "_pool_context", lambda: mp.get_context("spawn"))
    generate_cohort(tmp_path / "spawned", workers=2, **args)
    assert _tables(tmp_path / "inline") == _tables(tmp_path / "spawned")
    _assert_same_cell_truth(tmp_path / "inline", tmp_path / "spawned")
    np.testing.assert_array_equal(
        _first_slide(tmp_path / "inline"), _first_slide(tmp_path / "spawned")
    )
