"""Streaming inference: read -> encode -> discard gives the cached path's results, in batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import immunoplex.inference.patient as predict_module
import immunoplex.inference.stream as ps
from immunoplex.data.slides import fit_slide_norm
from immunoplex.errors import SlideReadError
from immunoplex.inference.predictor import Predictor
from immunoplex.inference.run import predict
from immunoplex.io.panel import Panel
from immunoplex.tiles.grid import read_tiles
from immunoplex.tiles.intensity import IntensityNorm
from immunoplex.utils.names import safe_name
from tests.predict.conftest import opts, sub_manifest


def _patients(cohort: Path, n_single: int) -> list[str]:
    """Every patient with two slides plus ``n_single`` with one."""
    m = pd.read_csv(cohort / "manifest.csv", dtype=str, keep_default_na=False)
    counts = m.groupby("patient_id").size()
    two = counts[counts > 1].index.tolist()
    assert two, "the tiny cohort should have a patient with two slides"
    return two + counts[counts == 1].index.tolist()[:n_single]


def _run(ckpt: Path, manifest: Path, out: Path, **kw: object) -> pd.DataFrame:
    return predict(opts(ckpt, manifest, out, **kw)).set_index("patient_id")


def test_streamed_equals_cached_path(trained_ckpt: Path, tiny_cohort: Path, tmp_path: Path) -> None:
    """explain=true tiles into the cache and embeds from it; default streams: same numbers."""
    ids = _patients(tiny_cohort, 3)
    manifest = sub_manifest(tiny_cohort, tmp_path / "m.csv", ids)
    expr = str(tiny_cohort / "expression.csv")
    streamed = _run(trained_ckpt, manifest, tmp_path / "s", expression=expr, chunk_size=3)
    cached = _run(trained_ckpt, manifest, tmp_path / "c", expression=expr, explain=True)
    np.testing.assert_allclose(streamed.loc[ids, "logit"], cached.loc[ids, "logit"], atol=1e-5)
    assert (streamed.loc[ids, "n_tiles"] == cached.loc[ids, "n_tiles"]).all()
    sid = streamed.loc[ids[0], "slide_ids"][0]
    a = pd.read_csv(tmp_path / "s" / "slides" / safe_name(sid) / "tiles.csv")
    b = pd.read_csv(tmp_path / "c" / "slides" / safe_name(sid) / "tiles.csv")
    assert len(a) > 3  # several batches of 3
    np.testing.assert_array_equal(a[["y", "x"]], b[["y", "x"]])
    np.testing.assert_allclose(a["attention"], b["attention"], atol=1e-6)
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-4)
    assert not (tmp_path / "s" / "cache").exists() or not any((tmp_path / "s" / "cache").iterdir())
    assert any((tmp_path / "c" / "cache").iterdir())


def test_streaming_reads_bounded_batches(
    trained_ckpt: Path, tiny_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No read asks for more than chunk_size tiles; every tile is read exactly once: the
    statistics sample (encoded first, not re-read) or one encoding batch."""
    import immunoplex.inference.prefetch as pf

    sizes: list[int] = []
    seen: list[np.ndarray] = []
    sampled: list[int] = []
    real = ps.LazyTiles.read

    def spy(self: ps.LazyTiles, sel: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        sizes.append(len(sel))
        if out is not None:  # encoding reads (statistics sampling passes no buffer)
            seen.append(np.asarray(sel).copy())
        else:
            sampled.append(len(sel))
        return real(self, sel, out)

    monkeypatch.setattr(ps.LazyTiles, "read", spy)

    # statistics from one sampled tile, so encoding cannot reuse a whole-slide sample
    def one_tile(tiles, present, coords, lo, hi):  # type: ignore[no-untyped-def]
        return IntensityNorm.fit(
            tiles, present=present, low_pct=lo, high_pct=hi, max_pixels=tiles.shape[-1] ** 2
        )

    monkeypatch.setattr(predict_module, "fit_slide_norm", one_tile)
    monkeypatch.setattr(pf, "fit_slide_norm", one_tile)
    ids = _patients(tiny_cohort, 0)[:1]
    manifest = sub_manifest(tiny_cohort, tmp_path / "m.csv", ids)
    df = _run(trained_ckpt, manifest, tmp_path / "o", chunk_size=3)
    n = int(df["n_tiles"].iloc[0])
    enc = np.concatenate(seen)
    assert max(len(s) for s in seen) == 3
    assert sampled == [1, 1]  # two slides, one statistics tile each
    assert len(enc) + sum(sampled) == n  # each tile once: sampled, or read in a batch
    assert sorted(set(sizes) - {3}) in ([1], [1, 2], [2])  # 1: statistics sample; 2: a last batch


def test_lazy_tiles_match_a_whole_slide_read(trained_ckpt: Path, tiny_cohort: Path) -> None:
    """LazyTiles[idx] is the cache's (N, C, T, T) array in panel order, absent markers zero."""
    pred = Predictor.load(trained_ckpt, "cpu")
    slide_path = tiny_cohort / "slides" / "S0001.ome.tif"
    panel = Panel.from_dict({**pred.panel.to_dict(), "markers": [*pred.panel.markers, "FOXP3"]})
    o = ps.open_for_streaming(slide_path, "s", panel, pred.params, None, required=[])
    try:
        lazy = ps.LazyTiles(o, len(panel.markers))
        full = np.zeros(lazy.shape, lazy.dtype)
        read_tiles(o.slide, o.grid, o.src, out=full, out_channels=o.dst)
        assert len(lazy) >= 2
        idx = np.array([len(lazy) - 1, 0])
        np.testing.assert_array_equal(lazy[idx], full[idx])
        np.testing.assert_array_equal(lazy[1:], full[1:])
        assert lazy[idx][:, :-1].any() and not lazy[idx][:, -1].any()  # FOXP3 is not on the slide
        norm = fit_slide_norm(lazy, o.present, o.grid.coords, pred.low_pct, pred.high_pct)
        ref = fit_slide_norm(full, o.present, o.grid.coords, pred.low_pct, pred.high_pct)
        assert norm.low == ref.low and norm.high == ref.high
    finally:
        o.close()


def test_prefetch_and_batch_size_do_not_change_embeddings(
    trained_ckpt: Path, tiny_cohort: Path
) -> None:
    pred = Predictor.load(trained_ckpt, "cpu")
    o = ps.open_for_streaming(
        tiny_cohort / "slides" / "S0001.ome.tif", "s", pred.panel, pred.params, None, None
    )
    try:
        c = len(pred.panel.markers)
        norm = fit_slide_norm(
            ps.LazyTiles(o, c), o.present, o.grid.coords, pred.low_pct, pred.high_pct
        )
        cm = torch.from_numpy(o.present)

        def enc(x: torch.Tensor) -> torch.Tensor:
            return pred.model.embed_tiles(x, cm.expand(x.shape[0], -1))

        cpu = torch.device("cpu")
        lazy = ps.LazyTiles(o, c)  # nothing held: batches are read from the slide
        e1 = ps.embed_streamed(enc, lazy, norm, cpu, batch_size=1)
        e2 = ps.embed_streamed(enc, lazy, norm, cpu, batch_size=64, prefetch=False)
        held = ps.LazyTiles(o, c)
        held[:]  # a read of every tile is kept and encoding reuses it
        assert held.all_tiles is not None
        e3 = ps.embed_streamed(enc, held, norm, cpu, batch_size=1)
        assert e1.shape == (len(o.grid), pred.model.tile_embedding_dim)
        torch.testing.assert_close(e1, e2, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(e1, e3, atol=1e-5, rtol=1e-5)
    finally:
        o.close()


def test_a_slide_failing_mid_read_is_skipped_and_reported(
    trained_ckpt: Path, tiny_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """on_bad_slide=skip: a read error while streaming drops that slide; the other one is used."""
    ids = _patients(tiny_cohort, 0)[:1]
    manifest = sub_manifest(tiny_cohort, tmp_path / "m.csv", ids)
    full = _run(trained_ckpt, manifest, tmp_path / "full")
    bad_sid = full["slide_ids"].iloc[0][0]
    real = ps.embed_streamed

    def failing(encode, lazy, *a, **kw):  # type: ignore[no-untyped-def]
        if lazy.s.slide_id == bad_sid:
            raise SlideReadError(f"{lazy.s.path}: truncated segment (test)")
        return real(encode, lazy, *a, **kw)

    monkeypatch.setattr(predict_module, "embed_streamed", failing)
    with pytest.raises(SlideReadError, match="truncated segment"):
        _run(trained_ckpt, manifest, tmp_path / "err")
    df = _run(trained_ckpt, manifest, tmp_path / "skip", on_bad_slide="skip")
    row = df.iloc[0]
    assert (
        bad_sid not in row["slide_ids"]
        and len(row["slide_ids"]) == len(full["slide_ids"].iloc[0]) - 1
    )
    assert "truncated segment" in str(row["skipped_slides"])
    assert 0 < row["n_tiles"] < full["n_tiles"].iloc[0]


def test_prefetched_sample_first_equals_serial(
    trained_ckpt: Path, tiny_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slides prepared ahead in the background (inference.prefetch) with their statistics sample
    encoded first give the numbers of the serial path; every tile is read once."""
    import immunoplex.inference.prefetch as pf
    import immunoplex.inference.run as run_module
    from immunoplex.tiles.intensity import IntensityNorm as Norm

    def small_sample(tiles, present, coords, low_pct, high_pct):  # type: ignore[no-untyped-def]
        # a sample of 6 tiles, not the whole (tiny) slide: the sample-first path runs
        return Norm.fit(
            tiles,
            present=present,
            low_pct=low_pct,
            high_pct=high_pct,
            coords=coords,
            max_pixels=6 * tiles.shape[2] * tiles.shape[3],
        )

    monkeypatch.setattr(pf, "fit_slide_norm", small_sample)
    monkeypatch.setattr(predict_module, "fit_slide_norm", small_sample)
    reads: list[tuple[int, int]] = []
    real_read = ps.LazyTiles.read

    def counted(self, sel, out=None):  # type: ignore[no-untyped-def]
        # by slide id: id() of a closed slide object can be reused by the next one
        reads.extend((self.s.slide_id, int(i)) for i in sel)
        return real_read(self, sel, out)

    monkeypatch.setattr(ps.LazyTiles, "read", counted)
    ids = _patients(tiny_cohort, 3)
    manifest = sub_manifest(tiny_cohort, tmp_path / "m.csv", ids)
    ahead = _run(trained_ckpt, manifest, tmp_path / "a", chunk_size=4)
    assert len(reads) == len(set(reads))  # no tile read twice
    assert len(reads) == int(ahead["n_tiles"].sum())

    class Serial:
        def __init__(self, prepare, ahead=1):  # type: ignore[no-untyped-def]
            self.prepare = prepare

        def schedule(self, slides):  # type: ignore[no-untyped-def]
            pass

        def take(self, s):  # type: ignore[no-untyped-def]
            return self.prepare(s)

        def close(self) -> None:
            pass

    monkeypatch.setattr(run_module, "SlidePrefetcher", Serial)
    serial = _run(trained_ckpt, manifest, tmp_path / "b", chunk_size=4)
    np.testing.assert_allclose(ahead.loc[ids, "logit"], serial.loc[ids, "logit"], atol=1e-6)


def test_slide_prefetcher_order_bound_errors() -> None:
    import threading
    import time as _time

    from immunoplex.inference.prefetch import SlidePrefetcher

    class S:
        def __init__(self, i: int) -> None:
            self.slide_id, self.path = f"s{i}", f"/x/{i}"

    class Opened:
        def __init__(self, s: S) -> None:
            self.s, self.closed = s, False

        def close(self) -> None:
            self.closed = True

    started: list[str] = []
    lock = threading.Lock()

    def prepare(s: S) -> Opened:
        with lock:
            started.append(s.slide_id)
        if s.slide_id == "s2":
            raise SlideReadError("s2 is broken")
        return Opened(s)

    slides = [S(i) for i in range(5)]
    pf = SlidePrefetcher(prepare, ahead=1)
    pf.schedule(slides)
    _time.sleep(0.2)
    assert started == ["s0", "s1"]  # the next one and one ahead, no more
    assert pf.take(slides[0]).s is slides[0]
    assert pf.take(slides[1]).s is slides[1]
    with pytest.raises(SlideReadError):
        pf.take(slides[2])  # raised in the caller's thread
    _time.sleep(0.2)
    assert started == ["s0", "s1", "s2", "s3", "s4"]
    pf.close()  # s3, s4 prepared, never taken: closed
    assert started == ["s0", "s1", "s2", "s3", "s4"]


def test_prefetch_option_gives_the_same_predictions(
    trained_ckpt: Path, tiny_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prefetch=false (no background threads: slides prepared in turn, batches read by the
    encoding thread) and prefetch=true give identical predictions; auto follows the core count."""
    from omegaconf import OmegaConf

    import immunoplex.inference.run as run_module
    from immunoplex.errors import ConfigError
    from immunoplex.inference.options import AUTO_PREFETCH_MIN_CORES, PredictOptions

    prefetchers: list[object] = []
    real_prefetcher = run_module.SlidePrefetcher

    def counted_prefetcher(*a, **kw):  # type: ignore[no-untyped-def]
        prefetchers.append(a)
        return real_prefetcher(*a, **kw)

    overlaps: list[bool] = []
    real_embed = ps.embed_streamed

    def embed(*a, prefetch: bool = True, **kw):  # type: ignore[no-untyped-def]
        overlaps.append(prefetch)
        return real_embed(*a, prefetch=prefetch, **kw)

    monkeypatch.setattr(run_module, "SlidePrefetcher", counted_prefetcher)
    monkeypatch.setattr(predict_module, "embed_streamed", embed)
    ids = _patients(tiny_cohort, 3)
    manifest = sub_manifest(tiny_cohort, tmp_path / "m.csv", ids)
    on = _run(trained_ckpt, manifest, tmp_path / "on", chunk_size=4, prefetch=True)
    assert len(prefetchers) == 1 and overlaps and all(overlaps)
    prefetchers.clear()
    overlaps.clear()
    off = _run(trained_ckpt, manifest, tmp_path / "off", chunk_size=4, prefetch=False)
    assert not prefetchers and overlaps and not any(overlaps)
    np.testing.assert_array_equal(on.loc[ids, "logit"], off.loc[ids, "logit"])
    np.testing.assert_array_equal(on.loc[ids, "n_tiles"], off.loc[ids, "n_tiles"])
    for sid in on.loc[ids[0], "slide_ids"]:
        a, b = (
            pd.read_csv(tmp_path / d / "slides" / safe_name(sid) / "tiles.csv")
            for d in ["on", "off"]
        )
        pd.testing.assert_frame_equal(a, b)
    base = {"ckpt": "m.ckpt", "input": "s.tif", "out_dir": "o"}
    auto = PredictOptions.from_config(OmegaConf.create(base))
    assert auto.prefetch == "auto"
    assert auto.overlap(AUTO_PREFETCH_MIN_CORES) and not auto.overlap(AUTO_PREFETCH_MIN_CORES - 1)
    assert not PredictOptions.from_config({**base, "prefetch": False}).overlap(64)
    with pytest.raises(ConfigError, match="prefetch"):
        PredictOptions.from_config({**base, "prefetch": "sometimes"})
